"""``lorasp combine`` (the stage and its ``CombineConfig``: :mod:`lora_spec.adapters.combine`)."""

from __future__ import annotations

import click

from ..adapters.combine import CombineConfig
from ..config import config_options
from ..outputs import check_output
from . import quiet_transformers


@click.command("combine")
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@config_options(CombineConfig)
def combine_cmd(adapters, cfg: CombineConfig):
    """Weighted combination of ADAPTERS (same base) through peft; the manifest records the parents.

    \b
    lorasp combine adapters/arith adapters/gsm8k --weights 0.7,0.3 --how cat --out adapters/mix
    lorasp combine adapters/a adapters/b --how svd --svd-rank 16 --out adapters/ab16

    next: lorasp eval --adapter OUT
    """
    from ..adapters.combine import combine, parse_weights

    check_output(cfg.out, "combine", overwrite=cfg.overwrite, inputs=[("ADAPTER", a) for a in adapters]
                 + [("--model", cfg.model)])  # before transformers is even imported (combine() checks again)
    if len(adapters) >= 2:
        parse_weights(cfg.weights, len(adapters))  # a bad --weights is reported before anything is imported
    quiet_transformers()

    m = combine(list(adapters), cfg.out, weights=cfg.weights, how=cfg.how, svd_rank=cfg.svd_rank,
                model=cfg.model, ignore_fingerprint=cfg.ignore_fingerprint, overwrite=cfg.overwrite)
    parents = ", ".join(f"{p['path']} x {p['weight']:g}" for p in m["parents"])
    click.echo(f"combined ({cfg.how}, r={m['peft']['r']}) {parents} -> {cfg.out}")
    return 0

