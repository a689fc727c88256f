"""Prediction journals: every finished prediction is on disk the moment it exists, so a cut run loses nothing.

One mechanism (:class:`JournalFile`) serves both places lorasp generates for a score:

* ``lorasp eval`` (:class:`EvalJournal`) writes each prediction the moment its generation finishes to
  ``OUT/.eval-journal/<task>.jsonl``: one header line (what produced the predictions: model and adapter
  fingerprints, quantization, prompt mode, chat template, generation budget), then one prediction per line, each
  with the hash of the exact prompt it answered. Rerunning the same ``lorasp eval --out OUT`` continues: a
  prediction is reused when its problem id and prompt hash match, and only the rest is generated. A journal written
  with other settings is refused with one line (``--overwrite`` discards it). When the eval completes,
  results.json and predictions/ are written and the journal is removed. Greedy decoding answers each prompt alone
  (padding is masked), so a resumed eval gives the predictions an uninterrupted one would, up to floating-point
  rounding of different batch shapes.
* a fit's held-out evaluations (``lora_spec.selection.heldout``) append each evaluation's predictions, with their
  step, to ``<checkpoints>/heldout_predictions.jsonl`` (fsynced), so a cut and resumed fit still reports the
  evaluations before the cut.

Lines are flushed as written, so a crash, Ctrl-C or ``kill -9`` keeps every finished row; a line torn by a kill
mid-write (the last one, without its newline) is dropped on reading and cut off when the journal is opened again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import write_jsonl

JOURNAL_DIR = ".eval-journal"


def task_file_name(task: str) -> str:
    """A task's file name (``bbh/navigate`` -> ``bbh__navigate``): its journal and its ``predictions/<name>.jsonl``."""
    return task.replace("/", "__").replace(" ", "_")


VERSION = 1


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


# identity keys a journal of an older release lacks, with the value those releases had
OPTIONAL = {"calculator": False}


class JournalFile:
    """One append-only JSONL journal. ``header`` (a dict, or None for a journal without one) is the first line and
    says what produced the rows; ``where`` names the journal in errors and ``remedy`` says what the user can do about
    a journal that cannot be read (e.g. "pass --overwrite to start this eval over")."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None, *, remedy: str, fsync: bool = False):
        self.path = Path(path)
        self.header = header
        self.remedy = remedy
        self.fsync = fsync
        self._fh: Any = None

    def read(self) -> tuple[dict | None, list[dict]]:
        """``(header, rows)`` of the journal on disk (``(None, [])`` when there is none). A torn last line is
        dropped; any other line that is not a JSON object is one error naming the file and line."""
        if not self.path.exists():
            return None, []
        lines = self.path.read_bytes().split(b"\n")
        header, rows = None, []
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if n >= len(lines) - 1:  # a line torn by a kill mid-write: that row is redone
                    continue
                obj = None
            if not isinstance(obj, dict):
                raise ConfigError(f"{self.path}:{n}: not a JSON object line of a prediction journal; {self.remedy}")
            if n == 1 and self.header is not None:
                header = obj
            else:
                rows.append(obj)
        return header, rows

    def open(self) -> None:
        """Start (or continue) appending: a torn last line is cut off, the header written when the file is new."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                os.truncate(self.path, data.rfind(b"\n") + 1)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = self.path.open("ab")
        if fresh and self.header is not None:
            self._write(self.header)

    def add(self, row: dict) -> None:
        """Append one row, flushed at once (and fsynced for ``fsync`` journals): it survives a crash or a kill."""
        if self._fh is None:
            self.open()
        self._write(row)

    def _write(self, obj: dict) -> None:
        self._fh.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the rows (atomically: a temporary file renamed over the journal)."""

        self.close()
        write_jsonl(self.path, ([self.header] if self.header is not None else []) + list(rows))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class EvalJournal:
    """The journal of one eval output directory: a :class:`JournalFile` per task. ``identity`` (a flat dict of JSON
    values) says what produces the predictions; a task's journal written under another identity is refused
    (:meth:`kept`)."""

    REMEDY = "delete {path} or pass --overwrite to start this eval over"

    def __init__(self, out: str | os.PathLike, identity: dict[str, Any]):
        self.dir = Path(out) / JOURNAL_DIR
        self.identity = dict(identity)
        self._files: dict[str, JournalFile] = {}

    def path(self, task: str) -> Path:
        return self.dir / f"{task_file_name(task)}.jsonl"

    def _file(self, task: str, mode: str, max_new_tokens: int) -> JournalFile:
        p = self.path(task)
        return JournalFile(p, self._header(task, mode, max_new_tokens), remedy=self.REMEDY.format(path=p))

    def kept(self, task: str, mode: str, max_new_tokens: int) -> dict[str, dict]:
        """The predictions of ``task`` an earlier, cut run of the same settings finished: ``{prompt key: row}``,
        where the key is ``id + " " + prompt hash`` (see :meth:`key`)."""
        jf = self._file(task, mode, max_new_tokens)
        header, rows = jf.read()
        if header is None and not rows:
            return {}
        self._check_header(jf.path, header, jf.header)
        kept: dict[str, dict] = {}
        for row in rows:
            if "id" not in row or "prompt_hash" not in row:
                raise ConfigError(f"{jf.path}: holds a prediction without 'id' and 'prompt_hash'; {jf.remedy}")
            kept[self.key(row["id"], row["prompt_hash"])] = row
        return kept

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
        jf = self._file(task, mode, max_new_tokens)
        jf.open()
        self._files[task] = jf

    def add(self, task: str, row: dict) -> None:
        """Append one finished prediction (flushed at once: it survives a crash or kill of this process)."""
        self._files[task].add(row)

    def close(self) -> None:
        for jf in self._files.values():
            jf.close()
        self._files.clear()

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
