"""``lorasp eval``."""

from __future__ import annotations

import json

import click

from ..compare import compare, render
from ..config import config_options
from ..evaluate import EvalConfig
from ..outputs import output_kind


@click.command("eval")
@click.option("--dry-run", is_flag=True, help="Say what would run (tasks, modes, problems, output directory) "
                                              "and exit; no model is loaded.")
@config_options(EvalConfig)
def eval_cmd(dry_run, cfg: EvalConfig):
    """Evaluate a student (optionally with an adapter) on eval suites; batched greedy generation.

    \b
    lorasp eval --model smollm2-135m [--adapter DIR] --suite math --suite bbh \\
                [--mode icl_cot|zs_cot|icl_answer|zs_answer] [--limit N [--seed S]] --out DIR

    Suites: math (GSM8K test + MultiArith, ASDiv, SVAMP), bbh (27 BIG-Bench Hard tasks), arith (synthetic test
    split); any lorasp.evals plugin. --limit N evaluates a seeded random sample of N problems per task (--seed S,
    default 0: the same problems as a fit's held-out set of that size and seed). Writes DIR/results.json
    (accuracy with its 95% Wilson interval, n, mode, model and adapter fingerprints per task), DIR/report.md and
    every prediction with its extracted answer in DIR/predictions/<task>.jsonl. Compare two runs with
    'lorasp compare A B'. With --adapter, every task is prompted in the adapter's main training format
    (lorasp.json) unless --mode says otherwise; --out defaults to runs/eval/<adapter or model name>. Accuracy is
    strict (the answer stated as "The answer is X"); the flexible score (else the last number) is printed beside it.

    next: lorasp report ADAPTER (its specialization report); lorasp generate --adapter NAME=ADAPTER --prompt ...
    """
    from ..evaluate import eval_plan, eval_result

    if dry_run:
        p = eval_plan(cfg)
        click.echo("dry run: no model is loaded, nothing is written")
        for n in p["notes"]:
            click.echo(f"note: {n}")
        click.echo(f"model: {p['model']}" + (f" + adapter {p['adapter']}" if p["adapter"] else ""))
        click.echo(f"precision: {p['precision']}")
        for t in p["tasks"]:
            click.echo(f"  {t['task']:45s} {t['mode']:10s} {t['problems']:5d} problems, up to {t['max_new_tokens']} "
                       f"new tokens each")
        click.echo(f"{p['problems']} problems in all, at most {p['max_new_tokens']:,} new tokens; writes "
                   f"{p['out']}/results.json, report.md, predictions/")
        est = p.get("estimate")
        if est:
            click.echo(f"time: at most ~{est['max_seconds'] / 60:.1f} min ({est['tokens_per_second']} generated "
                       f"tokens/s, {est['source']}, for this model here; most outputs stop earlier)")
        else:
            click.echo("time: no measurement yet for this model here (every eval records its tokens/s)")
        return 0

    res = eval_result(cfg)
    out, doc = res.out, res.doc
    from ..evaluate import ci_text

    for name, r in doc["tasks"].items():
        click.echo(f"{name:45s} {r['mode']:10s} n={r['n']:<5d} accuracy={r['accuracy']:.1%} "
                   f"95% CI {ci_text(r.get('ci'))} (flexible {r['flexible_accuracy']:.1%})")
    for s, summ in doc["suites"].items():
        click.echo(f"suite {s}: macro accuracy {summ['macro_accuracy']:.1%} 95% CI {ci_text(summ.get('macro_ci'))} "
                   f"over {len(summ['tasks'])} task(s), {summ['n']} problems "
                   f"(flexible {summ['flexible_macro_accuracy']:.1%})")
    click.echo("accuracy is strict (the answer stated as 'The answer is X'); flexible also takes the last number")
    click.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'predictions'}/")
    if cfg.adapter:
        if output_kind(cfg.adapter) in ("merged", "full"):  # a whole model: nothing to merge, it loads as --model
            click.echo(f"next: lorasp generate --model {cfg.adapter} --prompt \"...\"", err=True)
        else:
            click.echo(f"next: lorasp generate --adapter math={cfg.adapter} --prompt \"...\"   |   lorasp merge "
                       f"{cfg.adapter} --out DIR", err=True)
    return 0


@click.command("compare")
@click.argument("a", type=str)
@click.argument("b", type=str)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare_cmd(a: str, b: str, as_json: bool):
    """Compare two eval results (lorasp eval --out dirs or their results.json) on the same problems.

    \b
    lorasp compare runs/base runs/adapter

    Per task both ran: accuracy of A and B with 95% Wilson intervals, the change B - A in points with Newcombe's
    paired 95% interval, the exact McNemar p-value and "within noise" (p >= 0.05); per suite a macro summary.
    The two runs must have evaluated the same problems (same split, --limit and --seed): otherwise a one-line
    error names the task.
    """

    res = compare(a, b)
    click.echo(json.dumps(res, indent=1) if as_json else render(res), nl=as_json)
    return 0
