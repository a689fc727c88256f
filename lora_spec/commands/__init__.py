"""One module per ``lorasp`` command (``lora_spec/cli.py`` is the entry point: it imports a command's module only
when that command runs, so ``lorasp --help`` stays fast).

Each command only parses its flags into the config of its stage (``TeachConfig`` in teach.py, ``FitConfig`` in
fit.py, ``EvalConfig`` in evaluate.py, ``MergeConfig`` in adapters/merge.py, ``GenerateConfig`` in
adapters/swap.py, ``CombineConfig`` in adapters/combine.py), calls the stage and prints the result object the stage
returns. This module holds what the commands share.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any, Callable, Sequence

import click


def quiet_transformers() -> None:
    """No progress bars, deprecation chatter or backend notices on the console: the commands print their own
    progress, and stderr keeps only lorasp's ``warning:``/``error:`` lines (``LORASP_DEBUG=1`` keeps everything)."""

    if os.environ.get("LORASP_DEBUG"):
        return
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:  # pragma: no cover - transformers missing is reported by the command itself
        pass


def say(msg: str) -> None:
    click.echo(msg, err=True)



def print_rows(rows: list[dict[str, Any]], *, as_json: bool, empty: str, columns: Sequence[str],
               cells: Callable[[dict[str, Any]], Sequence[str]], is_error: Callable[[dict[str, Any]], bool]) -> int:
    """What the list commands (``lorasp adapters list``, ``lorasp runs``) share: the rows as JSON (``--json``),
    ``empty`` when there are none, else a table with ``columns`` (``cells(row)`` per row). Exit status 1 when a row
    is an error (``is_error``)."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        click.echo(empty)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*cells(r))
    Console(width=160, file=sys.stdout).print(table)
    return 1 if any(is_error(r) for r in rows) else 0
