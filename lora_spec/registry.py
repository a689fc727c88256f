"""Entry-point plugin discovery for ``lorasp.datasets``, ``lorasp.teachers`` and ``lorasp.evals``.

Built-in plugins are registered in lorasp's own ``pyproject.toml``, exactly like third-party ones. Nothing is
imported until a plugin is used. Unknown names get a "did you mean"; a name claimed by two distributions and a
plugin that fails to import are errors that name the plugin and its distribution(s); nothing is skipped silently.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .errors import PluginError, one_line
from .plugins.contracts import MISSING, satisfies

GROUPS = {
    "datasets": "lorasp.datasets",
    "teachers": "lorasp.teachers",
    "evals": "lorasp.evals",
}


@dataclass(frozen=True)
class PluginInfo:
    group: str  # short group name, e.g. "datasets"
    name: str
    value: str  # "module:attr"
    dist: str  # distribution name
    dist_version: str
    entry_point: Any = None

    @property
    def label(self) -> str:
        return f"{self.group[:-1]} {self.name!r} ({self.value}, distribution {self.dist} {self.dist_version})"


def _group(group: str) -> str:
    if group in GROUPS:
        return GROUPS[group]
    if group in GROUPS.values():
        return group
    raise PluginError(f"unknown plugin group {group!r} (expected one of {', '.join(GROUPS)})")


def _short(group: str) -> str:
    full = _group(group)
    return next(k for k, v in GROUPS.items() if v == full)


def _entries(group: str) -> dict[str, list[PluginInfo]]:
    """All claims on each name in a group, deduplicated by (distribution, target)."""
    full = _group(group)
    short = _short(group)
    claims: dict[str, list[PluginInfo]] = {}
    seen: set[tuple[str, str, str]] = set()
    for dist in metadata.distributions():
        try:
            eps = dist.entry_points
        except Exception:  # pragma: no cover - broken metadata
            continue
        dname = dist.metadata["Name"] or "?"
        for ep in eps:
            if ep.group != full:
                continue
            key = (ep.name, ep.value, dname.lower().replace("_", "-"))
            if key in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(key)
            claims.setdefault(ep.name, []).append(
                PluginInfo(short, ep.name, ep.value, dname, dist.version or "?", ep))
    return claims


def available(group: str) -> list[str]:
    return sorted(_entries(group))


def info(group: str, name: str) -> PluginInfo:
    claims = _entries(group)
    short = _short(group)
    if name not in claims:
        names = sorted(claims)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = f" (available: {', '.join(names)})" if names else " (none installed)"
        raise PluginError(f"unknown {short[:-1]} {name!r}{hint}{known if not close else ''}")
    found = claims[name]
    if len(found) > 1:
        who = " and ".join(f"{p.dist} {p.dist_version} ({p.value})" for p in found)
        raise PluginError(f"{short[:-1]} name {name!r} is claimed by two distributions: {who}; uninstall one of them")
    return found[0]


def resolve(group: str, name: str) -> Any:
    """Import the plugin's class or factory (lazily, on first use)."""
    p = info(group, name)
    try:
        return p.entry_point.load()
    except Exception as exc:  # any import-time failure is reported, never skipped
        raise PluginError(f"{p.label} failed to import: {type(exc).__name__}: {one_line(exc)}") from exc


def accepts(factory: Any) -> tuple[list[str], bool]:
    """The keyword parameters ``factory`` takes, and whether it takes ``**kwargs``; a factory whose signature
    cannot be read (a builtin) is taken to accept everything, so that nothing is checked against it."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return [], True
    return ([n for n in sig.parameters if n != "self"],
            any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()))


def offered_to(group: str, name: str, offered: dict[str, Any]) -> dict[str, Any]:
    """The part of ``offered`` (settings lorasp offers a plugin: ``data_dir``, a teacher's ``model`` and
    ``temperature``, an eval's ``limit``) that plugin ``name``'s factory takes; ``None`` values are not offered."""
    factory = resolve(group, name)
    if not callable(factory):
        return {}
    names, anykw = accepts(factory)
    return {k: v for k, v in offered.items() if v is not None and (anykw or k in names)}


def create(group: str, name: str, offered: dict[str, Any] | None = None, **params: Any) -> Any:
    """Resolve and instantiate a plugin: the one place that passes plugin arguments.

    ``params``: the user's own parameters (``--dataset-opt``, ``--teacher-opt``, a YAML ``params`` block); one the
    factory does not take is a one-line error naming the accepted ones. ``offered``: settings lorasp passes only
    when the factory's signature takes them (:func:`offered_to`); ``params`` win over them. The object created is
    checked against its group's contract (:mod:`lora_spec.plugins.contracts`)."""
    factory = resolve(group, name)
    if not callable(factory):
        return factory
    names, anykw = accepts(factory)
    if not anykw:
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise PluginError(f"{_short(group)[:-1]} {name!r} has no parameter {unknown[0]!r} "
                              f"(accepted: {', '.join(names) or 'none'})")
    obj = factory(**{**offered_to(group, name, offered or {}), **params})

    if not satisfies(_short(group), obj):
        raise PluginError(f"{_short(group)[:-1]} {name!r} {MISSING[_short(group)]}")
    return obj


def describe(obj: Any) -> str:
    """A plugin's one-line description: its ``description`` attribute or its docstring's first line."""
    desc = getattr(obj, "description", None)
    if isinstance(desc, str) and desc.strip():
        return one_line(desc)
    doc = inspect.getdoc(obj) or ""
    return one_line(doc.strip().splitlines()[0]) if doc.strip() else ""


@dataclass
class PluginRow:
    group: str
    name: str
    distribution: str
    version: str
    target: str
    description: str
    error: str | None = None


def listing(groups: list[str] | None = None) -> list[PluginRow]:
    """Every plugin of the given groups, imported to read its description. Problems are rows with ``error``."""
    rows: list[PluginRow] = []
    for g in groups or list(GROUPS):
        short = _short(g)
        for name, claims in sorted(_entries(g).items()):
            if len(claims) > 1:
                who = " and ".join(f"{p.dist} {p.dist_version}" for p in claims)
                for p in claims:
                    rows.append(PluginRow(short, name, p.dist, p.dist_version, p.value, "",
                                          f"name claimed by two distributions: {who}"))
                continue
            p = claims[0]
            try:
                desc, err = describe(p.entry_point.load()), None
            except Exception as exc:
                desc, err = "", f"failed to import: {type(exc).__name__}: {one_line(exc)}"
            rows.append(PluginRow(short, name, p.dist, p.dist_version, p.value, desc, err))
    return rows
