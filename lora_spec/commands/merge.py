"""``lorasp merge`` (the stage and its ``MergeConfig``: :mod:`lora_spec.adapters.merge`)."""

from __future__ import annotations

import json

import click

from ..adapters.merge import MergeConfig
from ..config import config_options
from ..outputs import check_output
from . import quiet_transformers, say


@click.command("merge")
@click.argument("adapter", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON.")
@config_options(MergeConfig)
def merge_cmd(adapter, as_json, cfg: MergeConfig):
    """Merge ADAPTER into its base and write a full model that AutoModel*.from_pretrained loads.

    After merging, the written model is loaded back and compared with base+adapter (same base weights, same dtype)
    on a few prompts: the max logit difference and whether the greedy outputs are identical are printed. An
    adapter trained with the chat template gets a template whose default system message is training's.

    \b
    lorasp merge adapters/arith-lora --out merged/arith
    lorasp merge adapters/gsm8k-qlora --out merged/gsm8k --base dequantized --dtype bf16 --safe

    next: AutoModelForCausalLM.from_pretrained("OUT") anywhere, or lorasp eval --model OUT
    """

    # refused before transformers is even imported (merge() checks again for Python callers)
    check_output(cfg.out, "merge", overwrite=cfg.overwrite, inputs=[("ADAPTER", adapter), ("--model", cfg.model)])
    quiet_transformers()
    from ..adapters.merge import merge

    rep = merge(adapter, cfg.out, base=cfg.base, dtype=cfg.dtype, safe=cfg.safe,
                force_quantized=cfg.force_quantized, model=cfg.model, ignore_fingerprint=cfg.ignore_fingerprint,
                max_new_tokens=cfg.max_new_tokens, log=say, overwrite=cfg.overwrite, precision=cfg.precision)
    if as_json:
        click.echo(json.dumps(rep.as_dict(), indent=2))
        return 0
    click.echo(f"merged {adapter} into the {rep.base_mode} base weights ({rep.dtype}) -> {rep.out}")
    click.echo(f"parity vs base+adapter ({rep.n_prompts} prompts, {cfg.max_new_tokens} greedy tokens each):")
    click.echo(f"  {'max |dlogit|':>12}  greedy  prompt")
    for r in rep.rows:
        p = r.prompt.replace("\n", " ")
        click.echo(f"  {r.max_logit_diff:12.3g}  {'same' if r.greedy_equal else 'DIFF':>6}  {p[:60]}")
    click.echo(f"max logit diff {rep.max_logit_diff:.3g}; identical greedy outputs {rep.greedy_equal}/{rep.n_prompts}")
    click.echo(f"(for scale: the adapter itself moves the logits by up to {rep.adapter_effect:.3g})")
    if rep.max_logit_diff_vs_quantized is not None:
        click.echo(f"max prompt-logit diff vs the bitsandbytes-quantized base+adapter that training saw: "
                   f"{rep.max_logit_diff_vs_quantized:.3g} (includes bitsandbytes' own matmul rounding)")
    return 0

