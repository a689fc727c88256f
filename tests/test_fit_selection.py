"""A short real fit of SmolLM2-135M on ``arith`` with held-out evaluation of every checkpoint on all three sets:
the manifest, the exported weights, the report and the plot must agree, and ``--select-by ood`` / ``in_dist``
must export the argmax of the respective curve.

The slices are tiny and answer-only (a few generated tokens) so that the test stays short; the code path
(seeded slices, batched generation, scoring, selection, pruning, report) is the one every fit takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_spec.report import PNG_SIZE, parse_report_table, pct
from tests.conftest import run_cli
from tests.helpers import run_in_process

HELD_OUT = {
    "in_dist": "auto;limit=6;mode=zs_answer;max_new_tokens=10",
    "ood": "multiarith,svamp,asdiv;limit=3;mode=zs_answer;max_new_tokens=10",
    "generic": "bbh@task=boolean_expressions,bbh@task=sports_understanding;limit=2;mode=zs_answer;max_new_tokens=6",
}
COMMON = dict(student="smollm2-135m", dataset="arith", first=24, max_steps=4, eval_every=2, batch_size=4,
              max_length=160, lr=3e-3, formats="zero_shot_answer=1,zero_shot_cot=1", save_every=0,
              progress=False)


def _argmax(checkpoints, key):
    """Independent of lora_spec.selection: the first trained step with the highest score."""
    trained = [c for c in checkpoints if c["step"] > 0]
    best = max(c["scores"][key] for c in trained)
    return min(c["step"] for c in trained if c["scores"][key] == best)


@pytest.fixture(scope="module")
def ood_run(tmp_path_factory, data_dir, smollm2_path):
    out = tmp_path_factory.mktemp("fitsel") / "arith-ood"
    args = ["fit", "--out", str(out), "--select-by", "ood", "--keep-checkpoints", "1", "--tracker", "tensorboard"]
    for k, v in COMMON.items():
        if k == "progress":
            args.append("--no-progress")
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    for k, v in HELD_OUT.items():
        args += [f"--{k.replace('_', '-')}", v]
    r = run_in_process(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@pytest.mark.slow
def test_every_checkpoint_is_scored_on_all_three_sets(ood_run):
    out, r = ood_run
    m = json.loads((out / "lorasp.json").read_text())
    cks = m["checkpoints"]
    assert [c["step"] for c in cks] == [0, 2, 4]  # before + 2 trained checkpoints
    for c in cks:
        sc = c["scores"]
        for s in ("in_dist", "ood", "generic"):
            assert 0.0 <= sc[s] <= 1.0
        assert {"in_dist/arith", "ood/multiarith", "ood/svamp", "ood/asdiv", "generic/boolean_expressions",
                "generic/sports_understanding"} <= set(sc)
        assert sc["eval_seconds"] > 0
        # the set score is what its tasks say: ood micro-average (1 problem each), generic macro-average
        assert sc["ood"] == pytest.approx((sc["ood/multiarith"] + sc["ood/svamp"] + sc["ood/asdiv"]) / 3)
        assert sc["generic"] == pytest.approx((sc["generic/boolean_expressions"]
                                               + sc["generic/sports_understanding"]) / 2)
    sets = m["selection"]["sets"]
    assert sets["in_dist"]["datasets"] == ["arith:dev"] and sets["in_dist"]["tasks"] == {"arith": 6}
    assert sets["ood"]["tasks"] == {"multiarith": 1, "svamp": 1, "asdiv": 1}
    # the held-out problems are the same at every checkpoint and never training problems
    assert all(i.startswith("arith/dev/") for i in sets["in_dist"]["ids"]["arith"])
    assert m["selection"]["eval_every"] == 2 and m["train"]["eval_seconds"] > 0
    # every prediction is in the artifact, and it reproduces the scores
    preds = [json.loads(x) for x in (out / "heldout_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 3 * (6 + 3 + 2)
    for c in cks:
        for s in ("in_dist", "ood"):
            rows = [p for p in preds if p["step"] == c["step"] and p["set"] == s]
            assert c["scores"][s] == pytest.approx(sum(p["correct"] for p in rows) / len(rows))
        assert all(set(p) >= {"id", "gold", "output", "extracted", "correct", "task", "extracted_flexible",
                              "correct_flexible", "scorer", "tokens", "budget", "at_budget"} for p in preds)
        # the per-problem results kept in the record (for paired tests) are the predictions, in the sets' id order
        for key, b in c["correct"].items():
            s, t = key.split("/", 1)
            by_id = {p["id"]: p["correct"] for p in preds if p["step"] == c["step"] and p["set"] == s
                     and p["task"] == t}
            assert b == "".join("1" if by_id[i] else "0" for i in sets[s]["ids"][t])
    assert "held-out eval at step 4" in r.stderr
    md = (out / "report.md").read_text()
    assert "| before (0) → chosen (" in md and "in_dist 95% CI (n=6)" in md


@pytest.mark.slow
def test_select_by_ood_exports_the_argmax_and_prunes(ood_run):
    from safetensors.torch import load_file

    out, _ = ood_run
    m = json.loads((out / "lorasp.json").read_text())
    cks = m["checkpoints"]
    chosen = _argmax(cks, "ood")
    assert m["selection"]["rule"] == "ood" and m["selection"]["chosen_step"] == chosen
    # --keep-checkpoints 1: only the chosen and the last directories remain; every record (scores) stays
    on_disk = {c["step"] for c in cks if c.get("path")}
    assert on_disk == {chosen, 4}
    ck_root = Path(m["train"]["checkpoint_dir"])
    assert sorted(p.name for p in ck_root.glob("step-*")) == sorted(f"step-{s:06d}" for s in on_disk)
    assert all(c.get("pruned") for c in cks if c["step"] not in on_disk and c["step"] > 0)
    # the exported adapter holds the chosen checkpoint's weights
    ck = load_file(str(ck_root / f"step-{chosen:06d}" / "trainable.safetensors"))
    ad = load_file(str(out / "adapter_model.safetensors"))
    ck = {k.replace(".default", ""): v for k, v in ck.items()}
    assert set(ad) == set(ck)
    assert all((ad[k] == ck[k]).all() for k in ad)


@pytest.mark.slow
def test_report_and_plot_agree_with_the_manifest(ood_run):
    from matplotlib.image import imread

    out, _ = ood_run
    m = json.loads((out / "lorasp.json").read_text())
    md = (out / "report.md").read_text()
    rows = parse_report_table(md)
    assert [int(r["step"]) for r in rows] == [c["step"] for c in m["checkpoints"]]
    for r, c in zip(rows, m["checkpoints"]):
        assert r["in-distribution %"] == pct(c["scores"]["in_dist"])
        assert r["out-of-distribution %"] == pct(c["scores"]["ood"])
        assert r["generic (BBH) %"] == pct(c["scores"]["generic"])
    chosen = m["selection"]["chosen_step"]
    marked = [int(r["step"]) for r in rows if "chosen" in r[""]]
    assert marked == [chosen]
    assert "before (base model)" in rows[0][""] and "after (last)" in rows[-1][""]
    assert f"**Chosen: step {chosen}**" in md
    assert f"training {m['train']['train_seconds']:.1f} s" in md
    img = imread(str(out / "curves.png"))
    assert (img.shape[1], img.shape[0]) == PNG_SIZE
    assert (out / "curves.png").stat().st_size > 20_000
    # `lorasp report` re-renders the same report from the manifest alone
    md_before = md
    (out / "report.md").unlink()
    (out / "curves.png").unlink()
    r = run_cli("report", str(out), "--no-print")
    assert r.returncode == 0, r.stderr
    assert (out / "report.md").read_text() == md_before
    assert (imread(str(out / "curves.png")).shape[:2]) == (PNG_SIZE[1], PNG_SIZE[0])


@pytest.mark.slow
def test_scores_reach_the_tracker(ood_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = ood_run
    m = json.loads((out / "lorasp.json").read_text())
    events = list((Path(m["train"]["checkpoint_dir"]) / "logs").rglob("events.out.tfevents.*"))
    assert events
    tags: dict[str, list] = {}
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        for t in acc.Tags().get("scalars", []):
            tags.setdefault(t, []).extend((s.step, s.value) for s in acc.Scalars(t))
    # tensorboard's tag names depend on the tracker's main_tag handling: match by suffix
    ood = next(v for t, v in tags.items() if t.endswith("eval/ood"))
    assert sorted(s for s, _ in ood) == [0, 2, 4]
    want = {c["step"]: c["scores"]["ood"] for c in m["checkpoints"]}
    assert all(abs(v - want[s]) < 1e-6 for s, v in ood)
    assert any(t.endswith("eval/in_dist") for t in tags) and any(t.endswith("eval/generic") for t in tags)


def test_the_rule_picks_the_checkpoint_and_changes_no_training(tmp_path, tiny_llama_path):
    """One fit selected by ood and the same fit (same seed) selected by in_dist, through the API, with an evaluator
    whose two curves peak at different steps (in_dist at 2, ood at 4): each exports its own argmax's weights, and
    the losses, scores and trained weights are the same: the rule chooses, it does not train. (The real-model run
    above shows the scores come from real held-out generation.)"""
    from safetensors.torch import load_file

    from lora_spec.fit import FitConfig, fit

    curves = {"in_dist": {0: 0.1, 2: 0.6, 4: 0.3, 6: 0.6}, "ood": {0: 0.2, 2: 0.3, 4: 0.7, 6: 0.5}}

    def evaluator(model, tokenizer, step):
        return {**{k: v[step] for k, v in curves.items()}, "eval_seconds": 0.01}

    runs = {}
    for rule in ("ood", "in_dist"):
        cfg = FitConfig(student="tiny-llama", dataset="arith", first=16, max_steps=6, eval_every=2, batch_size=4,
                        save_every=0, lr=3e-3, select_by=rule, tracker="none", progress=False, before_after=0,
                        out=str(tmp_path / rule))
        runs[rule] = fit(cfg, evaluator=evaluator)
    for rule, want in (("ood", 4), ("in_dist", 2)):
        m = runs[rule].manifest
        assert [c["step"] for c in m["checkpoints"]] == [0, 2, 4, 6]
        assert m["selection"]["rule"] == rule and m["selection"]["chosen_step"] == want == _argmax(m["checkpoints"], rule)
        ck = load_file(str(Path(m["train"]["checkpoint_dir"]) / f"step-{want:06d}" / "trainable.safetensors"))
        ad = load_file(str(runs[rule].out / "adapter_model.safetensors"))
        ck = {k.replace(".default", ""): v for k, v in ck.items()}
        assert set(ad) == set(ck) and all((ad[k] == ck[k]).all() for k in ad)
        assert (runs[rule].out / "report.md").exists() and (runs[rule].out / "curves.png").exists()
    a, b = (runs[r].manifest for r in ("ood", "in_dist"))
    assert a["train"]["loss_history"] == b["train"]["loss_history"]
    for ca, cb in zip(a["checkpoints"], b["checkpoints"]):
        assert {k: v for k, v in ca["scores"].items() if k != "eval_seconds"} == \
               {k: v for k, v in cb["scores"].items() if k != "eval_seconds"}
    # the same trained weights at the same step, whichever rule exported what
    last = [load_file(str(Path(m["train"]["checkpoint_dir"]) / "step-000006" / "trainable.safetensors")) for m in (a, b)]
    assert last[0].keys() == last[1].keys() and all((last[0][k] == last[1][k]).all() for k in last[0])


def test_bad_selection_flags_are_one_line_errors(tmp_path):
    cases = [
        (["--select-by", "best"], "unknown selection rule 'best'"),
        (["--eval-every", "0", "--select-by", "ood"], "needs held-out scores, but --eval-every is 0"),
        (["--generic", "none", "--select-by", "ood=0.5,generic=0.5"], "needs the generic held-out set, which is off"),
        (["--ood", "svamp;limit=0"], "field 'ood.limit'"),
        (["--ood", "svamp;size=3"], "unknown held-out set key 'size'"),
        (["--keep-checkpoints", "0"], "field 'keep_checkpoints'"),
        (["--select-by", "in_dist_loss"], "needs the in_dist set's reference loss, but it scores only accuracy"),
        (["--in-dist", "auto;score=loss", "--select-by", "in_dist"], "scores only the loss"),
        (["--ood", "svamp;score=nll"], "field 'ood.score'"),
    ]
    for args, msg in cases:
        r = run_cli("fit", "--out", str(tmp_path / "x"), *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and msg in r.stderr, (args, r.stderr)


@pytest.mark.slow
def test_unknown_held_out_dataset_is_one_line(tmp_path, tiny_llama_path):
    r = run_in_process("fit", "--student", "tiny-llama", "--dataset", "arith", "--first", "8", "--max-steps", "1",
                "--batch-size", "4", "--eval-every", "1", "--ood", "svmap;limit=2", "--no-progress",
                "--tracker", "none", "--out", str(tmp_path / "y"))
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: --ood svmap: unknown dataset")
    assert "did you mean 'svamp'" in r.stderr
    r = run_in_process("fit", "--student", "tiny-llama", "--dataset", "arith", "--first", "8", "--max-steps", "1",
                "--batch-size", "4", "--ood", "svamp;limit=2;score=loss", "--select-by", "ood_loss", "--no-progress",
                "--tracker", "none", "--out", str(tmp_path / "z"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: --ood: score=loss in mode zs_cot needs reference")
    assert not (tmp_path / "z").exists()  # refused before training


def test_prefer_earliest_through_fit_exports_that_checkpoint(tmp_path, tiny_llama_path):
    """--prefer-earliest end to end (tiny model, an evaluator with fixed per-problem results): the best in_dist is
    step 4 (the last), step 2 is within noise of it; the artifact holds step 2's weights."""
    from safetensors.torch import load_file

    from lora_spec.fit import FitConfig, fit

    bits = {0: "0" * 40, 2: "0" * 4 + "1" * 16 + "0" * 20, 4: "1" * 20 + "0" * 20}

    def evaluator(model, tokenizer, step):
        b = bits[step]
        return {"in_dist": b.count("1") / len(b), "in_dist/arith": b.count("1") / len(b), "eval_seconds": 0.01,
                "correct": {"in_dist/arith": b}}

    cfg = FitConfig(student="tiny-llama", dataset="arith", first=16, max_steps=4, eval_every=2, batch_size=4,
                    save_every=0, select_by="in_dist", prefer_earliest=True, tracker="none", progress=False,
                    before_after=0, out=str(tmp_path / "pe"))
    res = fit(cfg, evaluator=evaluator)
    m = res.manifest
    assert [c["step"] for c in m["checkpoints"]] == [0, 2, 4]
    assert all(c["correct"] == {"in_dist/arith": bits[c["step"]]} and "correct" not in c["scores"]
               for c in m["checkpoints"])
    assert m["selection"]["chosen_step"] == 2 and m["selection"]["prefer_earliest"] is True
    assert "not significantly worse" in m["selection"]["description"]
    ck = load_file(str(Path(m["train"]["checkpoint_dir"]) / "step-000002" / "trainable.safetensors"))
    ad = load_file(str(res.out / "adapter_model.safetensors"))
    ck = {k.replace(".default", ""): v for k, v in ck.items()}
    assert set(ad) == set(ck) and all((ad[k] == ck[k]).all() for k in ad)
    md = (res.out / "report.md").read_text()
    assert "**Chosen: step 2**" in md and "| step 4 → chosen (2) |" in md
    assert "On `in_dist`, the selection score, step 4 is within noise of the chosen step 2" in md
    assert "in_dist 95% CI (n=40)" in md


