"""ASDiv (Miao et al. 2020): 2305 diverse math word problems (OOD eval). CC BY-NC 4.0: non-commercial use only."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from ...answers import format_number, parse_number
from ...errors import ConfigError, DataError
from ...records import Problem, read_text
from .base import BuiltinDataset

_UNIT = re.compile(r"\s*\(([^()]*[A-Za-z][^()]*)\)\s*$")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?|-?\(\d+/\d+\)")
_TIME = re.compile(r"\d{1,2}(?::\d{1,2})+\b.*")


def classify_answer(raw: str) -> tuple[str, str, str | None]:
    """``(answer_type, canonical answer, unit)`` of an ASDiv ``<Answer>``.

    ``9 (apples)`` -> number "9" unit apples; ``5 (years old); 15 (years old)`` -> multi "5; 15";
    ``5:45`` / ``9:03:36 a.m.`` / ``3:4`` -> time (kept verbatim); names, ``Yes``, ``6th`` ... -> free (verbatim).
    """
    raw = raw.strip()
    if ";" in raw:
        parts = [p.strip() for p in raw.split(";") if p.strip()]
        stripped = [_UNIT.sub("", p) for p in parts]
        if all(_NUMBER.fullmatch(s) for s in stripped):
            m = _UNIT.search(parts[0])
            return "multi", "; ".join(format_number(parse_number(s)) for s in stripped), m.group(1) if m else None
        return "free", raw, None
    m = _UNIT.search(raw)
    unit = m.group(1) if m else None
    s = _UNIT.sub("", raw)
    if _TIME.fullmatch(s):
        return "time", raw, unit
    if _NUMBER.fullmatch(s):
        return "number", format_number(parse_number(s)), unit
    return "free", raw, unit


class ASDiv(BuiltinDataset):
    """ASDiv: 2305 diverse math word problems (subset='all', Fu et al.) or the 1218 arithmetic ASDiv-A."""

    name = "asdiv"
    _splits = ("test",)
    _files = {"test": "asdiv/ASDiv.xml"}
    _hub = {"test": ("EleutherAI/asdiv", None, "validation")}

    def __init__(self, data_dir=None, subset: str = "all", numeric_only: bool = False):
        super().__init__(data_dir)
        if subset not in ("all", "asdiv-a"):
            raise ConfigError(f"asdiv: subset must be 'all' or 'asdiv-a', got {subset!r}")
        self.subset = subset
        self.numeric_only = bool(numeric_only)

    def _subset_ids(self) -> set[str] | None:
        if self.subset == "all":
            return None
        ids: set[str] = set()
        for k in range(5):
            p = self.local_file(f"asdiv/nfolds/asdiv-a/fold{k}.txt")
            if p is None:
                raise DataError(f"asdiv: subset 'asdiv-a' needs asdiv/nfolds/asdiv-a/fold{k}.txt under the data "
                                f"directory ({self.data_dir}); set --data-dir or LORASP_DATA_DIR")
            ids |= {ln.strip() for ln in p.read_text().splitlines() if ln.strip()}
        return ids

    def _keep(self, p: Problem, ids: set[str] | None) -> bool:
        if ids is not None and p.meta["asdiv_id"] not in ids:
            return False
        return not (self.numeric_only and p.meta["answer_type"] not in ("number", "multi"))

    def _iter(self, split: str) -> Iterator[Problem]:
        ids = self._subset_ids()

        def local(path: Path):
            text = read_text(path, "ASDiv XML")
            try:
                root = ET.fromstring(text)
            except ET.ParseError as exc:
                line, col = exc.position
                raise DataError(f"{path}:{line}: invalid XML ({exc.msg if hasattr(exc, 'msg') else exc}, "
                                f"column {col})") from None
            # line of each <Problem ID=...>, for error messages
            lines = {m.group(1): text.count("\n", 0, m.start()) + 1
                     for m in re.finditer(r"<Problem\b[^>]*\bID=\"([^\"]+)\"", text)}
            for el in root.iter("Problem"):
                pid = el.get("ID")
                line = lines.get(pid or "", 0)
                where = f"{path}:{line}"
                if not pid:
                    raise DataError(f"{where}: <Problem> without an ID attribute")
                fields = {}
                for tag in ("Body", "Question", "Answer"):
                    child = el.find(tag)
                    if child is None or child.text is None or not child.text.strip():
                        raise DataError(f"{where}: problem {pid} has no <{tag}>")
                    fields[tag] = child.text.strip()
                p = self._problem(pid, fields["Body"], fields["Question"], fields["Answer"],
                                  {"file": str(path), "line": line, "grade": el.get("Grade"),
                                   "solution_type": (el.findtext("Solution-Type") or "").strip(),
                                   "formula": (el.findtext("Formula") or "").strip()})
                if self._keep(p, ids):
                    yield p

        def hub(rows, src):
            for i, obj in enumerate(rows):
                pid = f"hf-{i}"
                p = self._problem(pid, str(obj.get("body", "")), str(obj.get("question", "")),
                                  str(obj.get("answer", "")), {"file": src, "index": i,
                                                               "formula": obj.get("formula")})
                if self._keep(p, None):
                    yield p

        yield from self.source(split, local, hub)

    def _problem(self, pid: str, body: str, question: str, raw: str, meta: dict) -> Problem:
        kind, ans, unit = classify_answer(raw)
        meta = dict(meta, dataset="asdiv", asdiv_id=pid, answer_type=kind, raw_answer=raw, unit=unit)
        return Problem(id=f"asdiv/{pid}", question=f"{body} {question}".strip(), answer=ans, meta=meta)
