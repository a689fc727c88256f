"""``lorasp report ARTIFACT``: re-render the specialization report (report.md + curves.png) from lorasp.json."""

from __future__ import annotations

from pathlib import Path

import click

from ..outputs import OutputError, output_kind


@click.command("report")
@click.argument("artifact", type=str)
@click.option("--out", type=str, default=None, help="Write the two files here instead of into the artifact.")
@click.option("--print/--no-print", "show", default=True, help="Print report.md to stdout. [default: print]")
def report(artifact: str, out: str | None, show: bool):
    """Re-render ARTIFACT's specialization report from the artifact alone (lorasp.json; for older artifacts the
    per-problem results come from heldout_predictions.jsonl).

    report.md holds the table of held-out scores per checkpoint with n and 95% intervals (step 0 = the base model,
    "before"; the last = "after"; the chosen checkpoint marked), paired comparisons on the same problems (before vs
    chosen/after, every checkpoint vs chosen: change in points, 95% interval, exact McNemar p, "within noise") and
    the evaluation time next to the training time; curves.png plots the in-distribution, out-of-distribution and
    generic accuracies against steps with shaded 95% bands, the chosen step marked.

    \b
    lorasp report adapters/arith-lora
    lorasp report adapters/arith-lora --out /tmp/report --no-print

    next: lorasp eval --adapter ARTIFACT (a full evaluation in its training prompt mode)
    """
    from ..report import write_report

    if out is not None:
        _check_report_out(out)
    md_path, png_path = write_report(artifact, out=out)
    if show:
        click.echo(md_path.read_text(encoding="utf-8"), nl=False)
    click.echo(f"wrote {md_path} and {png_path}", err=True)
    return 0


def _check_report_out(out: str) -> None:
    """``--out`` may be new, empty, an artifact (its report is re-rendered) or an earlier ``report --out``."""

    p = Path(out)
    kind = output_kind(p)
    if kind == "file":
        raise OutputError(f"--out {out}: exists and is not a directory; lorasp does not replace it")
    if kind not in (None, "empty", "adapter", "full", "merged", "combined") and \
            not {c.name for c in p.iterdir()} <= {"report.md", "curves.png"}:
        raise OutputError(f"--out {out}: a directory that is not a lorasp artifact or report; lorasp never writes "
                          f"into it (choose a new or empty directory)")
