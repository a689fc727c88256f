"""A learning-rate sweep of the GSM8K recipe, judged on the dev split only (issue 12, "tune it on dev").

    python experiments/dev_sweep.py [--steps 48] [--lr 5e-4 --lr 1e-3 --lr 2e-3]

Each learning rate trains the recipe (``recipes/gsm8k-smollm2.yaml`` on the GSM8K teach run of
``experiments/run.py``) for the same short budget of ``--steps`` optimizer steps (its own cosine schedule), and the
exported adapter is scored by the reference loss of the 200 GSM8K **dev** solutions (mean per-token NLL of the gold
rationale and answer, zero-shot CoT prompt; lorasp's held-out evaluator with ``score=loss``): on a 2-core CPU a
240-step run per setting, scored by accuracy, is out of reach, and dev accuracy near 3% cannot rank settings anyway.
No test set is touched. Each fit is resumable and skipped once finished; each score is kept as it arrives.

Writes ``experiments/results/dev_sweep.json``; ``experiments/page.py`` renders it with paired comparisons.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import run as R  # noqa: E402  (experiments/run.py: the teach run, work_dir, run_lorasp)

RESULTS = ROOT / "experiments" / "results" / "dev_sweep.json"
RECIPE = "recipes/gsm8k-smollm2.yaml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--lr", type=float, action="append", help="learning rates (default 5e-4, 1e-3, 2e-3)")
    ap.add_argument("--dev", type=int, default=200)
    args = ap.parse_args(argv)
    lrs = args.lr or [5e-4, 1e-3, 2e-3]
    rec = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    runs = {r["lr"]: r for r in rec.get("runs", []) if r.get("steps") == args.steps}
    exp = R.Experiment("dev_sweep", "sweep", "")  # for its teach run and command log only (it writes no c*.json)
    teach = exp.teach_gsm8k()
    for lr in lrs:
        if lr in runs:
            continue
        out = R.work_dir() / "sweep" / f"lr{lr:g}-s{args.steps}"
        fit_args = ["--config", RECIPE, "--data", str(teach), "--max-steps", str(args.steps), "--lr", f"{lr:g}",
                    "--eval-every", "0", "--select-by", "last", "--tracker", "none"]
        if not (out / "lorasp.json").exists():
            resume = ["--resume"] if Path(str(out) + ".checkpoints").exists() else []
            R.run_lorasp(["fit", *fit_args, "--out", str(out), "--no-progress", *resume], exp.log)
        runs[lr] = {"lr": lr, "steps": args.steps, **_score(out, args.dev),
                    "fit": "lorasp fit " + " ".join(fit_args).replace(str(teach), "runs/experiments/teach/gsm8k-l2")}
        _write(args, lrs, runs)
    _write(args, lrs, runs, complete=True)
    return 0


def _score(out: Path, n: int) -> dict:
    from lora_spec.adapters.artifact import load_adapter

    m = json.loads((out / "lorasp.json").read_text())
    st = load_adapter(out)
    tr = m.get("train") or {}
    loss, seconds, rows = R.dev_reference_loss(st.model, st.tokenizer,
                                               f"gsm8k:dev;limit={n};mode=zs_cot;seed=0;score=loss",
                                               int(tr.get("steps") or 0))
    return {"in_dist_loss": round(loss, 5), "score_seconds": round(seconds, 1),
            "train_seconds": tr.get("train_seconds"), "final_train_loss": tr.get("final_loss"),
            "per_problem": {"in_dist": rows}}


def _write(args, lrs: list[float], runs: dict, complete: bool = False) -> None:
    out = {"experiment": "dev_sweep",
           "title": "Learning rate of the GSM8K recipe, judged by the GSM8K dev reference loss",
           "command": f"python experiments/dev_sweep.py --steps {args.steps} " + " ".join(f"--lr {x:g}" for x in lrs),
           "recipe": RECIPE, "dev": f"gsm8k:dev, {args.dev} problems, zs_cot, reference = gold rationale + answer",
           "runs": [runs[x] for x in sorted(runs)], "complete": complete and all(x in runs for x in lrs),
           "git": R._git_commit(), "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    R.write_json(RESULTS, out)


if __name__ == "__main__":
    raise SystemExit(main())
