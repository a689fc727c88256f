"""``lorasp runs``: every teach run, fit and eval run under a folder, with its headline."""

from __future__ import annotations

import click

from ..runs import find_runs
from . import print_rows


@click.command("runs")
@click.argument("directory", type=click.Path(), default=".")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_cmd(directory, as_json):
    """Every teach run, fit and eval run under DIRECTORY (default: here), each with its headline figure.

    \b
    lorasp runs              # teach runs (samples, correct, accuracy), fits (before -> after), evals (accuracy)
    lorasp runs runs/ --json

    next: lorasp adapters show PATH (a fit); the eval's report.md; lorasp fit --data PATH (a teach run)
    """

    def cells(r: dict) -> list[str]:
        kind = "[red]error[/red]" if r["kind"] == "error" else r["kind"]
        if r.get("status") not in (None, "complete", "error"):
            kind += f" ({r['status']})"
        return [r["path"], kind, r["what"], r["headline"], str(r.get("created") or "")]

    return print_rows(find_runs(directory), as_json=as_json, empty=f"no teach runs, fits or evals under {directory}",
                      columns=("path", "kind", "what", "headline", "created"), cells=cells,
                      is_error=lambda r: r["kind"] == "error")
