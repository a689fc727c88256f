"""``lorasp plugins`` and ``lorasp models``."""

from __future__ import annotations

import dataclasses
import json

import click

from .. import registry
from ..config import parse_kv
from ..errors import ConfigError
from ..paths import cache_dir
from ..recipes import list_recipes
from ..student import PRESET_VERSION, PRESETS


@click.group("plugins", invoke_without_command=True)
@click.option("--group", "groups", multiple=True, type=click.Choice(sorted(registry.GROUPS)),
              help="Only this group (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.pass_context
def plugins(ctx, groups, as_json):
    """List every installed plugin: group, name, distribution and a one-line description.

    A plugin that fails to import, or a name claimed by two distributions, is listed with its error and the
    command exits with status 1. `lorasp plugins show GROUP NAME` loads one plugin by name and shows it.
    """
    if ctx.invoked_subcommand is not None:
        return None
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


@plugins.command("show")
@click.argument("group", type=click.Choice(sorted(registry.GROUPS)))
@click.argument("name")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Constructor parameter (repeatable).")
@click.option("--split", default=None, help="Datasets: the split to preview (default: the first).")
@click.option("--first", "first", default=3, show_default=True, type=click.IntRange(0),
              help="Datasets: preview the first N problems of the split.")
def show(group, name, params, split, first):
    """Load one plugin by name and show it: a dataset's splits and first problems, an eval suite's tasks."""
    p = registry.info(group, name)
    obj = registry.create(group, name, **parse_kv(params, "--param"))
    click.echo(f"{p.group[:-1]} {p.name} from {p.dist} {p.dist_version} ({p.value})")
    desc = registry.describe(type(obj) if not isinstance(obj, type) else obj)
    if desc:
        click.echo(f"  {desc}")
    if group == "datasets":
        splits = list(obj.splits())
        click.echo(f"  splits: {', '.join(splits)}")
        sp = split or splits[0]
        for prob in obj.load(sp, limit=first):
            click.echo(json.dumps(dataclasses.asdict(prob), ensure_ascii=False))
    elif group == "evals":
        for t in obj.tasks():
            click.echo(json.dumps(dataclasses.asdict(t), ensure_ascii=False))
    else:
        fp = getattr(obj, "fingerprint", None)
        if callable(fp):
            click.echo(f"  fingerprint: {fp()}")
    return 0


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models(as_json):
    """List the student presets and whether each is already built in the cache."""

    rows = []
    for name, desc in PRESETS.items():
        d = cache_dir() / "models" / f"{name}-v{PRESET_VERSION[name]}"
        rows.append({"name": name, "description": desc, "cached": (d / "config.json").exists(), "path": str(d)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['name']:14s} {'cached ' if r['cached'] else 'not yet'}  {r['description']}")
    return 0


@click.group("recipes", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.pass_context
def recipes(ctx, as_json):
    """List the shipped fit recipes (tuned `lorasp fit --config` files).

    Use one by name, overriding any field with a flag:

      lorasp fit --config gsm8k-smollm2 --data runs/teach/gsm8k-l2 --out adapters/gsm8k

    `lorasp recipes show NAME` prints a recipe's YAML (copy it to start your own).
    """
    if ctx.invoked_subcommand is not None:
        return None

    rows = list_recipes()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "description": r.description, "path": str(r.path)} for r in rows],
                              indent=2))
        return None
    width = max((len(r.name) for r in rows), default=4)
    for r in rows:
        click.echo(f"{r.name:<{width}}  {r.description}")
    click.echo("\nnext: lorasp recipes show NAME, or lorasp fit --config NAME --data RUN --out DIR")
    return None


@recipes.command("show")
@click.argument("name")
def recipes_show(name):
    """Print one recipe's YAML."""

    found = {r.name: r for r in list_recipes()}
    r = found.get(name.removeprefix("recipe:").removesuffix(".yaml"))
    if r is None:
        raise ConfigError(f"recipes show: no recipe {name!r} (shipped: {', '.join(found) or 'none'})")
    click.echo(r.path.read_text(encoding="utf-8"), nl=False)
