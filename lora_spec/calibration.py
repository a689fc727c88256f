"""Measured speeds that ``--dry-run`` estimates from: ``$LORASP_CACHE/calibration.json``, one entry per setting
(``fit|<student>|<quant>|<method>|<device>|batch=BxA``: seconds per optimizer step; ``eval|<model>|<quant>|
<device>``: generated tokens per second). Every fit and eval records its own; a failure to record never fails
the run. An entry keeps the last :data:`KEEP` measurements and estimates from their median, so that one run on a
busy machine (or a cold first run) does not set the estimate alone."""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from .paths import cache_dir

FILE = "calibration.json"
KEEP = 5  # measurements kept per setting


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _path():
    return cache_dir() / FILE


def record(key: str, **values: Any) -> None:
    """Add a measurement of setting ``key`` (numbers, e.g. ``seconds_per_step=2.5``); the oldest beyond
    :data:`KEEP` is dropped."""
    try:
        path = _path()
        data = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(data, dict):
            data = {}
        runs = _runs(data.get(key))
        runs.append({**values, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        data[key] = {"runs": runs[-KEEP:]}
        tmp = path.with_name(f".{FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass


def _runs(entry: Any) -> list[dict]:
    """The measurements of an entry (an entry of an older release is one measurement)."""
    if not isinstance(entry, dict):
        return []
    runs = entry.get("runs") if "runs" in entry else [entry]
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def lookup(key: str) -> dict[str, Any] | None:
    """The estimate for setting ``key``: each number the median of its recorded measurements, ``measured`` the
    latest one's time, ``runs`` how many there are, ``source`` a phrase saying so (for the dry-run line); None when
    nothing was recorded."""
    try:
        path = _path()
        runs = _runs(json.loads(path.read_text()).get(key)) if path.exists() else []
    except (OSError, ValueError, AttributeError):
        return None
    if not runs:
        return None
    out: dict[str, Any] = {}
    for name in {k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}:
        vals = [r[name] for r in runs if isinstance(r.get(name), (int, float)) and not isinstance(r.get(name), bool)]
        out[name] = round(statistics.median(vals), 3)
    latest = runs[-1].get("measured")
    out.update(measured=latest, runs=len(runs),
               source=f"measured {latest}" if len(runs) == 1 else
               f"the median of the last {len(runs)} runs, the latest measured {latest}")
    return out
