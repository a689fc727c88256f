"""Run configs: a pydantic model per command, read from an optional YAML file, overridden by CLI flags.

Every field of a command's config model becomes a CLI flag (``rank`` -> ``--rank``, ``eval_every`` ->
``--eval-every``; booleans get ``--x/--no-x``; list fields may be repeated). Values from YAML and from flags go
through the same validation, so an unknown key, a wrong type or an out-of-range value is one line naming the key
(and the YAML line), with exit code 2.
"""

from __future__ import annotations

import functools
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Type, TypeVar, get_args, get_origin

import click
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import ConfigError, one_line
from .recipes import find
from .records import read_text

C = TypeVar("C", bound="RunConfig")

# teach/fit's --first N (was --limit N, which meant a seeded sample in eval and first-N here)
FIRST_MEANS = ("the first N problems of the split in file order, so a rerun with a larger N asks the teacher only "
               "for the new ones; --limit N (lorasp eval, held-out sets) is a seeded random sample instead")


class RunConfig(BaseModel):
    """Base of every command config: unknown keys are errors; values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    # old field name -> (new field name, what it means now): an old name is an error that names the new one,
    # never a silent alias (a renamed option usually changed meaning, or was renamed to stop meaning two things)
    renamed: ClassVar[dict[str, tuple[str, str]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _reject_renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old in cls.renamed:
                if old in data:
                    raise ConfigError(renamed_message(cls, old, old))
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)

    def resolved(self) -> "RunConfig":
        """The config with the defaults that depend on other fields filled in (what will run); commands whose
        defaults depend on nothing return themselves. ``--print-config`` prints this."""
        return self


def renamed_message(cls: Type["RunConfig"], old: str, where: str) -> str:
    new, meaning = cls.renamed[old]
    return f"{where}: {old!r} is now {new!r} ({_flag(new)}): {meaning}"


def _yaml_lines(text: str) -> dict[str, int]:
    """Top-level key -> 1-based line number, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, _v in node.value:
            if isinstance(k, yaml.ScalarNode):
                lines[str(k.value)] = k.start_mark.line + 1
    return lines


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def describe_error(err: dict, source: dict[str, str], descriptions: dict[str, str] | None = None) -> str:
    loc = err.get("loc") or ()
    key = str(loc[0]) if loc else "?"
    where = source.get(key, "config")
    path = ".".join(str(x) for x in loc)
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        return f"{where}: unknown key {path!r}"
    if typ == "missing" and len(loc) == 1:
        desc = (descriptions or {}).get(key)
        return f"missing required option {_flag(key)}" + (f" ({desc.rstrip('.')})" if desc else "")
    got = err.get("input")
    msg = err.get("msg", "invalid value")
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{where}: field {path!r}: {msg}, got {got!r}"


def build(cls: Type[C], yaml_path: str | None, overrides: dict[str, Any]) -> C:
    """Merge the YAML file (if any) and the CLI overrides into a validated config."""
    data: dict[str, Any] = {}
    source: dict[str, str] = {}
    if yaml_path:
        p = Path(yaml_path)
        if not p.exists() or yaml_path.startswith("recipe:"):
            recipe = find(yaml_path)  # a shipped recipe by name (lorasp recipes)
            if recipe is None:
                raise ConfigError(f"{p}: config file not found (nor a shipped recipe: see lorasp recipes)")
            p = recipe

        text = read_text(p, "a YAML config file")
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{line}: invalid YAML ({one_line(getattr(exc, 'problem', exc))})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of keys to values at the top level")
        lines = _yaml_lines(text)
        for k, v in loaded.items():
            k = str(k).replace("-", "_")
            data[k] = v
            source[k] = f"{p}:{lines.get(str(k), lines.get(str(k).replace('_', '-'), 1))}"
    for k, v in overrides.items():
        data[k] = v
        source[k] = _flag(k)
    for old in cls.renamed:
        if old in data:
            raise ConfigError(renamed_message(cls, old, source[old]))
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        descriptions = {n: f.description for n, f in cls.model_fields.items() if f.description}
        raise ConfigError(describe_error(exc.errors()[0], source, descriptions)) from None


