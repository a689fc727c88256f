"""Checkpoint integrity: every checkpoint directory lists the size and SHA-256 of each of its files.

The trainer calls :func:`seal` on a checkpoint's temporary directory just before it is renamed into place, and
:func:`usable` on the candidates when it resumes. Nothing here knows the checkpoint's file names or formats: it
hashes whatever the directory holds, so the trainer may change what a checkpoint contains.

* ``--resume`` takes the newest checkpoint whose files match its list; those it skips (truncated, corrupted,
  missing a file) are named in one warning each.
* A checkpoint written before this list existed (no ``files.sha256.json``) is accepted as it is.
* Temporary checkpoint directories (``.step-*.tmp-PID-*``) of processes that are no longer running, left by a
  ``kill -9`` during a save, are removed by :func:`remove_stale_tmp`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable

from .outputs import pid_alive

INDEX = "files.sha256.json"
_TMP = re.compile(r"^\.step-\d+\.(?:tmp|old)-(\d+)(?:-\d+)?$")


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.name != INDEX)


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(directory: str | os.PathLike) -> dict:
    """Write ``files.sha256.json`` (relative path -> size, sha256) for every file under ``directory``."""
    d = Path(directory)
    index = {str(p.relative_to(d)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(d)}
    tmp = d / f".{INDEX}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({"version": 1, "files": index}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, d / INDEX)
    return index


def problem(directory: str | os.PathLike) -> str | None:
    """Why the checkpoint at ``directory`` cannot be trusted, or ``None`` if its files match its list."""
    d = Path(directory)
    p = d / INDEX
    if not p.exists():
        return None  # written before checkpoints were sealed: accepted as it is
    try:
        index = json.loads(p.read_text(encoding="utf-8"))["files"]
        assert isinstance(index, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"its file list {INDEX} is unreadable"
    for rel, want in index.items():
        f = d / rel
        if not f.is_file():
            return f"{rel} is missing"
        size = f.stat().st_size
        if size != want.get("size"):
            return f"{rel} has {size:,} bytes, {want.get('size'):,} were written"
        if _sha256(f) != want.get("sha256"):
            return f"{rel} does not match its checksum (corrupted)"
    return None


def usable(candidates: Iterable[tuple[int, Path]], warn: Callable[[str], None]) -> list[tuple[int, Path]]:
    """The candidates (step order) up to and including the newest one that verifies; warns for each skipped."""
    ordered = sorted(candidates)
    while ordered:
        step, d = ordered[-1]
        why = problem(d)
        if why is None:
            return ordered
        warn(f"skipping checkpoint {d}: {why}; resuming from an earlier one")
        ordered.pop()
    return ordered


def remove_stale_tmp(root: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[Path]:
    """Remove ``.step-*.tmp-PID-*`` / ``.step-*.old-PID`` directories under ``root`` whose process is gone."""

    removed = []
    r = Path(root)
    if not r.is_dir():
        return removed
    for d in r.iterdir():
        m = _TMP.match(d.name)
        if not m or not d.is_dir():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and pid_alive(pid):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    if removed and warn is not None:
        warn(f"removed {len(removed)} unfinished temporary checkpoint director"
             f"{'y' if len(removed) == 1 else 'ies'} left by an interrupted save in {r} "
             f"({', '.join(d.name for d in removed[:3])})")
    return removed


__all__ = ["seal", "problem", "usable", "remove_stale_tmp", "INDEX"]
