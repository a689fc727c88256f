"""Training speed and peak memory by allocator and pass size: how lorasp's defaults were chosen.

lorasp's trainer on the training benchmark's setup (``benchmarks/train_throughput.py``: SmolLM2-135M, LoRA r=16,
batch 8, max length 512, 6 steps on the same GSM8K CoT rows), one fresh child process per variant:

- glibc's malloc with its defaults (dynamic mmap threshold), with a fixed mmap threshold (``mallopt``; the
  previous release fixed it at 128 KiB), with ``malloc_trim(0)`` after every step, with transparent huge pages;
- jemalloc (``LD_PRELOAD``, as the ``lorasp`` entry point does where it is installed);
- passes of ``--micro-batch-tokens`` 512, 1024 or the whole batch (0).

    python benchmarks/train_allocator.py [--repeats 1] [VARIANT ...]

Last line: ``RESULT name=train_allocator ratio=<tokens/s of lorasp's default / of the previous release's setting>``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KIB, MIB = 1 << 10, 1 << 20
# name -> (allocator, fixed mmap threshold or None, malloc_trim after every step, pass tokens)
VARIANTS = {
    "glibc-fixed128k-1024": ("glibc", 128 * KIB, False, 1024),  # the previous release's setting
    "glibc-fixed128k-thp-1024": ("glibc-thp", 128 * KIB, False, 1024),
    "glibc-fixed128k-whole": ("glibc", 128 * KIB, False, 0),
    "glibc-whole": ("glibc", None, False, 0),
    "glibc-1024": ("glibc", None, False, 1024),
    "glibc-512": ("glibc", None, False, 512),
    "glibc-fixed4m-1024": ("glibc", 4 * MIB, False, 1024),
    "glibc-fixed32m-trim-1024": ("glibc", 32 * MIB, True, 1024),
    "glibc-trim-1024": ("glibc", None, True, 1024),
    "jemalloc-1024": ("jemalloc", None, False, 1024),
    "jemalloc-512": ("jemalloc", None, False, 512),
}
PREVIOUS, DEFAULT = "glibc-fixed128k-1024", "jemalloc-512"


def child(name: str) -> dict:
    _alloc, threshold, trim, tokens = VARIANTS[name]
    libc = ctypes.CDLL("libc.so.6")
    if threshold is not None:
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD (fixed: switches glibc's dynamic rule off)
        libc.mallopt(-1, 128 * MIB if trim else threshold)  # M_TRIM_THRESHOLD
    import train_throughput as tt

    from lora_spec import trainer

    inner_train = trainer.train

    def train(*a, **k):
        k["args"] = dataclasses.replace(k["args"], micro_batch_tokens=tokens)
        if trim:
            on_step = k.get("on_step")

            def trimmed(row):
                libc.malloc_trim(0)
                if on_step:
                    on_step(row)
            k["on_step"] = trimmed
        return inner_train(*a, **k)

    trainer.train = train

    class A:
        examples, rank, steps, batch_size, max_length = 256, 16, 6, 8, 512
    return tt.run_lorasp(A)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="*", help=f"default: all ({', '.join(VARIANTS)})")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--child")
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if a.child:
        print("JSON " + json.dumps(child(a.child)), flush=True)
        return 0
    from lora_spec.memory import find_jemalloc

    names = a.variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    jemalloc = find_jemalloc()
    results: dict[str, list[dict]] = {}
    for _ in range(a.repeats):
        for name in names:
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            env["LORASP_MALLOC"] = "glibc"
            if VARIANTS[name][0] == "jemalloc":
                if not jemalloc:
                    print(f"{name}: skipped (no jemalloc installed)")
                    continue
                env["LD_PRELOAD"] = jemalloc
            elif VARIANTS[name][0] == "glibc-thp":
                env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
            p = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, env=env)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON ")]
            if p.returncode != 0 or not line:
                sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
            r = json.loads(line[-1][5:])
            results.setdefault(name, []).append(r)
            print(f"{name:26s} {r['tokens_per_s']:7.1f} tokens/s, peak RSS {r['peak_rss_mb']:6.0f} MB "
                  f"(allocator {r['allocator']})", flush=True)
    med = {n: (statistics.median(x["tokens_per_s"] for x in v), statistics.median(x["peak_rss_mb"] for x in v))
           for n, v in results.items()}
    figures = " ".join(f"{n.replace('-', '_')}_tok_s={t:.1f} {n.replace('-', '_')}_rss_mb={m:.0f}"
                       for n, (t, m) in med.items())
    ratio = med[DEFAULT][0] / med[PREVIOUS][0] if DEFAULT in med and PREVIOUS in med else float("nan")
    print(f"RESULT name=train_allocator ratio={ratio:.3f} {figures} repeats={a.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
