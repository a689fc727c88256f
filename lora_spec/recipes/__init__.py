"""Shipped ``lorasp fit --config`` recipes: YAML files beside this module (also ``recipes/`` in the repository).

``lorasp recipes`` lists them; ``lorasp fit --config NAME`` (or ``--config recipe:NAME``) uses one by name, and a
flag still overrides any of its fields. A recipe's description is its first comment line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str


def _describe(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            return text.removeprefix("lorasp recipe:").strip()
        if line:
            break
    return ""


def list_recipes() -> list[Recipe]:
    return [Recipe(p.stem, p, _describe(p)) for p in sorted(HERE.glob("*.yaml"))]


def find(spec: str) -> Path | None:
    """The recipe file for ``NAME`` or ``recipe:NAME``; None when ``spec`` names no recipe."""
    name = spec.removeprefix("recipe:")
    if "/" in name or name.endswith((".yaml", ".yml")) and not spec.startswith("recipe:"):
        return None
    p = HERE / f"{name.removesuffix('.yaml')}.yaml"
    if p.exists():
        return p
    if spec.startswith("recipe:"):
        names = ", ".join(r.name for r in list_recipes()) or "none"
        raise ConfigError(f"--config {spec}: no such recipe (shipped recipes: {names}; see lorasp recipes)")
    return None
