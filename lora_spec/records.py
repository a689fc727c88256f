"""The plain dataclasses that travel between stages, and JSONL I/O with file:line errors."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Type, TypeVar

from .errors import DataError

FORMATS = ("in_context_cot", "in_context_answer", "zero_shot_cot", "zero_shot_answer")


@dataclass
class Problem:
    """One question with its canonical answer (e.g. ``"72"``, ``"(B)"``)."""

    id: str
    question: str
    answer: str
    rationale: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherRequest:
    """What a teacher is asked: one prompt for one problem, ``n`` samples starting at ``first_index``."""

    problem: Problem
    prompt: str | list[dict[str, str]]  # plain text, or chat messages
    prompt_id: str
    n: int = 1
    first_index: int = 0


@dataclass
class Sample:
    """One teacher completion."""

    problem_id: str
    sample_index: int
    prompt_id: str
    text: str
    answer: str | None = None
    correct: bool | None = None
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    teacher: str = ""
    error: str | None = None  # set when the request failed; such a sample has no text


@dataclass
class Example:
    """One training row."""

    format: str
    prompt: str
    target: str
    problem_id: str = ""
    teacher_tokens: list[str] | None = None
    teacher_top_logprobs: list[dict[str, float]] | None = None
    n_shots: int | None = None  # in-context rows: the exemplars the prompt holds (fewer than asked when fitted)


T = TypeVar("T")


def _check_fields(cls: Type[T], obj: Any, where: str) -> T:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - set(names))
    if unknown:
        raise DataError(f"{where}: unknown field {unknown[0]!r} for {cls.__name__} (expected one of {sorted(names)})")
    missing = [n for n, f in names.items()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in obj]
    if missing:
        raise DataError(f"{where}: missing field {missing[0]!r} for {cls.__name__}")
    for n in ("id", "question", "answer", "problem_id", "text", "prompt", "target", "format"):
        if n in names and n in obj and obj[n] is not None and not isinstance(obj[n], str):
            raise DataError(f"{where}: field {n!r} must be a string, got {type(obj[n]).__name__}")
    return cls(**obj)


def read_text(path: str | os.PathLike, what: str = "a text file") -> str:
    """A UTF-8 file's text; a missing, binary or unreadable file is a ``DataError`` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a directory; expected {what}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        f"expected {what}") from None


def iter_jsonl(path: str | os.PathLike, *, invalid: str = "invalid JSON") -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)``; a bad line raises ``DataError`` naming file:line (``invalid``: how a line
    that does not parse is called; ``lorasp compare`` and the report say "not valid JSON").

    Blank lines are skipped with one warning per file (a record may have been lost when the file was edited)."""

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: a directory; expected a JSONL file (one JSON object per line)")
    blank: list[int] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); expected a JSONL "
                                f"file (one JSON object per line)") from None
            if not line.strip():
                blank.append(lineno)
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: {invalid} ({exc.msg}, column {exc.colno})") from None
            yield lineno, obj
    if blank:
        print(f"warning: {path}: skipped {len(blank)} blank line{'s' if len(blank) > 1 else ''} "
              f"(line {', '.join(map(str, blank[:5]))}{', ...' if len(blank) > 5 else ''})", file=sys.stderr,
              flush=True)


def read_jsonl(path: str | os.PathLike, cls: Type[T]) -> list[T]:
    return [_check_fields(cls, obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path)]


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write dataclasses or dicts as JSONL, atomically (temp file + rename). Returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            obj = dataclasses.asdict(row) if dataclasses.is_dataclass(row) else row
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def from_dict(cls: Type[T], obj: dict, where: str = "<record>") -> T:
    return _check_fields(cls, obj, where)


@dataclass
class EvalTask:
    """One task of an eval suite: a dataset (plugin name + parameters and split), a prompt mode and a scorer.

    ``mode`` is one of ``icl_cot``, ``zs_cot``, ``icl_answer``, ``zs_answer``. ``scorer`` names the answer
    type used to extract and compare answers (``number``, ``option``, ``bool``, ``free``...; see answers.py).
    """

    name: str
    dataset: str
    split: str = "test"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    mode: str = "zs_cot"
    scorer: str = "number"
    limit: int | None = None
    max_new_tokens: int = 256
