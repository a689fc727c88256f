"""What the generation benchmarks share: their common options and the real student on seeded GSM8K prompts.

``eval_throughput.py`` and ``kv_buffers.py`` both decode GSM8K test questions (seeded sample, seed 0) in one prompt
mode with the real SmolLM2-135M-Instruct (fp32, CPU); only what they compare differs.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any


def add_common_args(ap: argparse.ArgumentParser, *, n: int, max_new_tokens: int, batch_size: int,
                    mode: str) -> None:
    ap.add_argument("--n", type=int, default=n, help="GSM8K test questions (seeded sample, seed 0)")
    ap.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default=mode)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (both sides)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="lorasp's side (eval_throughput); the baseline stays fp32")


@dataclass
class Setup:
    model: Any
    tokenizer: Any
    prompts: list[str]
    stops: list[str]


def gsm8k_setup(args: argparse.Namespace) -> Setup:
    """Load the student (offline) and build ``args.n`` GSM8K test prompts in ``args.mode``, as ``lorasp eval`` does."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lora_spec.eval_engine import task_problems
    from lora_spec.prompts import build_prompt, stop_sequences, uses_chat
    from lora_spec.records import EvalTask
    from lora_spec.student import load_student

    st = load_student(args.model)
    problems = task_problems(EvalTask(name="gsm8k", dataset="gsm8k", split="test", limit=args.n))
    prompts = [build_prompt(p, args.mode, st.tokenizer) for p in problems]
    return Setup(st.model, st.tokenizer, prompts, list(stop_sequences(args.mode, uses_chat(st.tokenizer))))