def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) is typing.Union or str(get_origin(tp)) == "<class 'types.UnionType'>":
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_list(tp: Any) -> bool:
    return get_origin(_unwrap_optional(tp)) in (list, tuple)


def _is_bool(tp: Any) -> bool:
    return _unwrap_optional(tp) is bool


def _metavar(tp: Any) -> str:
    """What ``--help`` shows for a value: INTEGER, FLOAT, [a|b|c] or TEXT."""
    if get_origin(tp) is Literal:
        return "[" + "|".join(map(str, get_args(tp))) + "]"
    if tp is bool:
        return "BOOLEAN"
    if tp is int:
        return "INTEGER"
    if tp is float:
        return "FLOAT"
    if get_origin(tp) is typing.Union or str(get_origin(tp)) == "<class 'types.UnionType'>":
        args = [a for a in get_args(tp) if a is not type(None)]
        if args and all(a in (int, float) for a in args):
            return "FLOAT" if float in args else "INTEGER"
    return "TEXT"


def config_options(cls: Type[RunConfig], *, skip: tuple[str, ...] = ()) -> Callable:
    """Decorate a click command with ``--config``, ``--print-config`` and one flag per field of ``cls``.

    The command function receives ``cfg`` (a validated ``cls``) instead of the individual flags.
    """

    def decorator(fn: Callable) -> Callable:
        # the command's own fields first (fit's --student, --data ...), then inherited ones (held-out options)
        own = [n for n in cls.model_fields if n in cls.__dict__.get("__annotations__", {})]
        field_names = [n for n in own + [n for n in cls.model_fields if n not in own] if n not in skip]

        @functools.wraps(fn)
        def wrapper(*args, config: str | None = None, print_config: bool = False, **kwargs):
            overrides = {}
            for n in field_names + list(cls.renamed):
                v = kwargs.pop(n, None)
                if v is None or (isinstance(v, tuple) and len(v) == 0):
                    continue
                overrides[n] = list(v) if isinstance(v, tuple) else v
            cfg = build(cls, config, overrides)
            if print_config:
                click.echo(cfg.resolved().to_yaml(), nl=False)
                return None
            return fn(*args, cfg=cfg, **kwargs)

        cmd = wrapper
        for old in cls.renamed:  # hidden: only there to answer the old flag with the new one's name
            cmd = click.option(_flag(old), old, default=None, type=str, hidden=True)(cmd)
        for n in reversed(field_names):
            f = cls.model_fields[n]
            ann = f.annotation
            help_text = f.description or ""
            base = _unwrap_optional(ann)
            default = f.default
            if default is not None and not callable(default) and str(default) != "PydanticUndefined":
                help_text += f" [default: {default}]"
            if _is_bool(ann):
                opt = click.option(f"{_flag(n)}/--no-{n.replace('_', '-')}", n, default=None, help=help_text)
            elif _is_list(ann):
                opt = click.option(_flag(n), n, multiple=True, default=None, help=help_text + " (repeatable)")
            else:  # parsed by pydantic (one error style for flags and YAML); the metavar shows the type
                opt = click.option(_flag(n), n, default=None, type=str, help=help_text, metavar=_metavar(base))
            cmd = opt(cmd)
        cmd = click.option("--print-config", is_flag=True, help="Print the resolved config (every default filled "
                                                                "in: the values that will run) as YAML and exit.")(cmd)
        cmd = click.option("--config", "config", type=str, default=None,
                           help="YAML file with any of this command's fields; flags override it.")(cmd)
        return cmd

    return decorator


def parse_kv(items: list[str] | tuple[str, ...], flag: str) -> dict[str, Any]:
    """``["seed=3", "task=navigate"]`` -> ``{"seed": 3, "task": "navigate"}`` for plugin-parameter flags.

    Values are read as YAML scalars (numbers, booleans, lists); keys may use ``-`` or ``_``. One parser serves
    every ``--*-opt``/``--param`` flag, so the same text always means the same parameters.
    """
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            out[k.strip().replace("-", "_")] = v
    return out
