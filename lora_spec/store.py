"""The teach run's sample store: one SQLite file, the source of truth of a teach run.

Every teacher completion is keyed by ``(teacher fingerprint, prompt_id, problem_id, sample_index)`` and committed
the moment it arrives (WAL journal, ``synchronous=NORMAL`` is durable across a process kill), so a rerun of the
same command after a crash, Ctrl-C or ``kill -9`` never asks the teacher again for a stored result. Failed
requests are logged in their own table and are retried by the next run.

``lorasp score`` adds a scorer's teacher-forced top-k per sample (table ``scores``, keyed by the scorer's
fingerprint and the sample's key) under the same rules; its failures go to ``score_failures``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DataError
from .records import Sample

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    teacher       TEXT NOT NULL,
    prompt_id     TEXT NOT NULL,
    problem_id    TEXT NOT NULL,
    sample_index  INTEGER NOT NULL,
    text          TEXT NOT NULL,
    answer        TEXT,
    correct       INTEGER,
    tokens        TEXT,
    top_logprobs  TEXT,
    finish_reason TEXT,
    usage         TEXT NOT NULL DEFAULT '{}',
    request_id    TEXT,
    created       REAL NOT NULL,
    PRIMARY KEY (teacher, prompt_id, problem_id, sample_index)
);
CREATE TABLE IF NOT EXISTS failures (
    teacher      TEXT NOT NULL,
    prompt_id    TEXT NOT NULL,
    problem_id   TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    error        TEXT NOT NULL,
    run          INTEGER,
    created      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS failures_key ON failures (teacher, prompt_id, problem_id, sample_index);
CREATE TABLE IF NOT EXISTS runs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    teacher   TEXT NOT NULL,
    started   REAL NOT NULL,
    ended     REAL,
    requests  INTEGER NOT NULL DEFAULT 0,
    stored    INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    status    TEXT NOT NULL DEFAULT 'running'
);
CREATE TABLE IF NOT EXISTS scores (
    scorer        TEXT NOT NULL,
    teacher       TEXT NOT NULL,
    prompt_id     TEXT NOT NULL,
    problem_id    TEXT NOT NULL,
    sample_index  INTEGER NOT NULL,
    text_sha256   TEXT NOT NULL,
    tokens        TEXT NOT NULL,
    top_logprobs  TEXT NOT NULL,
    usage         TEXT NOT NULL DEFAULT '{}',
    request_id    TEXT,
    created       REAL NOT NULL,
    PRIMARY KEY (scorer, teacher, prompt_id, problem_id, sample_index)
);
CREATE TABLE IF NOT EXISTS score_failures (
    scorer       TEXT NOT NULL,
    teacher      TEXT NOT NULL,
    prompt_id    TEXT NOT NULL,
    problem_id   TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    error        TEXT NOT NULL,
    run          INTEGER,
    created      REAL NOT NULL
);
"""

Key = tuple[str, str, str, int]  # (teacher, prompt_id, problem_id, sample_index)


