"""The GPU path in one short run: lorasp's fit (bf16 LoRA and QLoRA-nf4), its eval engine and merge parity.

On a CUDA machine (torch, transformers, peft, accelerate, bitsandbytes installed; nothing downloaded) it builds a
randomly initialised model with the shape of Llama-3.2-1B (hidden 2048, 16 layers, 32 heads / 8 KV heads, MLP 8192)
and SmolLM2's tokenizer (49,152 pieces, bundled with lorasp's smollm2-135m preset), about 1.0B parameters, saves it,
and runs lorasp's own stages on it:

1. ``fit`` with LoRA r=16 on all linear layers at ``--precision auto`` (bf16 on a GPU that has it), and again on an
   NF4-quantized base (QLoRA): tokens/s, peak GPU memory, MFU (LoRA: ~4 x parameters FLOPs per token, against the
   card's dense bf16 peak where the card is known);
2. the eval engine (``generation.generate``: continuous batching, KV buffers) on 64 prompts: generated tokens/s;
3. ``merge`` of the LoRA adapter with its parity check (max logit difference, identical greedy continuations).

Without a GPU (or with ``--tiny``) the same stages run on the ``tiny-llama`` test model on CPU, so CI keeps the
script working (``tests/test_benchmarks.py``). At most ~8 minutes on one H100; a few seconds on CPU with --tiny.

    python benchmarks/gpu_check.py [--tiny] [--steps 20] [--out DIR]

Last line: ``RESULT name=gpu_check ratio=<QLoRA tokens/s / bf16 LoRA tokens/s> ...`` (with every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# dense bf16 tensor-core peaks (TFLOP/s, no sparsity) of the cards this check is likely to meet
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def build_model(out: Path, tiny: bool) -> Path:
    """A randomly initialised causal LM of a real shape, saved with a real tokenizer (no download)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lora_spec.student import preset_path

    if tiny:
        return preset_path("tiny-llama")
    tok = AutoTokenizer.from_pretrained(str(preset_path("smollm2-135m")))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                      rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    model.to(torch.bfloat16).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _peak_gpu_gb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _card_peak() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    return name, next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run_fit(student: Path, out: Path, *, quant: str, steps: int) -> dict:
    import torch

    from lora_spec.fit import fit

    _reset_peak()
    t0 = time.perf_counter()
    res = fit(student=str(student), dataset="arith", teacher="gold", first=max(64, steps * 8), max_steps=steps,
              batch_size=8, max_length=256, quant=quant, precision="auto", tracker="none", progress=False,
              out=str(out), before_after=0, in_dist="none", ood="none", generic="none", save_every=0,
              overwrite=True)
    wall = time.perf_counter() - t0
    tr = res.manifest["train"]
    params = sum(p.numel() for p in res.model.parameters())
    name, peak = _card_peak()
    flops = 4.0 * params * tr["tokens_per_second"]
    del res
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"quant": quant, "tokens_per_s": tr["tokens_per_second"], "steps": tr["steps"],
            "train_seconds": tr["train_seconds"], "wall_seconds": round(wall, 1), "peak_gpu_gb": _peak_gpu_gb(),
            "params": params, "mfu": round(flops / (peak * 1e12), 4) if peak else None, "card": name,
            "precision": json.loads((out / "lorasp.json").read_text())["precision"]["used"]}


def run_eval(adapter: Path, n: int) -> dict:
    from lora_spec.adapters.artifact import load_adapter
    from lora_spec.generation import generate
    from lora_spec.precision import resolve_precision

    precision = resolve_precision("auto")
    st = load_adapter(adapter, dtype=precision.dtype, device="cuda" if _gpu() else None)
    prompts = [f"Question: {i} apples and {i + 3} pears. How many fruits?\nAnswer:" for i in range(n)]
    _reset_peak()
    stats: dict = {}
    generate(st.model, st.tokenizer, prompts, max_new_tokens=64, batch_size=n, progress=False, stats=stats)
    return {"prompts": n, "generated_tokens": stats["generated_tokens"], "seconds": round(stats["seconds"], 2),
            "tokens_per_s": round(stats["generated_tokens"] / max(stats["seconds"], 1e-9), 1),
            "peak_gpu_gb": _peak_gpu_gb(), "precision": st.precision}


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def run_merge(adapter: Path, out: Path) -> dict:
    from lora_spec.adapters.merge import merge

    rep = merge(adapter, out, overwrite=True, max_new_tokens=8)
    return {"max_logit_diff": rep.max_logit_diff, "greedy_equal": f"{rep.greedy_equal}/{rep.n_prompts}",
            "dtype": rep.dtype}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny-llama test model on CPU (what CI runs)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per fit (default 20; --tiny: 2)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--out", default=None, help="keep the outputs here (default: a temporary directory)")
    a = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    tiny = a.tiny or not torch.cuda.is_available()
    if tiny and not a.tiny:
        print("no CUDA device: running the CPU check with the tiny-llama test model (--tiny)", flush=True)
    steps = a.steps or (2 if tiny else 20)
    from lora_spec.precision import resolve_precision

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_precision import environment_line

    card, peak = _card_peak()
    print(f"environment: {environment_line()} card={card.replace(' ', '_')} "
          f"precision={resolve_precision('auto').name}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.out) if a.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        student = build_model(root / "model", tiny)
        figures: dict = {}
        figures["lora"] = run_fit(student, root / "lora", quant="none", steps=steps)
        print(f"lora:  {json.dumps(figures['lora'])}", flush=True)
        figures["qlora"] = run_fit(student, root / "qlora", quant="nf4", steps=steps)
        print(f"qlora: {json.dumps(figures['qlora'])}", flush=True)
        figures["eval"] = run_eval(root / "lora", a.prompts)
        print(f"eval:  {json.dumps(figures['eval'])}", flush=True)
        figures["merge"] = run_merge(root / "lora", root / "merged")
        print(f"merge: {json.dumps(figures['merge'])}", flush=True)
        total = time.perf_counter() - t0
    lo, q, ev, mg = figures["lora"], figures["qlora"], figures["eval"], figures["merge"]
    print(f"RESULT name=gpu_check ratio={q['tokens_per_s'] / lo['tokens_per_s']:.3f} "
          f"lora_tokens_per_s={lo['tokens_per_s']} lora_peak_gpu_gb={lo['peak_gpu_gb']} lora_mfu={lo['mfu']} "
          f"qlora_tokens_per_s={q['tokens_per_s']} qlora_peak_gpu_gb={q['peak_gpu_gb']} qlora_mfu={q['mfu']} "
          f"eval_tokens_per_s={ev['tokens_per_s']} eval_prompts={ev['prompts']} "
          f"merge_max_logit_diff={mg['max_logit_diff']:.3g} merge_greedy_equal={mg['greedy_equal']} "
          f"params={lo['params']} precision={lo['precision']} steps={steps} total_seconds={total:.0f} "
          f"card={card.replace(' ', '_')} {environment_line()}")


if __name__ == "__main__":
    main()
