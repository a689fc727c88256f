"""Does bf16 change what the quickstart learns? The quickstart trained in fp32 and in bf16, paired on the same
300 held-out arith test problems.

Steps (each resumable: a finished step is skipped on a rerun, a cut fit continues with --resume, a cut eval
continues from its journal):

1. ``lorasp fit --precision P --out runs/parity/P`` for P in fp32 and bf16 (the quickstart otherwise as it ships:
   same data, seed and steps);
2. ``lorasp eval --adapter runs/parity/P --suite arith --limit 300 --precision P`` (each adapter evaluated in the
   precision it was trained in: the whole pipeline);
3. ``lorasp compare`` fp32 vs bf16 on the same problems (Newcombe's paired interval, exact McNemar), and the two
   training loss curves side by side.

Writes ``experiments/results/precision_parity.json``. bf16 needs a CPU with native bf16 matrix units (AMX or
AVX512-BF16) or a GPU: elsewhere it is emulated and the run takes many hours, so the script refuses unless
``--force``.

    python experiments/precision_parity.py [--runs runs/parity] [--limit 300] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "experiments" / "results" / "precision_parity.json"
PRECISIONS = ("fp32", "bf16")


def lorasp(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lorasp")
    cmd = [str(exe) if exe.exists() else "lorasp", *args]
    print("$ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, text=True, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return p


def fit(run: Path, precision: str, extra: list[str]) -> dict:
    out = run / precision
    if not (out / "lorasp.json").exists():
        resume = ["--resume"] if Path(f"{out}.checkpoints").exists() else []
        lorasp("fit", "--precision", precision, "--out", str(out), "--no-progress", *resume, *extra)
    return json.loads((out / "lorasp.json").read_text())


def evaluate(run: Path, precision: str, limit: int, extra: list[str]) -> Path:
    out = run / f"eval-{precision}"
    if not (out / "results.json").exists():
        lorasp("eval", "--adapter", str(run / precision), "--suite", "arith", "--limit", str(limit),
               "--precision", precision, "--out", str(out), "--no-progress", *extra)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/parity")
    ap.add_argument("--limit", type=int, default=300, help="held-out arith test problems (seeded sample)")
    ap.add_argument("--result", default=str(RESULT))
    ap.add_argument("--force", action="store_true", help="run bf16 even on a CPU without native bf16 units")
    ap.add_argument("--fit-opt", action="append", default=[], help="extra fit flag (tests: a tiny student)")
    ap.add_argument("--eval-opt", action="append", default=[], help="extra eval flag")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_precision import environment_line

    from lora_spec.precision import native_bf16_units, resolve_precision

    if native_bf16_units() is None and resolve_precision("auto").name != "bf16" and not a.force:
        print("precision_parity: this machine has no native bf16 matrix units (no AMX/AVX512-BF16, no GPU), where "
              "bf16 is emulated and this experiment takes many hours; run it on one that has them (--force runs it "
              "anyway)", file=sys.stderr)
        return 2
    run = Path(a.runs)
    fit_extra = [w for opt in a.fit_opt for w in opt.split()]
    eval_extra = [w for opt in a.eval_opt for w in opt.split()]
    manifests = {p: fit(run, p, fit_extra) for p in PRECISIONS}
    evals = {p: evaluate(run, p, a.limit, eval_extra) for p in PRECISIONS}
    cmp = json.loads(lorasp("compare", str(evals["fp32"]), str(evals["bf16"]), "--json").stdout)
    curves = {p: manifests[p]["train"]["loss_history"] for p in PRECISIONS}
    doc = {"experiment": "precision_parity", "date": date.today().isoformat(), "environment": environment_line(),
           "limit": a.limit, "compare": cmp, "loss_history": curves,
           "train_seconds": {p: manifests[p]["train"]["train_seconds"] for p in PRECISIONS},
           "tokens_per_second": {p: manifests[p]["train"]["tokens_per_second"] for p in PRECISIONS},
           "precision": {p: manifests[p]["precision"] for p in PRECISIONS}}
    Path(a.result).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(a.result) + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, a.result)
    print("step " + "  ".join(f"{p:>8s}" for p in PRECISIONS))
    for i in range(max(len(c) for c in curves.values())):
        print(f"{i + 1:4d} " + "  ".join(f"{c[i]:8.4f}" if i < len(c) else " " * 8 for c in curves.values()))
    print(lorasp("compare", str(evals["fp32"]), str(evals["bf16"])).stdout)
    print(f"wrote {a.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
