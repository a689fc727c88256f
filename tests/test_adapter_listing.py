"""``lorasp adapters list`` / ``show``."""

from __future__ import annotations

import json

import pytest

from tests.helpers import main_cli, make_adapter, run_cli


@pytest.fixture(scope="module")
def tree(tmp_path_factory, tiny_llama_path):
    root = tmp_path_factory.mktemp("artifacts")
    sel = {"selection": {"rule": "ood_mean", "chosen_step": 200},
           "checkpoints": [{"step": 100, "loss": 1.2, "scores": {"gsm8k_dev": 0.10, "ood_mean": 0.08}},
                           {"step": 200, "loss": 0.9, "scores": {"gsm8k_dev": 0.15, "ood_mean": 0.12,
                                                                 "bbh": 0.30}}],
           "data": {"kind": "dataset", "dataset": "gsm8k", "teacher": "gold", "n_examples": 512}}
    sel["checkpoints"][1]["scores"]["eval_seconds"] = 12.5  # what fit records beside the scores
    make_adapter(tiny_llama_path, root / "math" / "adapter", seed=1, quant="nf4", extra=sel)
    make_adapter(tiny_llama_path, root / "dora", seed=2, dora=True, method="dora")
    (root / "broken").mkdir()
    (root / "broken" / "lorasp.json").write_text("{not json\n")
    (root / ".hidden-tmp").mkdir()
    (root / ".hidden-tmp" / "lorasp.json").write_text("{}")
    return root


def test_list_json(tree):
    from lora_spec.adapters.listing import listing

    rows = {r["path"]: r for r in listing(tree)}
    assert set(rows) == {"math/adapter", "dora", "broken"}
    m = rows["math/adapter"]
    assert m["kind"] == "adapter" and m["quant"] == "nf4" and m["method"] == "lora r=4"
    assert m["chosen_step"] == 200 and m["scores"] == {"gsm8k_dev": 0.15, "ood_mean": 0.12, "bbh": 0.30}
    assert m["data"] == "gsm8k via gold" and m["n_examples"] == 512 and m["base_id"]
    assert rows["dora"]["method"] == "dora r=4" and rows["dora"]["chosen_step"] is None
    assert "invalid JSON" in rows["broken"]["error"] and "lorasp.json:1" in rows["broken"]["error"]


def test_list_and_show_cli(tree, capsys):
    r = run_cli("adapters", "list", str(tree))  # one real subprocess: the console script end to end
    assert r.returncode == 1  # the broken artifact is listed with its error, and the exit code says so
    assert "math/adapter" in r.stdout and "ood_mean=12.0%" in r.stdout and "invalid JSON" in r.stdout
    code, out, err = main_cli(capsys, "adapters", "show", str(tree / "math" / "adapter"))
    assert code == 0, err  # one screen: the headline first, then the rest in one line each
    assert len(out.splitlines()) <= 15 and "selection:        ood_mean -> step 200 (gsm8k_dev=15.0% ood_mean=12.0%" \
        in out and "vLLM:             loads unchanged" in out and "adapter_model.safetensors" in out, out
    code, out, err = main_cli(capsys, "adapters", "show", str(tree / "math" / "adapter"), "--full")
    assert code == 0, err
    assert "chosen_step: 200" in out and "vLLM: loads unchanged" in out and "adapter_model.safetensors" in out
    code, out, _ = main_cli(capsys, "adapters", "show", str(tree / "dora"), "--json")
    info = json.loads(out)
    assert any("DoRA" in p for p in info["vllm_problems"]) and info["adapter_config"]["use_dora"] is True
    code, _, err = main_cli(capsys, "adapters", "show", str(tree / "nowhere"))
    assert code == 1 and err.startswith("error: ") and "not a directory" in err and err.count("\n") == 1
    code, _, err = main_cli(capsys, "adapters", "list", str(tree / "math" / "adapter" / "README.md"))
    assert code == 1 and "not a directory" in err
    code, out, _ = main_cli(capsys, "adapters", "list", str(tree / "dora"), "--json")
    assert code == 0 and [r["path"] for r in json.loads(out)] == [str(tree / "dora")]


def test_headline_scores_have_their_n_and_interval():
    from lora_spec.adapters.listing import score_summary, headline
    from lora_spec.stats import macro, wilson

    m = {"selection": {"chosen_step": 20, "sets": {
            "in_dist": {"datasets": ["gsm8k:dev"], "tasks": {"gsm8k": 150}},
            "generic": {"datasets": ["bbh@task=a", "bbh@task=b"], "tasks": {"a": 10, "b": 10}}}},
         "checkpoints": [{"step": 20, "scores": {"in_dist": 0.2, "gsm8k_alias": 0.5, "generic": 0.45,
                                                 "generic/a": 0.3, "generic/b": 0.6, "eval_seconds": 3.0},
                          "correct": {"in_dist/gsm8k": "1" * 30 + "0" * 120, "generic/a": "1110000000",
                                      "generic/b": "1111110000"}}]}
    h = headline(m)
    assert h["in_dist"] == {"accuracy": 0.2, "n": 150, "ci": list(wilson(30, 150))}
    assert h["generic"]["n"] == 20 and h["generic"]["ci"] == list(macro([3, 6], [10, 10])[1:])
    assert h["generic/a"]["ci"] == list(wilson(3, 10)) and "gsm8k_alias" not in h  # no recorded size: no interval
    lo, hi = wilson(30, 150)
    txt = score_summary({"in_dist": 0.2, "gsm8k_alias": 0.5}, intervals=h)
    assert txt == f"in_dist=20.0% [{100 * lo:.1f}, {100 * hi:.1f}] n=150 gsm8k_alias=50.0%"
