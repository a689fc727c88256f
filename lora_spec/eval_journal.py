"""The eval journal: ``lorasp eval`` keeps every finished prediction, so a cut eval loses nothing.

A long eval (hundreds of chain-of-thought generations, hours on a CPU) writes each prediction the moment its
generation finishes to ``OUT/.eval-journal/<task>.jsonl``: one header line (what produced the predictions: model
and adapter fingerprints, quantization, prompt mode, chat template, generation budget), then one prediction per
line, each with the hash of the exact prompt it answered. Lines are flushed as written, so a crash, Ctrl-C or
``kill -9`` keeps every finished prediction (a torn last line is dropped).

Rerunning the same ``lorasp eval --out OUT`` continues: a prediction is reused when its problem id and prompt
hash match, and only the rest is generated. A journal written with other settings is refused with one line
(``--overwrite`` discards it). When the eval completes, results.json and predictions/ are written and the journal
is removed. Greedy decoding answers each prompt alone (padding is masked), so a resumed eval gives the predictions
an uninterrupted one would, up to floating-point rounding of different batch shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import ConfigError

JOURNAL_DIR = ".eval-journal"


def task_file_name(task: str) -> str:
    """A task's file name (``bbh/navigate`` -> ``bbh__navigate``): its journal and its ``predictions/<name>.jsonl``."""
    return task.replace("/", "__").replace(" ", "_")
VERSION = 1


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


# identity keys a journal of an older release lacks, with the value those releases had
OPTIONAL = {"calculator": False}


class EvalJournal:
    """The journal of one eval output directory. ``identity`` (a flat dict of JSON values) says what produces the
    predictions; a task's journal written under another identity is refused (:meth:`kept`)."""

    def __init__(self, out: str | os.PathLike, identity: dict[str, Any]):
        self.dir = Path(out) / JOURNAL_DIR
        self.identity = dict(identity)
        self._fh: dict[str, Any] = {}

    def path(self, task: str) -> Path:
        return self.dir / f"{task_file_name(task)}.jsonl"

    def kept(self, task: str, mode: str, max_new_tokens: int) -> dict[str, dict]:
        """The predictions of ``task`` an earlier, cut run of the same settings finished: ``{prompt key: row}``,
        where the key is ``id + " " + prompt hash`` (see :meth:`key`)."""
        p = self.path(task)
        if not p.exists():
            return {}
        want = self._header(task, mode, max_new_tokens)
        rows: dict[str, dict] = {}
        lines = p.read_bytes().split(b"\n")
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if n >= len(lines) - 1:  # a line torn by a kill mid-write: that prediction is redone
                    continue
                raise ConfigError(f"{p}:{n}: not a JSON line of the eval journal; delete {p} or pass --overwrite "
                                  f"to start this eval over") from None
            if n == 1:
                self._check_header(p, obj, want)
                continue
            if not isinstance(obj, dict) or "id" not in obj or "prompt_hash" not in obj:
                raise ConfigError(f"{p}:{n}: expected a prediction with 'id' and 'prompt_hash'; delete {p} or pass "
                                  f"--overwrite to start this eval over")
            rows[self.key(obj["id"], obj["prompt_hash"])] = obj
        return rows

    @staticmethod
    def key(problem_id: Any, phash: str) -> str:
        return f"{problem_id} {phash}"

    def _header(self, task: str, mode: str, max_new_tokens: int) -> dict:
        return {"eval_journal": VERSION, "task": task, "mode": mode, "max_new_tokens": max_new_tokens,
                **self.identity}

    @staticmethod
    def _check_header(path: Path, got: Any, want: dict) -> None:
        if not isinstance(got, dict) or got.get("eval_journal") != VERSION:
            raise ConfigError(f"{path}:1: not an eval journal header; delete {path} or pass --overwrite to start "
                              f"this eval over")
        for k, v in want.items():
            had = got.get(k, OPTIONAL.get(k))
            if had != v:
                raise ConfigError(f"{path.parent.parent}: holds an interrupted eval of {want['task']} with {k} "
                                  f"{had!r}, not {v!r}; rerun it with its settings to continue it, pass "
                                  f"--overwrite to discard it, or choose another --out")

    def open(self, task: str, mode: str, max_new_tokens: int) -> None:
        """Start (or continue) the journal of ``task``: its header is written when the file is new."""
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.path(task)
        if p.exists():  # a line torn by a kill mid-write is cut off (its prediction is redone)
            data = p.read_bytes()
            if not data.endswith(b"\n"):
                os.truncate(p, data.rfind(b"\n") + 1)
        fresh = not p.exists() or p.stat().st_size == 0
        fh = p.open("ab")
        if fresh:
            fh.write(json.dumps(self._header(task, mode, max_new_tokens), ensure_ascii=False).encode() + b"\n")
            fh.flush()
        self._fh[task] = fh

    def add(self, task: str, row: dict) -> None:
        """Append one finished prediction (flushed at once: it survives a crash or kill of this process)."""
        fh = self._fh[task]
        fh.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
        fh.flush()

    def close(self) -> None:
        for fh in self._fh.values():
            fh.close()
        self._fh.clear()

    def remove(self) -> None:
        """The eval is complete (results.json written): the journal goes."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def discard(out: str | os.PathLike) -> None:
    """``--overwrite``: forget an interrupted eval's predictions."""
    shutil.rmtree(Path(out) / JOURNAL_DIR, ignore_errors=True)


def journal_rows(out: str | os.PathLike | None) -> dict[str, int]:
    """Per journal file in ``out``: how many predictions it holds (``lorasp eval --dry-run``)."""
    d = Path(out) / JOURNAL_DIR if out else None
    if d is None or not d.is_dir():
        return {}
    # complete lines only: text after the last newline is a line torn by a kill, redone on the rerun
    return {p.stem: max(0, sum(1 for line in p.read_bytes().split(b"\n")[:-1] if line.strip()) - 1)
            for p in sorted(d.glob("*.jsonl"))}
