"""``lorasp fit``."""

from __future__ import annotations

import os

import click

from ..config import config_options
from ..fit import FitConfig
from ..memory import allocator_line


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def print_plan(p: dict) -> None:
    click.echo("dry run: nothing is trained or written")
    click.echo(f"data:        {p['source']}: {p['problems']} problems -> {p['rows']} training rows ("
               + ", ".join(f"{k} {v}" for k, v in p["rows_per_format"].items()) + ")")
    ln = p.get("lengths")
    if ln:
        fewer, cut = sum(ln["fewer_shots"].values()), sum(ln["cut"].values())
        click.echo(f"lengths:     tokens per row: median {ln['median']}, 95th percentile {ln['p95']}, longest "
                   f"{ln['longest']}; --max-length {ln['max_length']}: "
                   + (f"{fewer} in-context rows drop exemplars to fit ("
                      + ", ".join(f"{k} {v}" for k, v in ln["fewer_shots"].items()) + "), " if fewer else "")
                   + (f"{cut} {'row is' if cut == 1 else 'rows are'} cut ("
                      + ", ".join(f"{k} {v}" for k, v in ln["cut"].items()) + ")" if cut else "no row is cut"))
    click.echo(f"precision:   {p['precision']}")
    click.echo(f"steps:       {p['steps']} optimizer steps of {p['batch']}"
               + (f" ({p['epochs']:g} epoch(s))" if p.get("epochs") else ""))
    if p["held_out_evaluations"]:
        click.echo(f"evaluations: {p['held_out_evaluations']} (step 0, every {p['eval_every']} steps, the end) on "
                   + ", ".join(f"{k} {v}" for k, v in p["held_out_sets"].items()) + f"; select by {p['select_by']}")
    else:
        click.echo("evaluations: none (the last step is exported)")
    if p["before_after"]:
        click.echo(f"before/after: {p['before_after']} held-out test problems, scored before and after training")
    click.echo(f"writes:      {p['out']} (artifact), {p['checkpoints']} (checkpoints)"
               + (f", {p['teach_run']} (teach run)" if p.get("teach_run") else ""))
    est = p.get("estimate")
    if est:
        click.echo(f"time:        ~{_fmt_seconds(est['train_seconds'])} of training ({est['seconds_per_step']} s/step, "
                   f"{est['source']}, with the same student, quant, method and batch), plus evaluation")
    else:
        click.echo("time:        no measurement yet for this student, quant, method and batch on this machine: "
                   "a fit records its seconds per step (e.g. --max-steps 3) and later dry runs estimate from it")

    click.echo(f"memory:      {allocator_line()}")
    for n in p.get("notes") or []:
        click.echo(f"note:        {n}")


@click.command("fit")
@click.option("--dry-run", is_flag=True, help="Say what would run (rows per format, steps, evaluations, output "
                                              "paths, a time estimate) and exit; no model is loaded.")
@config_options(FitConfig)
def fit_cmd(dry_run, cfg: FitConfig):
    """Specialize a student: tune it (LoRA/DoRA on nf4/int8/none, or full) on teacher CoT in four formats.

    \b
    lorasp fit                                   # the embedded default: SmolLM2-135M on arith (gold), before/after
    lorasp fit --dry-run                         # what the quickstart would run, and for how long
    lorasp fit --data runs/teach/gsm8k --quant nf4 --method lora --rank 16 --out adapters/gsm8k-qlora
    lorasp fit --dataset arith --teacher gold --student tiny-t5 --method dora --max-steps 20
    lorasp fit --out adapters/gsm8k-qlora --resume   # continue after a crash or Ctrl-C (same data order)

    Checkpoints go to <out>.checkpoints (atomic, every --save-every steps); the artifact at --out is PEFT's
    adapter files (or a full model for --method full) + lorasp.json + README.md. The same command runs
    distributed under `accelerate launch -m lora_spec.cli fit ...`.

    next: lorasp eval --adapter OUT (scores it in its training prompt mode); lorasp generate --adapter NAME=OUT
    """
    if dry_run:
        from ..fit_plan import plan_fit

        print_plan(plan_fit(cfg))
        return 0
    from ..fit import fit

    res = fit(cfg)

    if os.environ.get("RANK", "0") == "0":  # once under accelerate launch
        click.echo(f"next: lorasp eval --adapter {res.out}   |   lorasp generate --adapter math={res.out} "
                   f"--prompt \"...\"   |   lorasp adapters show {res.out}", err=True)
    return 0
