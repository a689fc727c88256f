"""``lorasp plugins`` and ``lorasp models``."""

from __future__ import annotations

import dataclasses
import json

import click

from . import registry


@click.command("plugins")
@click.option("--group", "groups", multiple=True, type=click.Choice(sorted(registry.GROUPS)),
              help="Only this group (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def plugins(groups, as_json):
    """List every installed plugin: group, name, distribution and a one-line description.

    A plugin that fails to import, or a name claimed by two distributions, is listed with its error and the
    command exits with status 1.
    """
    rows = registry.listing(list(groups) or None)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=None, show_lines=False)
        for col in ("group", "name", "distribution", "description"):
            table.add_column(col, overflow="fold")
        for r in rows:
            desc = f"[red]ERROR: {r.error}[/red]" if r.error else r.description
            table.add_row(r.group, r.name, f"{r.distribution} {r.version}", desc)
        Console(width=160).print(table)
    bad = [r for r in rows if r.error]
    for r in bad:
        click.echo(f"error: {r.group[:-1]} {r.name!r} from {r.distribution} {r.version}: {r.error}", err=True)
    return 1 if bad else 0


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json):
    """List the student presets and whether each is already built in the cache."""
    from .paths import cache_dir
    from .student import _PRESET_VERSION, PRESETS

    rows = []
    for name, desc in PRESETS.items():
        d = cache_dir() / "models" / f"{name}-v{_PRESET_VERSION[name]}"
        rows.append({"name": name, "description": desc, "cached": (d / "config.json").exists(), "path": str(d)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['name']:14s} {'cached ' if r['cached'] else 'not yet'}  {r['description']}")
    return 0
