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


def fake_commands(run, task: str):
    """A stand-in for ``run_lorasp``: each lorasp command is recorded in ``run.calls`` and leaves behind what the
    real one would (a fit's lorasp.json, a merged config, a teach manifest, an eval of ``task`` with one miss)."""
    from pathlib import Path

    def fake(args, log):
        run.calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if args[0] == "fit":
            (out / "lorasp.json").write_text(json.dumps({"data": {"fewer_shots": {"in_context_cot": 7}}}))
        elif args[0] == "merge":
            (out / "config.json").write_text("{}")
        elif args[0] == "teach":
            (out / "manifest.json").write_text(json.dumps({"status": "complete"}))
            (out / "samples.jsonl").write_text("{}\n")
        else:
            (out / "predictions").mkdir(exist_ok=True)
            (out / "results.json").write_text(json.dumps({"tasks": {task: {"n": 1, "correct": 0}}}))
            (out / "predictions" / f"{task}.jsonl").write_text(json.dumps({"id": "a", "correct": False}) + "\n")
        return 0.0

    return fake


def test_c3_mixtures_reruns_only_those_and_keeps_the_earlier_results(run, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr(run, "run_lorasp", fake_commands(run, "arith"))
    (tmp_path / "results").mkdir()
    old_evals = {f"{m}-{mode}-arith": {"args": ["old"], "tasks": {"arith": {"n": 1, "correct": 1}}}
                 for m in ("base", *run.C3_MIXTURES) for mode in ("icl_cot", "zs_cot")}
    (tmp_path / "results" / "c3.json").write_text(json.dumps(
        {"git": "f48fe60", "evals": old_evals, "fits": {"paper_4211": {"args": ["old"]}}, "extra": {}}))
    run.c3("arith", 48, 300, only=["paper_4211"])
    rec = json.loads((tmp_path / "results" / "c3.json").read_text())
    fits = [c[c.index("--out") + 1] for c in run.calls if c[0] == "fit"]
    assert [Path(f).name for f in fits] == ["teacher-adapter", "paper_4211"]  # no other mixture is trained
    evals = [Path(c[c.index("--out") + 1]).name for c in run.calls if c[0] == "eval"]
    assert evals == ["paper_4211-icl_cot-arith", "paper_4211-zs_cot-arith"]
    prev = rec["extra"]["previous"]["paper_4211"]
    assert prev["git"] == "f48fe60" and prev["fit"] == {"args": ["old"]}
    assert set(prev["evals"]) == {"paper_4211-icl_cot-arith", "paper_4211-zs_cot-arith"}
    assert rec["evals"]["paper_4211-icl_cot-arith"]["tasks"]["arith"]["correct"] == 0  # the new run
    assert rec["evals"]["zs_cot_only-icl_cot-arith"] == old_evals["zs_cot_only-icl_cot-arith"]  # kept as it was
    assert rec["fits"]["paper_4211"]["data"]["fewer_shots"] == {"in_context_cot": 7} and rec["complete"]
    assert rec["extra"]["rerun"]["command"].endswith("--mixtures paper_4211")
    # a second run (e.g. after a cut) neither moves the new results aside nor pays again
    n = len(run.calls)
    run.c3("arith", 48, 300, only=["paper_4211"])
    again = json.loads((tmp_path / "results" / "c3.json").read_text())
    assert len(run.calls) == n and again["extra"]["previous"]["paper_4211"]["git"] == "f48fe60"
    with pytest.raises(run.StepFailed, match="unknown mixture nope"):
        run.c3("arith", 48, 300, only=["nope"])


def test_dev_variants_name_real_settings_and_refuse_unknown_ones():
    """experiments/dev_variants.py: every variant's flags are settings lorasp fit reads, and a typo in --run is a
    one-line error, not a 40-minute run of the wrong thing."""
    from lora_spec.cli import cli
    from lora_spec.formats import parse_mixture

    spec = importlib.util.spec_from_file_location("exp_dev_variants", ROOT / "experiments" / "dev_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_runs(["recipe:0,1", "len768"]) == [("recipe", 0), ("recipe", 1), ("len768", 0)]
    for bad, msg in (("len1024:0", "unknown variant 'len1024'"), ("recipe:a", "seeds must be integers")):
        with pytest.raises(SystemExit, match=msg):
            mod.parse_runs([bad])
    fit_opts = {o for p in cli.get_command(None, "fit").params for o in p.opts}
    for name, (_what, flags) in mod.VARIANTS.items():
        assert all(f in fit_opts for f in flags[::2]), name
        if "--formats" in flags:
            assert sum(parse_mixture(flags[flags.index("--formats") + 1]).values()) > 0, name


def test_c1_fits_pin_the_measured_mixture_and_only_the_shipped_part_trains_the_recipe_as_it_is(run, tmp_path,
                                                                                                monkeypatch):
    """C1's recipe fits pin the mixture its numbers were measured with (a rerun reproduces the page after the recipe
    file changed); ``c1 --only mixture`` trains the recipe file as it ships and evaluates it in both C1 modes."""
    from pathlib import Path

    monkeypatch.setattr(run, "run_lorasp", fake_commands(run, "gsm8k"))
    monkeypatch.setattr(run.Experiment, "teach_gsm8k", lambda self: tmp_path / "teach")
    (tmp_path / "results").mkdir()
    run.c1(only="seed1")
    seed_fit = next(c for c in run.calls if c[0] == "fit")
    assert seed_fit[seed_fit.index("--formats") + 1] == run.MEASURED_MIXTURE
    run.calls.clear()
    run.c1(only="mixture")
    fits = [c for c in run.calls if c[0] == "fit"]
    assert len(fits) == 1 and "--formats" not in fits[0] and Path(fits[0][fits[0].index("--out") + 1]).parts[-2:] \
        == ("shipped", "adapter")
    evals = sorted(Path(c[c.index("--out") + 1]).name for c in run.calls if c[0] == "eval")
    assert evals == sorted(f"shipped-{m}-{t}" for m in ("zs_cot", "icl_cot") for t in run.C1_SETS)
    rec = json.loads((tmp_path / "results" / "c1.json").read_text())
    assert "recipe-shipped" in rec["fits"] and "recipe-seed1" in rec["fits"]


def test_c1g_trains_the_gemma_recipe_and_measures_both_sizes_slices(run, tmp_path, monkeypatch):
    """``c1g``: the Gemma recipe file as it ships on C1's teach run; the adapter's and the base Gemma's zs_cot slices
    (adapter first: the headline survives a cut), then BBH in both C2 modes; ``--only full-ft`` trains the same
    recipe fully at FULL_FT_LR with the same dev selection; another ``--only`` is refused."""
    from pathlib import Path

    monkeypatch.setattr(run, "run_lorasp", fake_commands(run, "gsm8k"))
    monkeypatch.setattr(run.Experiment, "teach_gsm8k", lambda self: tmp_path / "teach")
    (tmp_path / "results").mkdir()
    run.c1g()
    fits = [c for c in run.calls if c[0] == "fit"]
    assert len(fits) == 1 and fits[0][fits[0].index("--config") + 1] == "recipes/gsm8k-gemma3-270m.yaml"
    assert "--formats" not in fits[0] and "--method" not in fits[0]
    evals = [c for c in run.calls if c[0] == "eval"]
    labels = [Path(c[c.index("--out") + 1]).name for c in evals]
    assert labels[:2] == ["adapter-zs_cot-gsm8k", "base-zs_cot-gsm8k"]
    assert set(labels) == {f"{w}-zs_cot-{t}" for w in ("adapter", "base") for t in run.C1_SETS} | \
        {f"{w}-{m}-bbh" for w in ("adapter", "base") for m in run.C2_MODES}
    for c, label in zip(evals, labels):
        assert c[c.index("--mode") + 1] in ("zs_cot", *run.C2_MODES)
        if label.startswith("base"):
            assert c[c.index("--model") + 1] == "gemma3-270m" and "--adapter" not in c
        else:
            assert "--adapter" in c and "--model" not in c
    rec = json.loads((tmp_path / "results" / "c1g.json").read_text())
    assert rec["complete"] and rec["extra"]["student"] == "gemma3-270m"
    run.calls.clear()
    run.c1g(only="full-ft")
    fit = next(c for c in run.calls if c[0] == "fit")
    assert fit[fit.index("--method") + 1] == "full" and float(fit[fit.index("--lr") + 1]) == run.FULL_FT_LR
    assert "--eval-every" not in fit and "--select-by" not in fit  # the recipe's own dev selection
    assert sorted(Path(c[c.index("--out") + 1]).name for c in run.calls if c[0] == "eval") == \
        sorted(f"full-ft-zs_cot-{t}" for t in run.C1_SETS)
    with pytest.raises(run.StepFailed, match="c1g --only takes full-ft"):
        run.c1g(only="seed1")
