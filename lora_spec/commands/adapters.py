"""``lorasp adapters list|show``: the lorasp artifacts under a folder, or one of them."""

from __future__ import annotations

import json

import click

from ..adapters.listing import listing, score_summary, show, summary_lines
from ..stats import fmt_acc
from . import print_rows


@click.group("adapters")
def adapters_group():
    """Inspect lorasp artifacts (adapters, merged and combined models).

    \b
    lorasp adapters list adapters/
    lorasp adapters show adapters/arith-lora
    """


@adapters_group.command("list")
@click.argument("directory", type=click.Path(), default=".")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def adapters_list(directory, as_json):
    """The artifacts under DIRECTORY: base, method, data, chosen checkpoint and headline scores.

    \b
    lorasp adapters list adapters/ [--json]

    next: lorasp adapters show PATH
    """

    def cells(r: dict) -> list[str]:
        if r.get("error"):
            return [r["path"], "[red]error[/red]", r["error"], "", "", "", "", "", ""]
        data = str(r.get("data") or "")
        if r.get("n_examples"):
            data += f" ({r['n_examples']})"
        return [r["path"], r["kind"], f"{r['base']} [{r['base_id']}]", str(r["quant"]), str(r["method"]), data,
                "" if r["chosen_step"] is None else str(r["chosen_step"]), r.get("before_after") or "",
                score_summary(r["scores"], intervals=r.get("intervals"))]

    return print_rows(listing(directory), as_json=as_json, empty=f"no lorasp artifacts under {directory}",
                      columns=("path", "kind", "base", "quant", "method", "data", "step", "before -> after",
                               "scores"), cells=cells, is_error=lambda r: bool(r.get("error")))


@adapters_group.command("show")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option("--full", is_flag=True, help="Print the whole manifest (loss history, held-out ids, ...) as YAML.")
def adapters_show(artifact, as_json, full):
    """One artifact on one screen: base, method, before -> after, data, formats, training, selection, vLLM check,
    files. --full prints the whole manifest, --json everything as JSON.

    \b
    lorasp adapters show adapters/arith-lora [--full | --json]

    next: lorasp eval --adapter ARTIFACT; lorasp report ARTIFACT
    """

    info = show(artifact)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return 0
    if not full:
        for line in summary_lines(info):
            click.echo(line)
        click.echo("(--full: the whole manifest; --json: everything as JSON)")
        return 0
    import yaml

    click.echo(f"# {info['path']}")
    if info.get("headline"):
        step = (info["manifest"].get("selection") or {}).get("chosen_step")
        click.echo(f"held-out scores of the chosen checkpoint (step {step}; 95% intervals):")
        for k, h in info["headline"].items():
            click.echo(f"  {k}: {100 * h['accuracy']:.1f}% [{100 * h['ci'][0]:.1f}, {100 * h['ci'][1]:.1f}] "
                       f"(n={h['n']})")
    for when, res in ((info["manifest"].get("before_after") or {}).items()):
        if when in ("before", "after") and isinstance(res, dict):
            click.echo(f"{when}: " + ", ".join(f"{t} {fmt_acc(r['correct'], r['n'])}" for t, r in res.items()
                                               if isinstance(r, dict) and isinstance(r.get("n"), int)
                                               and isinstance(r.get("correct"), int)))
    click.echo(yaml.safe_dump(info["manifest"], sort_keys=False, allow_unicode=True).rstrip())
    if "adapter_config" in info:
        click.echo("adapter_config (non-default fields):")
        for k, v in info["adapter_config"].items():
            click.echo(f"  {k}: {v}")
        probs = info["vllm_problems"]
        click.echo("vLLM: " + ("loads unchanged" if not probs else "PROBLEMS: " + "; ".join(probs)))
    click.echo("files: " + ", ".join(f"{k} ({v:,} B)" for k, v in info["files"].items()))
    return 0


