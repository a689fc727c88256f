"""Batched generation, scoring, eval suites and `lorasp eval` (tiny fixtures for code paths, SmolLM2 for realism)."""

from __future__ import annotations

import json

import pytest

from lora_spec import registry
from lora_spec.evaluate import evaluate_tasks, generate, task_problems
from lora_spec.records import EvalTask

PROMPTS = ["Question: a b c 12 + 3\n", "x", "Question: how many apples does John have if 3 + 4 = 7 and more\n",
           "the answer is", "Tom has 5 cars"]


@pytest.fixture(scope="module")
def tiny():
    from lora_spec.student import load_student

    return load_student("tiny-llama")


def test_batched_equals_one_at_a_time_and_keeps_order(tiny):
    batched = generate(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=16, batch_size=3, progress=False)
    single = [generate(tiny.model, tiny.tokenizer, [p], max_new_tokens=16, batch_size=1, progress=False)[0]
              for p in PROMPTS]
    assert batched == single
    assert tiny.tokenizer.padding_side == "left"


def test_stop_sequences_cut_and_count(tiny):
    st: dict = {}
    full = generate(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=16, progress=False, stats=st)
    assert st["generated_tokens"] > 0 and st["batches"] == 1
    # stop at a string that the unconstrained output contains: it is cut there, the rest unchanged
    i = next(k for k, o in enumerate(full) if len(o) > 6)
    stop = full[i][3:6]
    cut = generate(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=16, progress=False, stop=[stop])
    assert cut[i] == full[i][:full[i].find(stop)].strip()
    for f, c in zip(full, cut):
        assert f.startswith(c)


def test_seq2seq_peft_and_nf4_students(tiny, tiny_t5_path):
    from peft import LoraConfig, get_peft_model

    from lora_spec.student import load_student

    t5 = load_student("tiny-t5")
    out = generate(t5.model, t5.tokenizer, PROMPTS, kind="seq2seq", max_new_tokens=6, batch_size=2, progress=False)
    single = [generate(t5.model, t5.tokenizer, [p], kind="seq2seq", max_new_tokens=6, progress=False)[0]
              for p in PROMPTS]
    assert out == single and len(out) == len(PROMPTS)
    base = load_student("tiny-llama")
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert len(generate(peft_model, base.tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False)) == 2
    q = load_student("tiny-llama", quant="nf4")
    assert len(generate(q.model, q.tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False)) == 2


def test_evaluate_tasks_result_shape(tiny, data_dir):
    tasks = registry.create("evals", "math", limit=3, mode="zs_answer", max_new_tokens=6).tasks()
    assert [t.name for t in tasks] == ["gsm8k", "multiarith", "asdiv", "svamp"]
    res = evaluate_tasks(tiny.model, tiny.tokenizer, tasks, progress=False, data_dir=data_dir)
    for name, r in res.items():
        assert r["n"] == 3 and r["mode"] == "zs_answer" and 0 <= r["accuracy"] <= 1
        assert r["correct"] == sum(p["correct"] for p in r["predictions"])
        assert set(r["predictions"][0]) >= {"id", "question", "gold", "output", "extracted", "correct"}
        assert r["seconds"] > 0 and r["generated_tokens"] > 0


def test_limit_is_a_seeded_sample(data_dir):
    t = EvalTask(name="asdiv", dataset="asdiv", limit=20)
    a, b = task_problems(t, data_dir), task_problems(t, data_dir)
    assert [p.id for p in a] == [p.id for p in b] and len(a) == 20
    grades = {p.meta["grade"] for p in a}
    assert len(grades) > 1  # not just the first (grade-1) problems


def test_scoring_uses_each_problems_answer_type(tiny, monkeypatch, data_dir):
    """A model that always writes the gold answer in the CoT format scores 100% on every answer type."""
    import lora_spec.evaluate as ev
    from lora_spec.prompts import answer_target

    tasks = [EvalTask(name=f"bbh/{t}", dataset="bbh", dataset_params={"task": t}, mode="zs_answer", scorer="auto",
                      limit=5)
             for t in ("boolean_expressions", "date_understanding", "dyck_languages", "formal_fallacies",
                       "sports_understanding", "multistep_arithmetic_two")]
    tasks.append(EvalTask(name="asdiv", dataset="asdiv", mode="zs_answer", scorer="auto"))
    golds = {}
    for t in tasks:
        for p in task_problems(t, data_dir):
            golds[p.question] = p.meta.get("raw_answer", p.answer)

    def fake_generate(model, tokenizer, prompts, **kw):
        outs = []
        for pr in prompts:
            q = next(q for q in golds if f"Question: {q}\n" in pr)
            outs.append("Some reasoning, 1 + 2 = 3.\n" + answer_target(golds[q]))
        kw["stats"].update(seconds=0.1, generated_tokens=len(outs))
        return outs

    monkeypatch.setattr(ev, "generate", fake_generate)
    res = ev.evaluate_tasks(tiny.model, tiny.tokenizer, tasks, progress=False, data_dir=data_dir)
    for name, r in res.items():
        bad = [p for p in r["predictions"] if not p["correct"]]
        assert not bad, (name, bad[:2])
