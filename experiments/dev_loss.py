"""The recipe's step count, chosen on dev: the reference loss of every checkpoint of the C5 run.

    python experiments/dev_loss.py [--fit runs/experiments/c5/adapter] [--dev 200] [--ood 150]

C5's held-out accuracies (100 GSM8K dev problems at 3-6%) cannot rank its checkpoints: every difference is within
noise. The reference loss can: it is the mean per-token NLL of the 200 GSM8K **dev** solutions (the gold
rationale, then "The answer is X."), in the zero-shot CoT prompt the recipe trains and evaluates with, computed by
lorasp's own held-out evaluator (``--in-dist "gsm8k:dev;limit=200;score=loss"``, the training loss function, no
generation). No test set is touched. The base model (step 0) and every saved checkpoint of the fit are scored; a
second, answer-only loss on 150 OOD problems (MultiArith/SVAMP/ASDiv, whose data has no worked solutions: the NLL of
"The answer is X." after the question) is reported beside it as a weak proxy only.

Writes ``experiments/results/dev_loss.json``; ``experiments/page.py`` renders it under C5 and in the recipe notes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import run as R  # noqa: E402  (experiments/run.py: the git commit and the atomic result-file writer)

RESULTS = ROOT / "experiments" / "results" / "dev_loss.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fit", default=os.environ.get("LORASP_EXP_DIR", "runs/experiments") + "/c5/adapter",
                    help="a lorasp fit artifact whose checkpoints are still on disk")
    ap.add_argument("--dev", type=int, default=200, help="GSM8K dev problems (the split has 200)")
    ap.add_argument("--ood", type=int, default=150, help="OOD problems for the answer-only loss (0: off)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    from lora_spec.adapters.artifact import base_spec, load_adapter
    from lora_spec.artifact_files import read_manifest
    from lora_spec.checkpoints import load_trainable
    from lora_spec.selection import HeldOutEvaluator, SelectionOptions
    from lora_spec.student import load_student

    fit = Path(args.fit)
    manifest = read_manifest(fit)
    opts = SelectionOptions(in_dist=f"gsm8k:dev;limit={args.dev};mode=zs_cot;seed=0;score=loss",
                            ood=(f"multiarith,svamp,asdiv;limit={args.ood};mode=zs_answer;seed=0;score=loss"
                                 if args.ood else "none"),
                            generic="none")
    ev = HeldOutEvaluator(opts, train_dataset="gsm8k", kind="causal", batch_size=16, log=print)
    rows: list[dict] = []
    prev = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    done = {r["step"]: r for r in prev.get("checkpoints", []) if prev.get("fit") == str(fit)}

    def score(model, tok, step: int) -> None:
        if step in done:  # a rerun continues where a cut one stopped
            rows.append(done[step])
            return
        t0 = time.perf_counter()
        s = ev(model, tok, step)
        acc = next((c.get("scores") or {} for c in manifest["checkpoints"] if c["step"] == step), {})
        rows.append({"step": step, **{k: round(v, 5) for k, v in s.items() if k.endswith("_loss")},
                     "seconds": round(time.perf_counter() - t0, 1),
                     "accuracy": {k: acc[k] for k in ("in_dist", "ood", "generic") if k in acc},
                     # per problem: [id, summed NLL, target tokens], for paired comparisons between checkpoints
                     "per_problem": {name: [[i, round(nll, 4), n] for i, nll, n in per]
                                     for name, per in ev.loss_rows.items()}})
        _write(args, fit, manifest, rows)

    base = load_student(base_spec(manifest, fit))
    score(base.model.eval(), base.tokenizer, 0)
    del base
    st = load_adapter(fit)
    for c in manifest["checkpoints"]:
        path = c.get("path")
        if int(c["step"]) <= 0 or not path or not (Path(path) / "trainable.safetensors").exists():
            continue
        load_trainable(st.model, Path(path) / "trainable.safetensors")
        st.model.eval()
        score(st.model, st.tokenizer, int(c["step"]))
    _write(args, fit, manifest, rows, complete=True)
    return 0


def _write(args, fit: Path, manifest: dict, rows: list[dict], complete: bool = False) -> None:
    rows = sorted(rows, key=lambda r: r["step"])
    trained = [r for r in rows if r["step"] > 0 and "in_dist_loss" in r]
    out = {"experiment": "dev_loss",
           "title": "The recipe's steps on dev: GSM8K dev reference loss of every C5 checkpoint",
           "command": f"python experiments/dev_loss.py --fit {args.fit} --dev {args.dev} --ood {args.ood}",
           "fit": str(fit), "train_steps": (manifest.get("train") or {}).get("steps"),
           "sets": {"in_dist": f"gsm8k:dev, {args.dev} problems, zs_cot, reference = gold rationale + answer",
                    "ood": (f"multiarith/svamp/asdiv, {args.ood} problems, zs_answer (answer sentence only)"
                            if args.ood else None)},
           "checkpoints": rows,
           "argmin": {k: min(trained, key=lambda r: (r[k], r["step"]))["step"]
                      for k in ("in_dist_loss", "ood_loss") if trained and all(k in r for r in trained)},
           "complete": complete, "git": R._git_commit(),
           "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    R.write_json(Path(args.out), out)


if __name__ == "__main__":
    raise SystemExit(main())
