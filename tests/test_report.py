"""report.md and curves.png rendered from lorasp.json alone, and ``lorasp report`` through the real CLI."""

from __future__ import annotations

import json

import pytest

from lora_spec.artifact_files import write_manifest
from lora_spec.report import PNG_SIZE, parse_report_table, pct, render_markdown, write_report
from tests.conftest import run_cli


def manifest(chosen=20, rule="ood"):
    cks = [
        {"step": 0, "loss": None, "path": None,
         "scores": {"in_dist": 0.125, "ood": 0.25, "generic": 0.5, "eval_seconds": 10.0,
                    "ood/svamp": 0.25, "generic/navigate": 0.5}},
        {"step": 10, "loss": 1.5, "path": "/tmp/x/checkpoint-10", "pruned": False,
         "scores": {"in_dist": 0.5, "ood": 0.375, "generic": 0.375, "eval_seconds": 11.0,
                    "ood/svamp": 0.5, "generic/navigate": 0.25}},
        {"step": 20, "loss": 1.0, "path": "/tmp/x/checkpoint-20",
         "scores": {"in_dist": 0.625, "ood": 0.5, "generic": 0.25, "eval_seconds": 12.0,
                    "ood/svamp": 0.75, "generic/navigate": 0.25}},
        {"step": 30, "loss": 0.8, "path": None, "pruned": True,
         "scores": {"in_dist": 0.75, "ood": 0.4375, "generic": 0.25, "eval_seconds": 13.0,
                    "ood/svamp": 0.5, "generic/navigate": 0.0}},
    ]
    return {"kind": "adapter", "base": {"name": "smollm2-135m"}, "method": "lora", "quant": "nf4",
            "peft": {"r": 8}, "data": {"source": "arith", "n_examples": 64},
            "selection": {"rule": rule, "chosen_step": chosen, "eval_every": 10,
                          "sets": {"in_dist": {"datasets": ["arith:dev"], "limit": 8, "mode": "zs_cot", "seed": 0,
                                               "tasks": {"arith": 8}},
                                   "ood": {"datasets": ["svamp"], "limit": 4, "mode": "zs_cot", "seed": 0,
                                           "tasks": {"svamp": 4}},
                                   "generic": {"datasets": [], "limit": 4}}},
            "train": {"seconds": 184.0, "steps": 30},
            "checkpoints": cks}


def test_report_agrees_with_the_manifest(tmp_path):
    art = tmp_path / "my-adapter"
    art.mkdir()
    m = manifest()
    write_manifest(art, m)
    md_path, png_path = write_report(art)
    md = md_path.read_text()
    rows = parse_report_table(md)
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30]
    for r, c in zip(rows, m["checkpoints"]):
        assert r["in-distribution %"] == pct(c["scores"]["in_dist"])
        assert r["out-of-distribution %"] == pct(c["scores"]["ood"])
        assert r["generic (BBH) %"] == pct(c["scores"]["generic"])
        assert r["eval s"] == f"{c['scores']['eval_seconds']:.1f}"
    notes = [r[""] for r in rows]
    assert notes[0] == "before (base model)" and notes[2] == "chosen" and "after (last)" in notes[3]
    assert "pruned from disk" in notes[3]
    assert "**Chosen: step 20** (of 30 steps)" in md
    assert "data arith (64 examples)\n" in md  # nothing cut: nothing said
    m["data"].update(truncated=3, fewer_shots={"in_context_cot": 5, "in_context_answer": 1})
    write_manifest(art, m)
    assert "data arith (64 examples, 6 in-context with fewer shots to fit the length, 3 cut to the length)" \
        in write_report(art)[0].read_text()
    m["data"].update(truncated=0, fewer_shots={})
    write_manifest(art, m)
    write_report(art)
    assert "out-of-distribution: 25.0 → 50.0 (+25.0) → 43.8 (+18.8)" in md
    # cost: 46 s of eval against 184 s of training = 25%
    assert "training 184.0 s; held-out evaluation 46.0 s over 4 evaluations = 25% of training time" in md
    assert "| step | ood/svamp (n=4) | generic/navigate |" in md
    assert "| 20 ✓ | 75.0 [30.1, 95.4] | 25.0 |" in md  # 3/4 with its Wilson interval; navigate's n is unknown
    # every set accuracy has its n and 95% interval (here from the accuracy and the recorded set size)
    assert rows[2]["in_dist 95% CI (n=8)"] == "[30.6, 86.3]" and rows[0]["ood 95% CI (n=4)"] == "[4.6, 69.9]"
    assert "Paired comparisons: not available" in md  # no per-problem results recorded
    assert "- generic: off" in md and "- ood: 4 problems (svamp 4); prompt mode zs_cot, seed 0" in md

    from matplotlib.image import imread

    img = imread(str(png_path))
    assert img.shape[1] == PNG_SIZE[0] and img.shape[0] == PNG_SIZE[1]
    assert png_path.stat().st_size > 20_000
    # not a blank image: many distinct colours (three curves, grid, text)
    assert len({tuple(px) for px in img.reshape(-1, img.shape[2])[::97].round(2).tolist()}) > 10