class SampleStore:
    """A thin, single-writer wrapper around ``store.sqlite``. Use from one thread."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and not {"meta", "samples"} <= tables:  # a user's own database: never written into
                self.db.close()
                raise DataError(f"{self.path}: a SQLite database that is not a lorasp sample store (its tables: "
                                f"{', '.join(sorted(tables)[:3])}); lorasp never writes into it (choose another "
                                f"--out)")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a lorasp sample store ({exc})") from None
        if row is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise DataError(f"{self.path}: sample store schema version {row[0]}, this lorasp reads {SCHEMA_VERSION}")

    # -- writing ---------------------------------------------------------------------------------------------
    def _write(self, sql: str, args: tuple) -> sqlite3.Cursor:
        """One committed statement; a full disk is an ``OSError`` naming the store (one line from the CLI), and
        what was committed before it stays."""
        try:
            return self.db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise OSError(errno.ENOSPC, f"the sample store could not be written ({exc})", str(self.path)) from None
            raise

    def put(self, sample: Sample, request_id: str | None = None) -> None:
        """Store one successful sample and commit (autocommit mode: each statement is its own transaction)."""
        self._write(
            "INSERT OR REPLACE INTO samples VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (sample.teacher, sample.prompt_id, sample.problem_id, int(sample.sample_index), sample.text,
             sample.answer, None if sample.correct is None else int(bool(sample.correct)),
             None if sample.tokens is None else json.dumps(sample.tokens, ensure_ascii=False),
             None if sample.top_logprobs is None else json.dumps(sample.top_logprobs, ensure_ascii=False),
             sample.finish_reason, json.dumps(sample.usage or {}), request_id, time.time()))

    def put_failure(self, sample: Sample, run: int | None = None) -> None:
        self._write("INSERT INTO failures VALUES (?,?,?,?,?,?,?)",
                        (sample.teacher, sample.prompt_id, sample.problem_id, int(sample.sample_index),
                         sample.error or "unknown error", run, time.time()))

    def start_run(self, teacher: str) -> int:
        cur = self.db.execute("INSERT INTO runs (teacher, started) VALUES (?, ?)", (teacher, time.time()))
        return int(cur.lastrowid)

    def end_run(self, run: int, *, requests: int, stored: int, failed: int, status: str) -> None:
        self.db.execute("UPDATE runs SET ended=?, requests=?, stored=?, failed=?, status=? WHERE id=?",
                        (time.time(), requests, stored, failed, status, run))

    def put_score(self, scorer: str, key: tuple[str, str, str, int], text: str, tokens: list[str],
                  top_logprobs: list[dict[str, float]], usage: dict | None = None,
                  request_id: str | None = None) -> None:
        """Store one sample's teacher-forced scores (``lorasp score``) and commit."""
        teacher, prompt_id, problem_id, idx = key
        self._write("INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (scorer, teacher, prompt_id, problem_id, int(idx), text_sha256(text),
                         json.dumps(tokens, ensure_ascii=False), json.dumps(top_logprobs, ensure_ascii=False),
                         json.dumps(usage or {}), request_id, time.time()))

    def put_score_failure(self, scorer: str, key: tuple[str, str, str, int], error: str, run: int) -> None:
        self._write("INSERT INTO score_failures VALUES (?,?,?,?,?,?,?,?)",
                        (scorer, *key[:3], int(key[3]), error, run, time.time()))

    def scores(self, scorer: str) -> dict[tuple[str, str, str, int], tuple[str, list[str], list[dict], dict]]:
        """Key -> (sha256 of the scored text, tokens, top-k per token, usage) of every sample ``scorer`` scored."""
        rows = self.db.execute("SELECT teacher, prompt_id, problem_id, sample_index, text_sha256, tokens, "
                               "top_logprobs, usage FROM scores WHERE scorer=?", (scorer,))
        return {(r[0], r[1], r[2], int(r[3])): (r[4], json.loads(r[5]), json.loads(r[6]), json.loads(r[7] or "{}"))
                for r in rows}

    def score_index(self, scorer: str) -> dict[tuple[str, str, str, int], tuple[str, int, dict]]:
        """Key -> (sha256 of the scored text, token count, usage) of every sample ``scorer`` scored, without
        decoding the top-k (what resuming and the manifest need)."""
        rows = self.db.execute("SELECT teacher, prompt_id, problem_id, sample_index, text_sha256, "
                               "json_array_length(tokens), usage FROM scores WHERE scorer=?", (scorer,))
        return {(r[0], r[1], r[2], int(r[3])): (r[4], int(r[5]), json.loads(r[6] or "{}")) for r in rows}

    def score_failures(self, scorer: str, run: int) -> dict[tuple[str, str, str, int], str]:
        rows = self.db.execute("SELECT teacher, prompt_id, problem_id, sample_index, error FROM score_failures "
                               "WHERE scorer=? AND run=?", (scorer, run))
        return {(r[0], r[1], r[2], int(r[3])): r[4] for r in rows}

    def apply_scores(self, samples: list[Sample]) -> int:
        """Give ``samples`` the tokens and top-k of the run's scorer (the last ``lorasp score``), in place: a
        sample it has not scored (or whose text changed) gets none, so that the exported top-k all come from one
        model. Without a scorer, nothing changes. Returns how many samples carry top-k."""
        active = self.get_meta("scores")
        if isinstance(active, dict) and active.get("fingerprint"):
            have = self.scores(str(active["fingerprint"]))
            for s in samples:
                got = have.get((s.teacher, s.prompt_id, s.problem_id, int(s.sample_index)))
                ok = got is not None and got[0] == text_sha256(s.text)
                s.tokens, s.top_logprobs = (got[1], got[2]) if ok else (None, None)
        return sum(1 for s in samples if s.top_logprobs)

    def set_meta(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # -- reading ---------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default: object = None) -> object:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def stored_indices(self, teacher: str, prompt_id: str, problem_id: str) -> set[int]:
        rows = self.db.execute("SELECT sample_index FROM samples WHERE teacher=? AND prompt_id=? AND problem_id=?",
                               (teacher, prompt_id, problem_id))
        return {r[0] for r in rows}

    def samples(self, teacher: str | None = None) -> Iterator[Sample]:
        q = "SELECT * FROM samples" + (" WHERE teacher=?" if teacher else "") + " ORDER BY problem_id, sample_index"
        for r in self.db.execute(q, (teacher,) if teacher else ()):
            yield _row_sample(r)

    def failed_keys(self, teacher: str, run: int | None = None) -> set[tuple[str, str, int]]:
        q = "SELECT prompt_id, problem_id, sample_index FROM failures WHERE teacher=?"
        args: tuple = (teacher,)
        if run is not None:
            q += " AND run=?"
            args += (run,)
        return {(r[0], r[1], int(r[2])) for r in self.db.execute(q, args)}

    def last_errors(self, teacher: str, run: int, limit: int = 3) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT error FROM failures WHERE teacher=? AND run=? LIMIT ?",
                               (teacher, run, limit))
        return [r[0] for r in rows]

    def runs(self, teacher: str | None = None) -> list[dict]:
        q = "SELECT id, teacher, started, ended, requests, stored, failed, status FROM runs"
        rows = self.db.execute(q + (" WHERE teacher=?" if teacher else "") + " ORDER BY id",
                               (teacher,) if teacher else ())
        cols = ("id", "teacher", "started", "ended", "requests", "stored", "failed", "status")
        return [dict(zip(cols, r)) for r in rows]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def text_sha256(text: str) -> str:
    """What a score was computed on: a stored score whose text no longer matches is not used."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _row_sample(r: Iterable) -> Sample:
    (teacher, prompt_id, problem_id, idx, text, answer, correct, tokens, top, finish, usage, _rid, _created) = r
    return Sample(problem_id=problem_id, sample_index=int(idx), prompt_id=prompt_id, text=text, answer=answer,
                  correct=None if correct is None else bool(correct),
                  tokens=None if tokens is None else json.loads(tokens),
                  top_logprobs=None if top is None else json.loads(top),
                  finish_reason=finish, usage=json.loads(usage or "{}"), teacher=teacher)


def request_usage(store: SampleStore, teacher: str, keys: set[tuple[str, str, int]] | None = None) -> dict[str, int]:
    """Token usage summed once per request (a request that returned n samples is counted once)."""
    seen: set[str] = set()
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for r in store.db.execute("SELECT prompt_id, problem_id, sample_index, usage, request_id FROM samples "
                              "WHERE teacher=?", (teacher,)):
        if keys is not None and (r[0], r[1], int(r[2])) not in keys:
            continue
        rid = r[4] or f"{r[0]}/{r[1]}/{r[2]}"
        if rid in seen:
            continue
        seen.add(rid)
        for k, v in json.loads(r[3] or "{}").items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return total
