"""The Python API of DESIGN.md: lora_spec.teach(), fit(), evaluate() stay callable after their modules load."""

from __future__ import annotations

import json

import lora_spec


def test_stage_functions_are_callable_whatever_was_imported(tmp_path):
    import lora_spec.fit as fit_module  # binds lora_spec.fit to the module, which must stay callable
    import lora_spec.teach  # noqa: F401

    assert lora_spec.fit is fit_module and callable(lora_spec.fit) and fit_module.FitConfig
    run = lora_spec.teach(dataset="arith", teacher="gold", first=12, out=str(tmp_path / "teach"), progress=False)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["correct"] == 12 if "counts" in manifest else manifest
    problems, samples = lora_spec.teach.load_run(run)
    assert len(samples) == 12 and set(problems) == {s.problem_id for s in samples}

    res = lora_spec.fit(student="tiny-llama", data=str(run), max_steps=2, batch_size=4, before_after=0,
                        eval_every=0, tracker="none", progress=False, out=str(tmp_path / "adapter"))
    m = json.loads((tmp_path / "adapter" / "lorasp.json").read_text())
    assert m["method"] == "lora" and len(m["train"]["loss_history"]) == 2
    assert res is not None

    out = lora_spec.evaluate(lora_spec.EvalConfig(model="tiny-llama", adapter=str(tmp_path / "adapter"),
                                                  suite=["arith"], limit=2, max_new_tokens=8, progress=False,
                                                  out=str(tmp_path / "eval")))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert out and results
