"""``lorasp eval``."""

from __future__ import annotations

import click

from .config import config_options
from .evaluate import EvalConfig


@click.command("eval")
@config_options(EvalConfig)
def eval_cmd(cfg: EvalConfig):
    """Evaluate a student (optionally with an adapter) on eval suites; batched greedy generation.

    \b
    lorasp eval --model smollm2-135m [--adapter DIR] --suite math --suite bbh \\
                [--mode icl_cot|zs_cot|icl_answer|zs_answer] [--limit N] --out DIR

    Suites: math (GSM8K test + MultiArith, ASDiv, SVAMP), bbh (27 BIG-Bench Hard tasks), arith (synthetic test
    split); any lorasp.evals plugin. --limit N evaluates a seeded random sample of N problems per task. Writes
    DIR/results.json (accuracy, n, mode, model and adapter fingerprints per task), DIR/report.md and every
    prediction with its extracted answer in DIR/predictions/<task>.jsonl.
    """
    import json

    from .evaluate import run_eval

    out = run_eval(cfg)
    doc = json.loads((out / "results.json").read_text())
    for name, r in doc["tasks"].items():
        click.echo(f"{name:45s} {r['mode']:10s} n={r['n']:<5d} accuracy={r['accuracy']:.1%}")
    for s, summ in doc["suites"].items():
        click.echo(f"suite {s}: macro accuracy {summ['macro_accuracy']:.1%} over {len(summ['tasks'])} task(s)")
    click.echo(f"wrote {out / 'results.json'}, {out / 'report.md'}, {out / 'predictions'}/")
    return 0
