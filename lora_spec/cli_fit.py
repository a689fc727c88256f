"""``lorasp fit``."""

from __future__ import annotations

import click

from .config import config_options
from .fit import FitConfig


@click.command("fit")
@config_options(FitConfig)
def fit_cmd(cfg: FitConfig):
    """Specialize a student: tune it (LoRA/DoRA on nf4/int8/none, or full) on teacher CoT in four formats.

    \b
    lorasp fit                                   # the embedded default: SmolLM2-135M on arith (gold), before/after
    lorasp fit --data runs/teach/gsm8k --quant nf4 --method lora --rank 16 --out adapters/gsm8k-qlora
    lorasp fit --dataset arith --teacher gold --student tiny-t5 --method dora --max-steps 20
    lorasp fit --out adapters/gsm8k-qlora --resume   # continue after a crash or Ctrl-C (same data order)

    Checkpoints go to <out>.checkpoints (atomic, every --save-every steps); the artifact at --out is PEFT's
    adapter files (or a full model for --method full) + lorasp.json + README.md. The same command runs
    distributed under `accelerate launch -m lora_spec.cli fit ...`.
    """
    from .fit import fit

    fit(cfg)
    return 0
