"""LoRA fine-tune throughput: lorasp's trainer vs TRL ``SFTTrainer`` + peft, on the same data and settings.

Both sides train SmolLM2-135M-Instruct (CPU) with LoRA r=16/alpha=32 on all linear layers, on the same 256
GSM8K CoT examples (zero-shot CoT prompt -> reference rationale + "The answer is X."; loss on the completion
only), with the same batch size, max length, steps, learning rate/schedule. lorasp runs at ``--precision auto``
(``--lorasp-precision``). TRL runs at up to three settings:

- ``trl-fp32``: ``bf16=False``, no gradient checkpointing (its best setting on a CPU without native bf16 units);
- ``trl-bf16``: ``bf16=True``, no gradient checkpointing (its best setting where bf16 is native: AMX, GPUs);
- ``trl-defaults``: SFTConfig's own defaults (``bf16=True``, gradient checkpointing on).

The bf16 settings run only where bf16 is native (AMX/AVX512-BF16 CPUs) unless ``--force-bf16``: elsewhere bf16 is
emulated and a step takes many minutes. The ratio is lorasp over the best TRL setting measured.
Each side runs in a fresh child process (so that peak RSS is its own); sides alternate, ``--repeats`` times.
lorasp's child gets the allocator the ``lorasp`` entry point preloads (jemalloc where installed, see
``lora_spec/memory.py``); TRL's runs on glibc's malloc as a TRL user's would, and with
``--trl-with-lorasp-allocator`` also on lorasp's allocator (``ratio_same_allocator``).

Measured: non-padding tokens per second over the optimizer steps after the first (warm-up) one, from one
end-of-step to the next (so both include batching/collation), and the child's peak RSS.

    python benchmarks/train_throughput.py [--steps 6] [--batch-size 8] [--repeats 3] [--trl-with-lorasp-allocator]

Last line: ``RESULT name=train_throughput ratio=<lorasp/TRL tokens/s> ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _data(n: int):
    from lora_spec import registry
    from lora_spec.prompts import build_prompt, cot_target

    ds = registry.create("datasets", "gsm8k")
    rows = []
    for p in ds.load("train", limit=n):
        rows.append({"prompt": build_prompt(p, "zs_cot", None, chat=False), "completion": cot_target(p),
                     "id": p.id})
    return rows


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_lorasp(a) -> dict:
    import torch

    from lora_spec.adapters.peft_setup import MethodSpec, apply_method
    from lora_spec.records import Example
    from lora_spec.student import load_student
    from lora_spec.trainer import TrainArgs, train

    from lora_spec.precision import resolve_precision

    rows = _data(a.examples)
    precision = resolve_precision(getattr(a, "lorasp_precision", "auto"))
    torch.manual_seed(0)
    st = load_student("smollm2-135m", dtype=precision.dtype)
    model = apply_method(st, MethodSpec("lora", rank=a.rank, alpha=2 * a.rank, dropout=0.0,
                                        gradient_checkpointing=getattr(a, "gradient_checkpointing", False)))
    ex = [Example("zero_shot_cot", r["prompt"], r["completion"], r["id"]) for r in rows]
    marks: list[tuple[float, int]] = []

    def on_step(row):
        marks.append((time.perf_counter(), row["tokens"]))

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train(model, st.tokenizer, ex, kind="causal", ckpt_dir=d, on_step=on_step,
              args=TrainArgs(max_steps=a.steps, batch_size=a.batch_size, lr=2e-4, warmup=0, schedule="cosine",
                             max_length=a.max_length, save_every=0, progress=False, tracker="none",
                             mixed_precision=precision.mixed_precision))
        wall = time.perf_counter() - t0
    return _summary(marks, wall)


TRL_SETTINGS = {  # side -> (bf16, gradient_checkpointing)
    "trl": (False, False), "trl+prealloc": (False, False), "trl-fp32": (False, False),
    "trl-bf16": (True, False), "trl-defaults": (True, True)}


def run_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from lora_spec.student import load_student

    rows = _data(a.examples)
    torch.manual_seed(0)
    st = load_student("smollm2-135m")
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    marks: list[tuple[float, int]] = []
    counted: list[int] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append((time.perf_counter(), counted[len(marks)] if len(marks) < len(counted) else 0))

    with tempfile.TemporaryDirectory() as d:
        cfg = SFTConfig(output_dir=d, per_device_train_batch_size=a.batch_size, max_steps=a.steps,
                        learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
                        report_to="none", save_strategy="no",
                        gradient_checkpointing=(getattr(a, "gradient_checkpointing", False)
                                                or TRL_SETTINGS[a.side][1]),
                        max_length=a.max_length, use_cpu=True, bf16=TRL_SETTINGS[a.side][0], fp16=False,
                        packing=False,
                        completion_only_loss=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
        tr = SFTTrainer(model=st.model, args=cfg, train_dataset=ds, processing_class=st.tokenizer,
                        peft_config=LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                                               target_modules="all-linear", task_type="CAUSAL_LM"),
                        callbacks=[Marks()])
        inner = tr.data_collator

        def counting(features):
            b = inner(features)
            counted.append(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["input_ids"].numel()))
            return b

        tr.data_collator = counting
        t0 = time.perf_counter()
        tr.train()
        wall = time.perf_counter() - t0
    return _summary(marks, wall)


def _summary(marks, wall) -> dict:
    # steps after the first: interval between consecutive end-of-step marks, tokens of the later step
    secs = sum(marks[i][0] - marks[i - 1][0] for i in range(1, len(marks)))
    toks = sum(marks[i][1] for i in range(1, len(marks)))
    from lora_spec.memory import loaded_allocator

    return {"tokens_per_s": toks / secs if secs else 0.0, "tokens": toks, "seconds": secs, "wall": wall,
            "peak_rss_mb": _peak_rss_mb(), "steps": len(marks), "allocator": loaded_allocator()}


def child_env(side: str) -> dict[str, str]:
    """A side's process environment: lorasp with the allocator its entry point preloads (jemalloc where installed,
    ``lora_spec.memory``), TRL as a TRL user runs it (glibc), and ``trl+prealloc`` TRL with lorasp's allocator."""
    from lora_spec.memory import with_allocator

    env = dict(os.environ)
    return with_allocator(env) if side in ("lorasp", "trl+prealloc") else env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["lorasp", *TRL_SETTINGS])
    ap.add_argument("--lorasp-precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--force-bf16", action="store_true", help="run TRL's bf16 settings on a CPU without native bf16")
    ap.add_argument("--trl-with-lorasp-allocator", action="store_true",
                    help="also run TRL with the allocator lorasp preloads (the same-allocator comparison)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--examples", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if a.side:
        res = run_lorasp(a) if a.side == "lorasp" else run_trl(a)
        print("JSON " + json.dumps(res), flush=True)
        return
    from lora_spec.memory import preload_library
    from lora_spec.precision import native_bf16_units, resolve_precision

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_precision import environment_line

    precision = resolve_precision(a.lorasp_precision)
    print(f"environment: {environment_line()}\nlorasp precision: {precision.line()}", flush=True)
    bf16_ok = a.force_bf16 or native_bf16_units() is not None
    sides = (["lorasp", "trl-fp32"] + (["trl-bf16", "trl-defaults"] if bf16_ok else [])
             + (["trl+prealloc"] if a.trl_with_lorasp_allocator and preload_library() else []))
    if not bf16_ok:
        print("skipped trl-bf16 and trl-defaults (bf16=True): this CPU has no native bf16 matrix units, where bf16 "
              "is emulated and many times slower than fp32, so TRL's best setting here is trl-fp32 (--force-bf16 "
              "runs them anyway)", flush=True)
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(a.repeats):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            cmd = [sys.executable, __file__, "--side", side, "--steps", str(a.steps), "--batch-size",
                   str(a.batch_size), "--max-length", str(a.max_length), "--rank", str(a.rank), "--examples",
                   str(a.examples), "--lorasp-precision", a.lorasp_precision]
            p = subprocess.run(cmd, capture_output=True, text=True, env=child_env(side))
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON ")]
            if p.returncode != 0 or not line:
                sys.exit(f"{side} run failed:\n{p.stderr[-3000:]}")
            res = json.loads(line[-1][5:])
            results[side].append(res)
            print(f"run {r + 1} {side:12s}: {res['tokens_per_s']:8.1f} tokens/s ({res['tokens']} tokens in "
                  f"{res['seconds']:.1f}s after the first step), peak RSS {res['peak_rss_mb']:.0f} MB, allocator "
                  f"{res['allocator']}", flush=True)
    med = {s: {k: statistics.median(x[k] for x in v) for k in ("tokens_per_s", "peak_rss_mb")}
           for s, v in results.items()}
    best = max((s for s in med if s.startswith("trl") and s != "trl+prealloc"), key=lambda s: med[s]["tokens_per_s"])
    ratio = med["lorasp"]["tokens_per_s"] / med[best]["tokens_per_s"]
    mem = med["lorasp"]["peak_rss_mb"] / med[best]["peak_rss_mb"]
    for s, m in med.items():
        print(f"median {s:12s} {m['tokens_per_s']:8.1f} tokens/s, peak RSS {m['peak_rss_mb']:.0f} MB")
    trl_figures = " ".join(f"{s.replace('-', '_')}_tokens_per_s={m['tokens_per_s']:.1f} "
                           f"{s.replace('-', '_')}_peak_rss_mb={m['peak_rss_mb']:.0f}"
                           for s, m in med.items() if s.startswith("trl") and s != "trl+prealloc")
    print(f"RESULT name=train_throughput ratio={ratio:.3f} trl_best={best} lorasp_precision={precision.name} "
          f"lorasp_tokens_per_s={med['lorasp']['tokens_per_s']:.1f} lorasp_peak_rss_mb={med['lorasp']['peak_rss_mb']:.0f} "
          f"{trl_figures} rss_ratio={mem:.3f} steps={a.steps} "
          f"batch_size={a.batch_size} max_length={a.max_length} rank={a.rank} repeats={a.repeats} "
          f"lorasp_allocator={results['lorasp'][0]['allocator']} {environment_line()}"
          + (f" trl_prealloc_tokens_per_s={med['trl+prealloc']['tokens_per_s']:.1f} "
             f"ratio_same_allocator={med['lorasp']['tokens_per_s'] / med['trl+prealloc']['tokens_per_s']:.3f}"
             if "trl+prealloc" in med else ""))


if __name__ == "__main__":
    main()
