"""Training precision and the loss's head: lorasp's trainer on the quickstart's shape in several configurations.

Every configuration trains SmolLM2-135M-Instruct with LoRA r=16 on all linear layers through lorasp's own loop
(``trainer.train``), on the quickstart's rows (512 arith problems with gold rationales, the default format mixture,
batch 8, passes of at most 512 tokens, max length 512), seed 0, in a fresh child process each (so peak RSS is its
own). What differs is the precision and how the loss reaches the vocabulary:

- ``fp32_full_logits``: fp32, the plain Hugging Face loss (``model(...).logits`` at every position, then
  cross-entropy): the ``[batch, length, vocab]`` logits exist.
- ``fp32_labelled``: fp32, the head applied at labelled positions only, in one piece (lorasp's loss before the
  chunked one: ``[labels, vocab]`` logits, their log-softmax and its gradient exist).
- ``fp32``: fp32 with the chunked fused loss (lorasp now).
- ``bf16_labelled`` / ``bf16``: the same two losses with the frozen base in bf16 under autocast (fp32 LoRA weights).
- ``auto``: ``--precision auto`` on this machine (the chunked loss).

bf16 configurations run only on a CPU with native bf16 matrix units (AMX/AVX512-BF16) or a GPU, unless ``--force-bf16``:
elsewhere they are emulated and many times slower than fp32, and ``auto`` picks fp32 (said in the output).

Measured per configuration: median tokens/s over the optimizer steps after the first (non-padding tokens of the
step / its seconds), peak RSS, and the loss of every step (printed side by side: same data, same seed).

    python benchmarks/train_precision.py [--steps 8] [--repeats 2] [--threads N] [--configs fp32_labelled,fp32,auto]

Last line: ``RESULT name=train_precision ratio=<auto tokens/s / fp32_labelled tokens/s> ...`` (``fp32_labelled`` is
the fp32 path lorasp had before the chunked loss and --precision).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {  # name -> (precision, loss)
    "fp32_full_logits": ("fp32", "full_logits"),
    "fp32_labelled": ("fp32", "labelled"),
    "fp32": ("fp32", "chunked"),
    "bf16_labelled": ("bf16", "labelled"),
    "bf16": ("bf16", "chunked"),
    "auto": ("auto", "chunked"),
}


def environment_line() -> str:
    """CPU model, native bf16 units, threads, torch version, date: the conditions a figure is measured under."""
    import datetime

    import torch

    from lora_spec.precision import cpu_flags, native_bf16_units

    model = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    simd = "avx512" if "avx512f" in flags else ("avx2" if "avx2" in flags else "other")
    return (f"cpu={model.replace(' ', '_')} simd={simd} native_bf16={native_bf16_units() or 'none'} "
            f"threads={torch.get_num_threads()} torch={torch.__version__} date={datetime.date.today().isoformat()}")


def quickstart_examples(tokenizer, n: int = 512):
    """The quickstart's training rows: arith train problems with their gold rationales, default mixture."""
    from lora_spec import formats as F
    from lora_spec.fit_config import FitConfig
    from lora_spec.teach import load_run, teach

    cfg = FitConfig()
    with tempfile.TemporaryDirectory() as d:
        run = teach(dataset="arith", split="train", first=n, teacher="gold", samples=1, out=f"{d}/arith",
                    progress=False)
        problems, samples = load_run(run)
    items = F.items_from_run(problems, samples)
    return F.build_examples(items, F.parse_mixture(cfg.formats), tokenizer, n_shots=cfg.n_shots, seed=cfg.seed,
                            chat=cfg.chat, max_length=cfg.max_length, kind="causal")


def _labelled_loss(model, batch, *, kind, loss_spec="sample"):
    """lorasp's loss before the chunked one: the head on labelled positions in one piece."""
    import torch.nn.functional as F

    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    tgt = batch["labels"][:, 1:]
    sel = tgt != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][sel]).float()
    return F.cross_entropy(logits, tgt[sel], reduction="sum"), int(sel.sum())


def _full_logits_loss(model, batch, *, kind, loss_spec="sample"):
    """The plain Hugging Face way: logits at every position, then the shifted cross-entropy."""
    from lora_spec.losses import token_nll

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return token_nll(out.logits, batch["labels"], causal=True)


