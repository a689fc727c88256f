"""Measured speeds that ``--dry-run`` estimates from: ``$LORASP_CACHE/calibration.json``, one entry per setting
(``fit|<student>|<quant>|<method>|<device>|batch=BxA``: seconds per optimizer step; ``eval|<model>|<quant>|
<device>``: generated tokens per second). Every fit and eval records its own; a failure to record never fails
the run."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .paths import cache_dir

FILE = "calibration.json"


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _path():
    return cache_dir() / FILE


def record(key: str, **values: Any) -> None:
    try:
        path = _path()
        data = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(data, dict):
            data = {}
        data[key] = {**values, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = path.with_name(f".{FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass


def lookup(key: str) -> dict[str, Any] | None:
    try:
        path = _path()
        entry = json.loads(path.read_text()).get(key) if path.exists() else None
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None
