"""What the default checkpoint selection costs on a real GSM8K fit (issue 13), measured on this machine.

    python experiments/selection_cost.py [--adapter runs/experiments/recipe/adapter] [--train-steps 12]

A full default fit (``lorasp fit --dataset gsm8k --teacher gold --select-by ood``: 909 steps, four held-out
evaluations) takes hours on a 2-core CPU, so its parts are measured instead, each with lorasp's own code:

1. **training seconds per step**: ``lorasp fit --dataset gsm8k --teacher gold --max-steps K --eval-every 0`` with
   every other setting at its default (the ``train_seconds`` and ``steps`` its ``lorasp.json`` records);
2. **one held-out evaluation with the default sets** (150 GSM8K dev, 150 OOD, 160 BBH; the evaluator a fit builds,
   ``lora_spec.selection.HeldOutEvaluator``): of the base model (the step-0 evaluation) and of a GSM8K-trained
   adapter (what the later evaluations cost: trained models write shorter answers that stop).

The cost of the default fit is then ``(base + 3 x trained) / (steps x seconds per step)``, its four evaluations
(step 0, every ``ceil(steps/3)``, the end) against its training. Writes ``experiments/results/selection_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _train_seconds_per_step(steps: int, work: Path) -> dict:
    out = work / "train-probe"
    exe = Path(sys.executable).with_name("lorasp")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "lora_spec.cli"]) + [
        "fit", "--dataset", "gsm8k", "--teacher", "gold", "--max-steps", str(steps), "--eval-every", "0",
        "--select-by", "last", "--before-after", "0", "--out", str(out), "--overwrite", "--no-progress"]
    subprocess.run(cmd, check=True)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the fit process's peak RSS
    m = json.loads((out / "lorasp.json").read_text())["train"]
    return {"steps": m["steps"], "train_seconds": m["train_seconds"], "tokens_per_second": m["tokens_per_second"],
            "seconds_per_step": m["train_seconds"] / m["steps"], "peak_rss_mb": round(peak_mb),
            "command": "lorasp " + " ".join(cmd[cmd.index("fit"):])}


def _evaluation_seconds(adapter: str | None) -> dict:
    """One evaluation of the default held-out sets, as a default GSM8K fit builds them."""
    from lora_spec.adapters.artifact import load_adapter
    from lora_spec.fit_config import FitConfig
    from lora_spec.selection import HeldOutEvaluator
    from lora_spec.student import load_student

    cfg = FitConfig(dataset="gsm8k", teacher="gold", select_by="ood")  # a real run: the default (not quickstart) sets
    ev = HeldOutEvaluator(cfg, train_dataset="gsm8k", kind="causal", batch_size=cfg.eval_batch_size)
    st = load_adapter(adapter) if adapter else load_student(cfg.student)
    t0 = time.perf_counter()
    scores = ev(st.model, st.tokenizer, step=0)
    return {"seconds": round(time.perf_counter() - t0, 1), "sizes": ev.sizes(),
            "scores": {k: v for k, v in scores.items() if isinstance(v, float)}, "model": adapter or cfg.student}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", default="runs/experiments/recipe/adapter", help="a GSM8K-trained adapter")
    ap.add_argument("--train-steps", type=int, default=12)
    ap.add_argument("--full-steps", type=int, default=909, help="steps of the default GSM8K fit (lorasp fit "
                    "--dataset gsm8k --teacher gold --dry-run)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "selection_cost.json"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as d:
        train = _train_seconds_per_step(a.train_steps, Path(d))
    base = _evaluation_seconds(None)
    trained = _evaluation_seconds(a.adapter)
    train_total = a.full_steps * train["seconds_per_step"]
    evals = base["seconds"] + 3 * trained["seconds"]
    res = {"train_probe": train, "eval_base": base, "eval_trained": trained, "full_steps": a.full_steps,
           "full_train_seconds": round(train_total, 1), "full_eval_seconds": round(evals, 1),
           "fraction": round(evals / train_total, 4), "threads": os.environ.get("OMP_NUM_THREADS"),
           "date": time.strftime("%Y-%m-%d")}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"training: {train['seconds_per_step']:.2f} s/step ({train['tokens_per_second']:.0f} tokens/s) -> "
          f"{a.full_steps} steps = {train_total:.0f} s; one evaluation: base {base['seconds']:.0f} s, trained "
          f"{trained['seconds']:.0f} s ({base['sizes']}); four = {evals:.0f} s; the fit's peak RSS "
          f"{train['peak_rss_mb']} MB")
    print(f"RESULT name=selection_cost fraction={evals / train_total:.3f} train_s_per_step="
          f"{train['seconds_per_step']:.2f} eval_base_s={base['seconds']:.0f} eval_trained_s={trained['seconds']:.0f} "
          f"full_steps={a.full_steps} fit_peak_rss_mb={train['peak_rss_mb']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