def test_base_beating_every_checkpoint_is_said(tmp_path):
    m = manifest(chosen=10, rule="generic")
    md = render_markdown(m, "a")
    assert "the base model (step 0) scores higher than every trained checkpoint on `generic`" in md


def test_without_chosen_step_the_rule_decides():
    m = manifest()
    del m["selection"]["chosen_step"]
    md = render_markdown(m, "a")
    assert "**Chosen: step 20**" in md  # argmax of ood among trained checkpoints
    m["selection"]["rule"] = "in_dist"
    assert "**Chosen: step 30** (the last)." in render_markdown(m, "a")


def test_cli_rerenders_from_the_manifest(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    write_manifest(art, manifest())
    r = run_cli("report", str(art))
    assert r.returncode == 0, r.stderr
    assert "| step | train loss |" in r.stdout
    assert (art / "report.md").read_text() == r.stdout
    assert (art / "curves.png").stat().st_size > 20_000
    # edit the manifest: the report follows it
    m = manifest(chosen=30, rule="in_dist")
    m["checkpoints"][3]["scores"]["in_dist"] = 0.875
    write_manifest(art, m)
    out = tmp_path / "elsewhere"
    r = run_cli("report", str(art), "--out", str(out), "--no-print")
    assert r.returncode == 0, r.stderr
    rows = parse_report_table((out / "report.md").read_text())
    assert rows[3]["in-distribution %"] == "87.5" and rows[3][""].startswith("chosen")


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m.pop("checkpoints"), "no 'checkpoints' recorded"),
    (lambda m: m["checkpoints"][1].update(step="ten"), r"checkpoints\[1\].step: expected an integer"),
    (lambda m: m["checkpoints"][2]["scores"].update(ood="high"), r"checkpoints\[2\].scores.ood: expected a number"),
    (lambda m: m["selection"].update(chosen_step=25), "selection.chosen_step 25 is not one of the checkpoints"),
    (lambda m: m["checkpoints"][2].update(step=10), "step 10 appears twice"),
])
def test_cli_errors_are_one_line(tmp_path, mutate, msg):
    import re

    art = tmp_path / "art"
    art.mkdir()
    m = manifest()
    mutate(m)
    write_manifest(art, m)
    r = run_cli("report", str(art))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert re.search(msg, r.stderr) and "lorasp.json" in r.stderr
    assert not (art / "report.md").exists()


def test_cli_not_an_artifact(tmp_path):
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 1 and r.stderr.strip() == f"error: {tmp_path}: not a lorasp artifact (no lorasp.json)"
    (tmp_path / "lorasp.json").write_text("{not json")
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 1 and "lorasp.json:1: invalid JSON" in r.stderr
    r = run_cli("report", str(tmp_path / "missing"))
    assert r.returncode == 1 and "not a directory" in r.stderr


def test_without_evaluation_the_report_says_so(tmp_path):
    m = {"kind": "adapter", "base": {"name": "x"}, "checkpoints": [{"step": 5, "loss": 1.0, "scores": {}}],
         "selection": {"rule": "last", "chosen_step": 5, "eval_seconds": 0.0}, "train": {"train_seconds": 12.0}}
    md = render_markdown(m, "a")
    assert "No held-out evaluation ran" in md and "Training took 12.0 s." in md
    art = tmp_path / "a"
    art.mkdir()
    write_manifest(art, m)
    md_path, png_path = write_report(art)
    assert md_path.read_text() == md and png_path.stat().st_size > 10_000


