"""Training memory: peak RSS of lorasp's trainer vs TRL ``SFTTrainer`` + peft, with and without gradient
checkpointing.

Same data and settings as ``benchmarks/train_throughput.py`` (whose setup this imports): SmolLM2-135M-Instruct,
fp32, CPU, LoRA r=16/alpha=32 on all linear layers, the same GSM8K CoT rows, batch 8, max length 512, completion-only
loss. lorasp runs as ``lorasp fit`` does (its default ``--micro-batch-tokens`` and the allocator its entry point
preloads, jemalloc where installed: see README "Training memory"); TRL with its defaults (glibc's malloc). Every run is a fresh child process and its peak RSS
(``ru_maxrss``) is its own.

    python benchmarks/train_memory.py [--steps 3] [--batch-size 8] [--max-length 512]

Last line: ``RESULT name=train_memory ratio=<TRL peak RSS / lorasp peak RSS, without checkpointing> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (the data, the two training setups, the summary)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["lorasp", "trl"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--examples", type=int, default=256)
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if a.side:
        res = tt.run_lorasp(a) if a.side == "lorasp" else tt.run_trl(a)
        print("JSON " + json.dumps(res), flush=True)
        return
    res: dict[tuple[str, bool], dict] = {}
    for gc in (False, True):
        for side in ("lorasp", "trl"):
            cmd = [sys.executable, __file__, "--side", side, "--steps", str(a.steps), "--batch-size",
                   str(a.batch_size), "--max-length", str(a.max_length), "--rank", str(a.rank), "--examples",
                   str(a.examples)] + (["--gradient-checkpointing"] if gc else [])
            p = subprocess.run(cmd, capture_output=True, text=True, env=tt.child_env(side))
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON ")]
            if p.returncode != 0 or not line:
                sys.exit(f"{side} run (gradient checkpointing {'on' if gc else 'off'}) failed:\n{p.stderr[-3000:]}")
            r = res[side, gc] = json.loads(line[-1][5:])
            print(f"{side:6s} gradient checkpointing {'on ' if gc else 'off'}: peak RSS {r['peak_rss_mb']:6.0f} MB, "
                  f"{r['tokens_per_s']:6.1f} tokens/s ({r['tokens']} tokens in {r['seconds']:.1f}s after the first "
                  "step)", flush=True)
    ratio = res["trl", False]["peak_rss_mb"] / res["lorasp", False]["peak_rss_mb"]
    ratio_gc = res["trl", True]["peak_rss_mb"] / res["lorasp", True]["peak_rss_mb"]
    ratio_best = (min(res["trl", g]["peak_rss_mb"] for g in (False, True))
                  / min(res["lorasp", g]["peak_rss_mb"] for g in (False, True)))
    print(f"RESULT name=train_memory ratio={ratio:.3f} ratio_gc={ratio_gc:.3f} ratio_best={ratio_best:.3f} "
          + " ".join(f"{s}{'_gc' if g else ''}_peak_rss_mb={res[s, g]['peak_rss_mb']:.0f}"
                     for g in (False, True) for s in ("lorasp", "trl"))
          + " " + " ".join(f"{s}{'_gc' if g else ''}_tokens_per_s={res[s, g]['tokens_per_s']:.1f}"
                           for g in (False, True) for s in ("lorasp", "trl"))
          + f" steps={a.steps} batch_size={a.batch_size} max_length={a.max_length} rank={a.rank}")


if __name__ == "__main__":
    main()
