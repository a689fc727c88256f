"""experiments/run.py's bookkeeping: what a rerun on a bare machine keeps and what it pays for again."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture()
def run(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("exp_run", ROOT / "experiments" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["exp_run"] = mod  # its dataclasses need their module registered
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("LORASP_EXP_DIR", str(tmp_path / "work"))
    calls = []

    def fake_lorasp(args, log):  # records what would be paid for, and leaves a result behind
        calls.append(args)
        out = tmp_path / "work" / "x" / "eval" / "lbl"
        (out / "predictions").mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"tasks": {"arith": {"n": 1, "correct": 1}}}))
        (out / "predictions" / "arith.jsonl").write_text(json.dumps({"id": "a", "correct": True}) + "\n")
        return 0.0

    monkeypatch.setattr(mod, "run_lorasp", fake_lorasp)
    mod.calls = calls
    return mod


def test_a_recorded_base_eval_is_kept_when_its_directory_is_gone(run, tmp_path):
    (tmp_path / "results").mkdir()
    exp = run.Experiment("x", "t", "c")
    kw = dict(suites=["arith"], tasks=[], mode="zs_cot", limit=3, max_new_tokens=16, model="M")
    first = exp.eval("lbl", **kw)
    assert len(run.calls) == 1 and first["tasks"]["arith"]["hits"] == "1"
    import shutil

    shutil.rmtree(tmp_path / "work" / "x" / "eval")  # a bare machine: the run directory is gone, the record stays
    again = run.Experiment("x", "t", "c")
    assert again.eval("lbl", **kw, keep_recorded=True) == first and len(run.calls) == 1  # not paid for again
    # other arguments: the record does not stand for this evaluation, it runs
    again.eval("lbl", **{**kw, "limit": 4}, keep_recorded=True)
    assert len(run.calls) == 2 and "4" in run.calls[-1]
    # without keep_recorded (a trained model's evaluation) a gone directory is always run again
    shutil.rmtree(tmp_path / "work" / "x" / "eval")
    run.Experiment("x", "t", "c").eval("lbl", **kw)
    assert len(run.calls) == 3


def test_the_teacher_samples_fingerprint_is_the_file_sha256(run, tmp_path):
    import hashlib

    p = tmp_path / "samples.jsonl"
    p.write_bytes(b'{"a": 1}\n' * 1000)
    assert run._sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_collected_math_evals_say_what_the_outputs_got_wrong(run, tmp_path):
    out = tmp_path / "ev"
    (out / "predictions").mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({"tasks": {"gsm8k": {"n": 2, "correct": 1}}}))
    rows = [{"id": "b", "correct": False, "output": "3 * 4 = 13\nThe answer is 13.", "at_budget": False},
            {"id": "a", "correct": True, "output": "3 * 4 = 12, 12 + 1 = 13 so 13 13 13", "at_budget": True}]
    (out / "predictions" / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = run.collect_eval(out, [])["tasks"]["gsm8k"]
    assert t["ids"] == ["a", "b"] and t["hits"] == "10"
    assert t["outputs"] == {"answer_sentence": 1, "at_budget": 1, "equations": 3, "equations_wrong": 1}
    del rows[0]["at_budget"]  # predictions of a release that did not count tokens: unknown, not 0
    (out / "predictions" / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run.collect_eval(out, [])["tasks"]["gsm8k"]["outputs"]["at_budget"] is None
