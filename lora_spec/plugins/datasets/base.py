"""Shared machinery of the built-in dataset plugins: locating the canonical files, Hub fallback, limits."""

from __future__ import annotations

import json
import os
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ...errors import DataError, one_line
from ...paths import data_dir as _env_data_dir
from ...records import Problem, read_text


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


class BuiltinDataset:
    """Base of the built-in datasets: ``name``, ``splits()``, ``load(split, limit=None)``."""

    name = "dataset"
    description = ""
    _splits: tuple[str, ...] = ("test",)
    # relative path (in the layout of shared/data) of the file behind each split
    _files: dict[str, str] = {}
    # (hub dataset id, config name or None, hub split) per split, or None when there is no Hub copy
    _hub: dict[str, tuple[str, str | None, str]] = {}

    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir) if data_dir else _env_data_dir()

    def splits(self) -> list[str]:
        return list(self._splits)

    def _check_split(self, split: str) -> None:
        if split not in self._splits:
            raise DataError(f"dataset {self.name!r} has no split {split!r} (splits: {', '.join(self._splits)})")

    def load(self, split: str = "test", limit: int | None = None) -> Iterator[Problem]:
        self._check_split(split)
        it = self._iter(split)
        return islice(it, limit) if limit is not None else it

    def _iter(self, split: str) -> Iterator[Problem]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __len__(self) -> int:  # convenient, not part of the interface
        return sum(1 for _ in self.load(self._splits[-1]))

    # ------------------------------------------------------------------ locating files

    def local_file(self, rel: str) -> Path | None:
        """``<data_dir>/<rel>`` if it exists, else ``None``."""
        if self.data_dir is None:
            return None
        p = self.data_dir / rel
        return p if p.exists() else None

    def source(self, split: str, loader: Callable[[Path], Iterable[Problem]],
               hub_rows: Callable[[Iterable[dict], str], Iterable[Problem]] | None = None) -> Iterator[Problem]:
        """Problems of ``split`` from the local file, else from the Hub, else a clear error."""
        rel = self._files[split]
        p = self.local_file(rel)
        if p is not None:
            yield from loader(p)
            return
        hub = self._hub.get(split)
        where = (f"{self.data_dir / rel}" if self.data_dir is not None
                 else f"<no data directory: neither --data-dir nor LORASP_DATA_DIR is set>/{rel}")
        if hub is None or hub_rows is None:
            raise DataError(f"{self.name}: {where} not found; point lorasp at a directory in the layout of "
                            f"shared/data with --data-dir or LORASP_DATA_DIR")
        if _offline():
            raise DataError(f"{self.name}: {where} not found, and the Hugging Face Hub is off (HF_*_OFFLINE is set); "
                            f"point lorasp at the files with --data-dir or LORASP_DATA_DIR, or go online to use "
                            f"{hub[0]!r}")
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise DataError(f"{self.name}: {where} not found, and the 'datasets' package is not installed for the "
                            f"Hub copy {hub[0]!r} (pip install 'lorasp[hub]'); or set --data-dir / LORASP_DATA_DIR"
                            ) from None
        try:
            from datasets import load_dataset

            ds = load_dataset(hub[0], hub[1], split=hub[2]) if hub[1] else load_dataset(hub[0], split=hub[2])
        except Exception as exc:
            raise DataError(f"{self.name}: {where} not found, and the Hub copy {hub[0]!r} could not be loaded "
                            f"({type(exc).__name__}: {one_line(exc)[:200]}); set --data-dir or LORASP_DATA_DIR"
                            ) from None
        yield from hub_rows(ds, f"hf:{hub[0]}")


def require(obj: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    """``obj[key]`` checked for type; a ``DataError`` naming ``where`` and the field otherwise."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    v = obj[key]
    if not isinstance(v, typ):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise DataError(f"{where}: field {key!r} must be {names}, got {type(v).__name__}")
    return v


def json_array_with_lines(path: Path) -> list[tuple[int, Any]]:
    """Parse a file holding one JSON array; return ``(line, element)`` pairs so errors can name file:line."""

    text = read_text(path, "a JSON file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None
    if isinstance(data, dict) and "examples" in data:
        data = data["examples"]
    if not isinstance(data, list):
        raise DataError(f"{path}:1: expected a JSON array, got {type(data).__name__}")
    # line numbers of the top-level elements: scan the text for element starts
    decoder = json.JSONDecoder()
    lines: list[int] = []
    start = text.find("[", text.find('"examples"') if text.lstrip().startswith("{") else 0)
    i = start + 1
    n = len(text)
    line, counted = 1, 0
    while len(lines) < len(data) and i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            break
        line += text.count("\n", counted, i)
        counted = i
        lines.append(line)
        _, i = decoder.raw_decode(text, i)
    lines += [1] * (len(data) - len(lines))
    return list(zip(lines, data))
