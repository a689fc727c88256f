"""Compact storage of aligned teacher top-k targets: int32 ids + float16 logprobs, in memory or streamed from disk.

One aligned sample (``align.AlignedTarget``) is: the student ids of its target text, the positions that carry a
teacher distribution, and for each such position K candidate ids (int32) with their logprobs (float16, ``-inf``
in empty slots). A store keeps all samples in four flat arrays with CSR offsets, so that the per-sample cost
is ~6 bytes per candidate + 8 bytes per student token, with no Python objects per token:

    200,000 samples x 150 student tokens x K = 5 -> about 1.1 GB on disk; read through ``np.memmap``, so a
    training run touches only the pages of the samples it batches.

A directory store (``TopKWriter`` -> ``TopKStore.open``) is written append-only while aligning (nothing is kept
in memory but the offsets) and renamed into place when complete. Files::

    student_ids.i32  positions.i32  ids.i32  logprobs.f16   raw little-endian arrays
    index.npz        tok_off, row_off (int64 [N + 1])        CSR offsets per sample
    keys.json        sample keys (e.g. "problem_id#sample_index"), in order
    meta.json        k, counts, aligned fraction, student tokenizer fingerprint, free-form metadata
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .align import AlignedTarget, AlignStats
from .errors import DataError

__all__ = ["TopKStore", "TopKWriter", "build_store", "sample_key"]

_FILES = {"student_ids": ("student_ids.i32", np.int32), "positions": ("positions.i32", np.int32),
          "ids": ("ids.i32", np.int32), "logprobs": ("logprobs.f16", np.float16)}
FORMAT_VERSION = 1


def sample_key(problem_id: str, sample_index: int) -> str:
    return f"{problem_id}#{int(sample_index)}"


def _fit_k(t: AlignedTarget, k: int) -> tuple[np.ndarray, np.ndarray]:
    m, kk = t.ids.shape if t.ids.ndim == 2 else (0, 0)
    ids = np.zeros((len(t.positions), k), dtype=np.int32)
    lps = np.full((len(t.positions), k), -np.inf, dtype=np.float16)
    if m:
        c = min(k, kk)
        ids[:, :c] = t.ids[:, :c]
        lps[:, :c] = t.logprobs[:, :c]
    return ids, lps


class TopKStore:
    """Read access to many aligned samples (in memory, or memory-mapped from a directory)."""

    def __init__(self, arrays: dict[str, np.ndarray], tok_off: np.ndarray, row_off: np.ndarray, keys: list[str],
                 meta: dict[str, Any]):
        self._a = arrays
        self.tok_off = tok_off
        self.row_off = row_off
        self.keys = keys
        self.meta = meta
        self.k = int(meta["k"])
        self._index = {key: i for i, key in enumerate(keys)}
        if len(self._index) != len(keys):
            raise DataError("top-k store: duplicate sample keys")

    # -- building ----------------------------------------------------------------------------------------
    @classmethod
    def from_targets(cls, items: Iterable[tuple[str, AlignedTarget]], *, k: int | None = None,
                     meta: dict[str, Any] | None = None) -> "TopKStore":
        """An in-memory store from ``(key, AlignedTarget)`` pairs (K = the widest target unless given)."""
        items = list(items)
        if k is None:
            k = max([t.ids.shape[1] for _, t in items if t.ids.ndim == 2 and len(t.positions)] or [1])
        sids, poss, idss, lpss, tok_off, row_off = [], [], [], [], [0], [0]
        stats = AlignStats()
        for _, t in items:
            ids, lps = _fit_k(t, k)
            sids.append(np.asarray(t.student_ids, np.int32))
            poss.append(np.asarray(t.positions, np.int32))
            idss.append(ids)
            lpss.append(lps)
            tok_off.append(tok_off[-1] + len(t.student_ids))
            row_off.append(row_off[-1] + len(t.positions))
            stats.add(t)
        arrays = {"student_ids": np.concatenate(sids) if sids else np.zeros(0, np.int32),
                  "positions": np.concatenate(poss) if poss else np.zeros(0, np.int32),
                  "ids": np.concatenate(idss) if idss else np.zeros((0, k), np.int32),
                  "logprobs": np.concatenate(lpss) if lpss else np.zeros((0, k), np.float16)}
        m = {"format": FORMAT_VERSION, "k": int(k), "samples": len(items), **stats.summary(), **(meta or {})}
        return cls(arrays, np.asarray(tok_off, np.int64), np.asarray(row_off, np.int64), [key for key, _ in items], m)

    def save(self, path: str | os.PathLike) -> Path:
        """Write this store as a directory (atomically); ``TopKStore.open`` memory-maps it back."""
        with TopKWriter(path, k=self.k, meta={k: v for k, v in self.meta.items()
                                               if k not in ("format", "k")}) as w:
            for i, key in enumerate(self.keys):
                w.add(key, self[i])
        return Path(path)

    # -- reading -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, mmap: bool = True) -> "TopKStore":
        path = Path(path)
        meta_f = path / "meta.json"
        if not meta_f.exists():
            raise DataError(f"{path}: not a top-k store (no meta.json)")
        try:
            meta = json.loads(meta_f.read_text())
            keys = json.loads((path / "keys.json").read_text())
            idx = np.load(path / "index.npz")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable top-k store ({exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{meta_f}: top-k store format {meta.get('format')!r}, expected {FORMAT_VERSION}")
        k = int(meta["k"])
        tok_off, row_off = idx["tok_off"], idx["row_off"]
        sizes = {"student_ids": (int(tok_off[-1]),), "positions": (int(row_off[-1]),),
                 "ids": (int(row_off[-1]), k), "logprobs": (int(row_off[-1]), k)}
        arrays = {}
        for name, (fname, dt) in _FILES.items():
            f = path / fname
            n = int(np.prod(sizes[name]))
            want = n * np.dtype(dt).itemsize
            if not f.exists() or f.stat().st_size != want:
                raise DataError(f"{f}: expected {want} bytes for {sizes[name]} {np.dtype(dt).name}, "
                                f"found {f.stat().st_size if f.exists() else 'no file'}")
            if n == 0:
                arrays[name] = np.zeros(sizes[name], dt)
            elif mmap:
                arrays[name] = np.memmap(f, dtype=dt, mode="r", shape=sizes[name])
            else:
                arrays[name] = np.fromfile(f, dtype=dt).reshape(sizes[name])
        if len(keys) != len(tok_off) - 1:
            raise DataError(f"{path}/keys.json: {len(keys)} keys for {len(tok_off) - 1} samples")
        return cls(arrays, tok_off, row_off, keys, meta)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> AlignedTarget:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        a, b = int(self.tok_off[i]), int(self.tok_off[i + 1])
        r0, r1 = int(self.row_off[i]), int(self.row_off[i + 1])
        a_ = self._a
        return AlignedTarget(a_["student_ids"][a:b], a_["positions"][r0:r1], a_["ids"][r0:r1],
                             a_["logprobs"][r0:r1])

    def get(self, key: str) -> AlignedTarget | None:
        i = self._index.get(key)
        return None if i is None else self[i]

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[tuple[str, AlignedTarget]]:
        for i, key in enumerate(self.keys):
            yield key, self[i]

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(v).nbytes for v in self._a.values()) + self.tok_off.nbytes + self.row_off.nbytes)

    @property
    def aligned_fraction(self) -> float:
        n = int(self.tok_off[-1])
        return int(self.row_off[-1]) / n if n else 0.0


def build_store(samples: Iterable[Any], aligner: Any, path: str | os.PathLike | None = None, *, k: int = 5,
                text_of: Any = None, chunk: int = 1024, meta: dict[str, Any] | None = None) -> "TopKStore":
    """Align a stream of teacher ``Sample``s (with ``tokens``/``top_logprobs``) and store their student targets.

    ``path``: write a directory store chunk by chunk (memory: one chunk of samples) and return it memory-mapped;
    ``None``: keep it in memory. ``text_of(sample)`` gives the training target text (default ``sample.text``).
    Samples are keyed ``problem_id#sample_index``.
    """
    writer = TopKWriter(path, k=k, meta=meta) if path is not None else None
    items: list[tuple[str, AlignedTarget]] = []
    buf: list[Any] = []

    def flush() -> None:
        if not buf:
            return
        texts = [text_of(s) if text_of else s.text for s in buf]
        got = aligner.align_many(texts, [s.tokens for s in buf], [s.top_logprobs for s in buf])
        for s, t in zip(buf, got):
            key = sample_key(s.problem_id, s.sample_index)
            if writer is not None:
                writer.add(key, t)
            else:
                items.append((key, t))
        buf.clear()

    try:
        for s in samples:
            buf.append(s)
            if len(buf) >= chunk:
                flush()
        flush()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
        return TopKStore.open(path)
    return TopKStore.from_targets(items, k=k, meta=meta)


class TopKWriter:
    """Append aligned samples to a directory store without keeping them in memory; renamed into place on close."""

    def __init__(self, path: str | os.PathLike, *, k: int, meta: dict[str, Any] | None = None):
        if k < 1:
            raise DataError(f"top-k store: k must be >= 1, got {k}")
        self.path = Path(path)
        self.k = int(k)
        self.meta = dict(meta or {})
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._fh = {name: open(self.tmp / fname, "wb") for name, (fname, _) in _FILES.items()}
        self.tok_off, self.row_off, self.keys = [0], [0], []
        self._seen: set[str] = set()
        self.stats = AlignStats()
        self._closed = False

    def add(self, key: str, t: AlignedTarget) -> None:
        if key in self._seen:
            raise DataError(f"top-k store: duplicate sample key {key!r}")
        self._seen.add(key)
        ids, lps = _fit_k(t, self.k)
        self._fh["student_ids"].write(np.ascontiguousarray(t.student_ids, dtype="<i4").tobytes())
        self._fh["positions"].write(np.ascontiguousarray(t.positions, dtype="<i4").tobytes())
        self._fh["ids"].write(np.ascontiguousarray(ids, dtype="<i4").tobytes())
        self._fh["logprobs"].write(np.ascontiguousarray(lps, dtype="<f2").tobytes())
        self.tok_off.append(self.tok_off[-1] + len(t.student_ids))
        self.row_off.append(self.row_off[-1] + len(t.positions))
        self.keys.append(key)
        self.stats.add(t)

    def close(self) -> Path:
        if self._closed:
            return self.path
        for fh in self._fh.values():
            fh.close()
        np.savez(self.tmp / "index.npz", tok_off=np.asarray(self.tok_off, np.int64),
                 row_off=np.asarray(self.row_off, np.int64))
        (self.tmp / "keys.json").write_text(json.dumps(self.keys))
        meta = {"format": FORMAT_VERSION, "k": self.k, **self.stats.summary(), **self.meta}
        meta["samples"] = len(self.keys)
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if self.path.exists():
            shutil.rmtree(self.path)
        os.rename(self.tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        for fh in self._fh.values():
            fh.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> "TopKWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