def run_one(a) -> dict:
    import torch

    from lora_spec import trainer
    from lora_spec.adapters.peft_setup import MethodSpec, apply_method
    from lora_spec.precision import resolve_precision
    from lora_spec.student import load_student

    precision_name, loss = CONFIGS[a.config]
    precision = resolve_precision(precision_name)
    if loss == "labelled":
        trainer.batch_loss = _labelled_loss
    elif loss == "full_logits":
        trainer.batch_loss = _full_logits_loss
    torch.manual_seed(0)
    st = load_student("smollm2-135m", dtype=precision.dtype)
    model = apply_method(st, MethodSpec("lora", rank=16, alpha=32, dropout=0.0))
    examples = quickstart_examples(st.tokenizer)
    marks: list[tuple[float, int, float]] = []

    def on_step(row):
        marks.append((time.perf_counter(), row["tokens"], row["loss"]))

    with tempfile.TemporaryDirectory() as d:
        trainer.train(model, st.tokenizer, examples, kind="causal", ckpt_dir=d, on_step=on_step,
                      args=trainer.TrainArgs(max_steps=a.steps, batch_size=8, lr=1e-3, warmup=0, max_length=512,
                                             micro_batch_tokens=512, save_every=0, progress=False, tracker="none",
                                             mixed_precision=precision.mixed_precision))
    rates = [marks[i][1] / (marks[i][0] - marks[i - 1][0]) for i in range(1, len(marks))]
    return {"config": a.config, "precision": precision.name, "loss": loss,
            "tokens_per_s": statistics.median(rates) if rates else 0.0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "losses": [m[2] for m in marks]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS))
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configurations to run")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--force-bf16", action="store_true",
                    help="run the bf16 configurations even on a CPU without native bf16 units (very slow there)")
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.config:
        print("JSON " + json.dumps(run_one(a)), flush=True)
        return
    from lora_spec.precision import native_bf16_units, resolve_precision

    auto = resolve_precision("auto")
    print(f"environment: {environment_line()}", flush=True)
    print(f"auto precision here: {auto.line()}", flush=True)
    configs = [c for c in a.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        sys.exit(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    native = native_bf16_units() is not None or auto.name == "bf16"
    if not native and not a.force_bf16:
        skipped = [c for c in configs if CONFIGS[c][0] == "bf16"]
        configs = [c for c in configs if c not in skipped]
        if skipped:
            print(f"skipped {', '.join(skipped)}: this CPU has no native bf16 matrix units, where bf16 is emulated "
                  "and many times slower than fp32 (--force-bf16 runs them anyway)", flush=True)
    results: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(a.repeats):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            p = subprocess.run([sys.executable, __file__, "--config", c, "--steps", str(a.steps)]
                               + (["--threads", str(a.threads)] if a.threads else []),
                               capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON ")]
            if p.returncode != 0 or not line:
                sys.exit(f"{c} failed:\n{p.stderr[-3000:]}")
            res = json.loads(line[-1][5:])
            results[c].append(res)
            print(f"run {r + 1} {c:17s}: {res['tokens_per_s']:7.1f} tokens/s, peak RSS {res['peak_rss_mb']:6.0f} MB",
                  flush=True)
    med = {c: {k: statistics.median(x[k] for x in v) for k in ("tokens_per_s", "peak_rss_mb")}
           for c, v in results.items()}
    print("loss per step (first run of each configuration):")
    print("step " + " ".join(f"{c:>17s}" for c in configs))
    for i in range(a.steps):
        print(f"{i + 1:4d} " + " ".join(f"{results[c][0]['losses'][i]:17.4f}" for c in configs))
    base = med.get("fp32_labelled")
    top = med.get("auto")
    ratio = top["tokens_per_s"] / base["tokens_per_s"] if base and top else float("nan")
    figures = " ".join(f"{c}_tokens_per_s={m['tokens_per_s']:.1f} {c}_peak_rss_mb={m['peak_rss_mb']:.0f}"
                       for c, m in med.items())
    print(f"RESULT name=train_precision ratio={ratio:.3f} auto={auto.name} {figures} steps={a.steps} "
          f"repeats={a.repeats} {environment_line()}")


if __name__ == "__main__":
    main()