@pytest.mark.parametrize("student", ["tiny-llama", "tiny-t5"])
def test_reference_loss_is_the_nll_of_the_references_and_selects_its_argmin(tmp_path, student):
    """``score=loss``: no generation, the held-out score is the per-token NLL of the reference solutions. Checked
    against transformers' own loss of the base model (step 0), and --select-by in_dist_loss exports its argmin."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from lora_spec.eval_engine import make_dataset
    from lora_spec.fit import FitConfig, fit
    from lora_spec.prompts import build_prompt, cot_target
    from lora_spec.student import preset_path

    cfg = FitConfig(student=student, dataset="arith", first=16, max_steps=4, eval_every=2, batch_size=4,
                    save_every=0, lr=3e-3, in_dist="auto;limit=6;score=loss", ood="none", generic="none",
                    select_by="in_dist_loss", tracker="none", progress=False, before_after=0, out=str(tmp_path / "l"))
    res = fit(cfg)
    m = res.manifest
    cks = m["checkpoints"]
    assert [c["step"] for c in cks] == [0, 2, 4]
    assert all(set(c["scores"]) == {"in_dist_loss", "eval_seconds"} and "correct" not in c for c in cks)
    trained = [c for c in cks if c["step"] > 0]
    best = min(c["scores"]["in_dist_loss"] for c in trained)
    assert m["selection"]["chosen_step"] == min(c["step"] for c in trained if c["scores"]["in_dist_loss"] == best)
    assert m["selection"]["rule"] == "in_dist_loss" and m["selection"]["sets"]["in_dist"]["score"] == "loss"
    assert cks[-1]["scores"]["in_dist_loss"] < cks[0]["scores"]["in_dist_loss"]  # training on arith lowers it

    # independent: transformers' mean label loss per row, weighted by the row's target tokens
    path = preset_path(student)
    tok = AutoTokenizer.from_pretrained(path)
    seq2seq = student == "tiny-t5"
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(path).eval()
    ids = m["selection"]["sets"]["in_dist"]["ids"]["arith"]
    probs = {p.id: p for p in make_dataset("arith").load("dev")}
    total, n = 0.0, 0
    for pid in ids:
        p = probs[pid]
        prompt = tok(build_prompt(p, "zs_cot", tok), add_special_tokens=True)["input_ids"]
        if seq2seq:
            target = tok(cot_target(p), add_special_tokens=True)["input_ids"]
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([prompt]), labels=torch.tensor([target])).loss
            k = len(target)
        else:
            target = tok(cot_target(p), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            with torch.no_grad():
                loss = model(input_ids=torch.tensor([prompt + target]),
                             labels=torch.tensor([[-100] * len(prompt) + target])).loss
            k = len(target)
        total, n = total + float(loss) * k, n + k
    assert cks[0]["scores"]["in_dist_loss"] == pytest.approx(total / n, rel=1e-4)

    # the evaluator keeps each problem's (id, NLL sum, tokens) of its last evaluation: they add up to the score
    from lora_spec.selection import HeldOutEvaluator

    ev = HeldOutEvaluator(cfg.model_copy(update={"select_by": "in_dist_loss"}), train_dataset="arith",
                          kind="seq2seq" if seq2seq else "causal")
    sc = ev(model, tok, 0)
    per = ev.loss_rows["in_dist"]
    assert [i for i, _, _ in per] == ids
    assert sc["in_dist_loss"] == pytest.approx(sum(x for _, x, _ in per) / sum(k for _, _, k in per), rel=1e-6)
    assert sc["in_dist_loss"] == pytest.approx(total / n, rel=1e-4)

    md = (res.out / "report.md").read_text()
    assert "| in_dist_loss |" in md and f"{cks[0]['scores']['in_dist_loss']:.4f}" in md
    assert "the lowest in_dist reference loss" in md
    assert (res.out / "curves.png").stat().st_size > 10_000
