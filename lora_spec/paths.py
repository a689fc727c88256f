"""Where lorasp keeps its cache and looks for data."""

from __future__ import annotations

import os
from pathlib import Path


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