def _bits_manifest():
    """A manifest with per-problem results (``checkpoints[*].correct``) consistent with its scores."""
    bits = {0: ("0" * 18 + "11", "0000000001"),
            10: ("1111100000" + "0" * 8 + "11", "1100000001"),
            20: ("1111111111" + "1" * 4 + "000011", "1111100001"),
            30: ("1111111111" + "1" * 5 + "00011", "1110000001")}
    cks = []
    for step, (a, b) in bits.items():
        cks.append({"step": step, "loss": None if step == 0 else 1.0 / step,
                    "path": None if step == 0 else f"/x/{step}",
                    "correct": {"in_dist/arith": a, "ood/svamp": b},
                    "scores": {"in_dist": a.count("1") / 20, "ood": b.count("1") / 10, "ood/svamp": b.count("1") / 10,
                               "in_dist/arith": a.count("1") / 20, "eval_seconds": 1.0}})
    return {"kind": "adapter", "base": {"name": "smollm2-135m"}, "checkpoints": cks,
            "selection": {"rule": "ood", "chosen_step": 20, "eval_every": 10,
                          "sets": {"in_dist": {"datasets": ["arith:dev"], "mode": "zs_cot", "seed": 0,
                                               "tasks": {"arith": 20}},
                                   "ood": {"datasets": ["svamp"], "mode": "zs_cot", "seed": 0,
                                           "tasks": {"svamp": 10}}}},
            "train": {"train_seconds": 100.0}}, bits


def test_paired_comparisons_and_intervals_from_per_problem_results(tmp_path):
    from lora_spec import stats

    m, bits = _bits_manifest()
    md = render_markdown(m, "a")
    rows = parse_report_table(md)
    for r, c in zip(rows, m["checkpoints"]):
        k = bits[c["step"]][0].count("1")
        lo, hi = stats.wilson(k, 20)
        assert r["in_dist 95% CI (n=20)"] == f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    vec = {s: ([ch == "1" for ch in a], [ch == "1" for ch in b]) for s, (a, b) in bits.items()}
    before_chosen = stats.paired(vec[0][0], vec[20][0])
    assert before_chosen["within_noise"] is False
    line = next(ln for ln in md.splitlines() if ln.startswith("| before (0) → chosen (20) |"))
    assert stats.fmt_paired(before_chosen) in line
    assert stats.fmt_paired(stats.paired(vec[0][1], vec[20][1])) in line
    assert "| step 10 → chosen (20) |" in md and "| before (0) → after (30) |" in md
    # on ood (the selection score, 10 problems) step 30 is within noise of step 20, and so is step 10
    assert stats.paired(vec[30][1], vec[20][1])["within_noise"]
    assert "On `ood`, the selection score, steps 10, 30 are within noise of the chosen step 20" in md


def test_report_cli_uses_heldout_predictions_of_older_artifacts(tmp_path, capsys):
    """An artifact whose checkpoints lack `correct` still gets its paired comparisons from heldout_predictions.jsonl."""
    m, bits = _bits_manifest()
    preds = []
    for c in m["checkpoints"]:
        corr = c.pop("correct")
        for key, b in corr.items():
            s, t = key.split("/")
            preds += [{"step": c["step"], "set": s, "task": t, "id": f"{t}-{i}", "correct": ch == "1"}
                      for i, ch in enumerate(b)]
    art = tmp_path / "old"
    art.mkdir()
    write_manifest(art, m)
    from tests.helpers import main_cli

    code, _, err = main_cli(capsys, "report", str(art), "--no-print")
    assert code == 0, err
    assert "Paired comparisons: not available" in (art / "report.md").read_text()
    (art / "heldout_predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    r = run_cli("report", str(art))  # the console script end to end
    assert r.returncode == 0, r.stderr
    assert "| before (0) → chosen (20) |" in r.stdout and "within noise of the chosen step 20" in r.stdout
    m2, _ = _bits_manifest()
    assert r.stdout == render_markdown(m2, "old")  # the same report as from the recorded `correct`
    (art / "heldout_predictions.jsonl").write_text('{"step": 0}\n')
    code, _, err = main_cli(capsys, "report", str(art))
    assert code == 1 and err.count("\n") == 1 and "heldout_predictions.jsonl:1: expected" in err
