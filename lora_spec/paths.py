"""Where lorasp keeps its cache and looks for data; the bounded folder walk of ``lorasp runs`` and ``lorasp adapters
list``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

from .errors import DataError


def cache_dir() -> Path:
    """``$LORASP_CACHE``, else ``$XDG_CACHE_HOME/lorasp``, else ``~/.cache/lorasp``."""
    if os.environ.get("LORASP_CACHE"):
        root = Path(os.environ["LORASP_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "lorasp"
    else:
        root = Path.home() / ".cache" / "lorasp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local data directory (layout of shared/data): ``--data-dir``, else ``$LORASP_DATA_DIR``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LORASP_DATA_DIR")
    return Path(env) if env else None


def walk_dirs(root: str | os.PathLike, max_depth: int, skip: Callable[[str], bool] = lambda name: False
              ) -> Iterator[tuple[Path, list[str]]]:
    """``(directory, its file names)`` for ``root`` and every directory below it, in sorted depth-first order.
    Hidden directories (``.name``: temp files of an atomic write), those ``skip(name)`` is true for, and anything
    more than ``max_depth`` levels below ``root`` are not entered. ``root`` not a directory: ``DataError``."""

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    base_depth = len(root.resolve().parts)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not skip(d))
        if len(Path(dirpath).resolve().parts) - base_depth >= max_depth:
            dirnames[:] = []
        yield Path(dirpath), filenames
