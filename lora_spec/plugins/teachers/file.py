"""``file`` teacher: import existing teacher outputs (JSON array or JSONL) with a field mapping.

Each record holds a question (or a problem id) and one teacher output (or a list of outputs). Records are
matched to the dataset's problems by ``id_field`` when given, else by the question text after Unicode (NFKC),
whitespace and look-alike-letter normalisation (GSM8K train line 7422 starts with a Cyrillic "А"), then, failing
that, by its letters and digits alone (two staged records have edited spacing/quotes). Several files
may be given (``path=a.json,b.json``): a question's samples are its outputs in file order, so
``--samples 2`` with a Gemini and a Llama file gives one sample of each.

Reads the staged third-party GSM8K teacher files in ``shared/data/gsm8k_teacher_cot/``
(``{"instruction": ..., "output": ...}``; see SOURCES.md for their licence caveats: model outputs whose
providers' terms may restrict training other models on them).
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from pathlib import Path

from ...errors import ConfigError, DataError
from ...records import Sample, TeacherRequest, iter_jsonl, read_text

_QUESTION_FIELDS = ("instruction", "question", "input", "prompt", "query")
_TEXT_FIELDS = ("output", "response", "completion", "rationale", "cot", "text", "answer")
# Cyrillic/Greek capitals that look like Latin ones (enough for the data we know of)
_LOOKALIKE = str.maketrans({"А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
                            "С": "C", "Т": "T", "Х": "X", "а": "a", "е": "e", "о": "o", "р": "p", "с": "c",
                            "у": "y", "х": "x", "Α": "A", "Β": "B", "Ε": "E", "Ο": "O"})


def normalize_question(q: str) -> str:
    q = unicodedata.normalize("NFKC", q).translate(_LOOKALIKE)
    return " ".join(q.split()).casefold()


def loose_key(q: str) -> str:
    """Letters and digits only: the fallback match for copies whose spacing or quotes were edited
    (GSM8K train 204 "for$ 4" vs "for $4"; 5715 'Eat "N Go' vs "Eat 'N Go")."""
    return "".join(ch for ch in normalize_question(q) if ch.isalnum())


def _records(path: Path) -> list[tuple[str, object]]:
    """(where, record) for a JSON array/object-of-list file or a JSONL file."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: a directory; expected a JSON or JSONL file of teacher outputs")
    text = read_text(path, "a JSON or JSONL file of teacher outputs")
    if not text.strip():
        raise DataError(f"{path}: empty file; expected teacher outputs (a JSON array or JSONL records)")
    if path.suffix == ".jsonl" or (text.lstrip()[:1] == "{" and path.suffix != ".json"):
        return [(f"{path}:{ln}", obj) for ln, obj in iter_jsonl(path)]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of records (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return [(f"{path}[{i}]", obj) for i, obj in enumerate(data)]


class FileTeacher:
    """Imports existing teacher outputs (JSON/JSONL) with a field mapping; matches problems by id or question."""

    name = "file"
    batch_size = 1024
    # an output missing from the files is "not available": asking again can never produce it, so a run is not
    # incomplete because of it (lora_spec.teach reports the count once)
    missing_is_final = True

    def __init__(self, path: str | list[str] | None = None, question_field: str | None = None,
                 text_field: str | None = None, id_field: str | None = None, model: str | None = None):
        if not path:
            raise ConfigError("teacher 'file' needs a path: --teacher-opt path=FILE[,FILE...]")
        paths = path if isinstance(path, list) else [p for p in str(path).split(",") if p.strip()]
        self.paths = [Path(os.path.expanduser(p.strip())) for p in paths]
        self.question_field, self.text_field, self.id_field = question_field, text_field, id_field
        self.label = model or ",".join(p.name for p in self.paths)
        self.by_id: dict[str, list[str]] = {}
        self.by_question: dict[str, list[str]] = {}
        self.by_loose: dict[str, list[str]] = {}
        self.records = 0
        digest = hashlib.sha256(json.dumps([question_field, text_field, id_field]).encode())
        for p in self.paths:
            before = self.records
            self._load(p)
            if self.records == before:
                raise DataError(f"{p}: holds no teacher output records")
            digest.update(hashlib.sha256(p.read_bytes()).digest())
        self._fp = f"file:{self.label}:{digest.hexdigest()[:12]}"

    def _field(self, obj: dict, explicit: str | None, candidates: tuple[str, ...], what: str, where: str) -> str:
        if explicit:
            if explicit not in obj:
                raise DataError(f"{where}: missing field {explicit!r} ({what}); record has {sorted(obj)}")
            return explicit
        for c in candidates:
            if c in obj:
                return c
        raise DataError(f"{where}: no {what} field (looked for {', '.join(candidates)}); record has {sorted(obj)}; "
                        f"set --teacher-opt {'question' if what == 'question' else 'text'}_field=NAME")

    def _load(self, path: Path) -> None:
        for where, obj in _records(path):
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            tf = self._field(obj, self.text_field, _TEXT_FIELDS, "text", where)
            outs = obj[tf] if isinstance(obj[tf], list) else [obj[tf]]
            if not all(isinstance(o, str) for o in outs):
                raise DataError(f"{where}: field {tf!r} must be a string or a list of strings")
            outs = [o.strip() for o in outs]
            if self.id_field:
                if self.id_field not in obj:
                    raise DataError(f"{where}: missing field {self.id_field!r} (id)")
                self.by_id.setdefault(str(obj[self.id_field]), []).extend(outs)
            else:
                qf = self._field(obj, self.question_field, _QUESTION_FIELDS, "question", where)
                if not isinstance(obj[qf], str):
                    raise DataError(f"{where}: field {qf!r} must be a string")
                self.by_question.setdefault(normalize_question(obj[qf]), []).extend(outs)
                self.by_loose.setdefault(loose_key(obj[qf]), []).extend(outs)
            self.records += 1

    def fingerprint(self) -> str:
        return self._fp

    @property
    def max_samples(self) -> int:
        """The most outputs any question has in the files: more samples than that are never available."""
        lists = self.by_id.values() if self.id_field else self.by_question.values()
        return max((len(v) for v in lists), default=0)

    @property
    def source(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def describe(self) -> dict:
        return {"teacher": "file", "paths": [str(p) for p in self.paths], "records": self.records,
                "question_field": self.question_field, "text_field": self.text_field, "id_field": self.id_field}

    def outputs(self, req: TeacherRequest) -> list[str]:
        if self.id_field:
            return self.by_id.get(req.problem.id, [])
        found = self.by_question.get(normalize_question(req.problem.question))
        if found is None:
            found = self.by_loose.get(loose_key(req.problem.question), [])
        return found

    def generate(self, requests: list[TeacherRequest]) -> list[list[Sample]]:
        out = []
        for req in requests:
            outs = self.outputs(req)
            row = []
            for i in range(req.first_index, req.first_index + req.n):
                ok = i < len(outs)
                err = None if ok else (f"no teacher output #{i} for problem {req.problem.id} in "
                                       f"{self.source} ({len(outs)} found)")
                row.append(Sample(problem_id=req.problem.id, sample_index=i, prompt_id=req.prompt_id,
                                  text=outs[i] if ok else "", finish_reason="stop" if ok else None,
                                  teacher=self._fp, error=err))
            out.append(row)
        return out
