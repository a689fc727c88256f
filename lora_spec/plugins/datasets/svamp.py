"""SVAMP (Patel et al. 2021): 1000 one-step arithmetic word problems with structural variations (OOD eval)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator

from ...answers import format_number
from ...errors import DataError
from ...records import Problem
from .base import BuiltinDataset, json_array_with_lines, require


def numeric_answer(v, where: str) -> str:
    """A gold answer given as a JSON number (or numeric string) in canonical form; one error naming ``where`` else
    (SVAMP's and MultiArith's files)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise DataError(f"{where}: field 'Answer' must be a number, got {type(v).__name__}")
    try:
        return format_number(Fraction(str(v)))
    except ValueError:
        raise DataError(f"{where}: field 'Answer' must be a number, got {v!r}") from None


class SVAMP(BuiltinDataset):
    """SVAMP: 1000 arithmetic word problems with structural variations (question = Body + " " + Question)."""

    name = "svamp"
    _splits = ("test",)
    _files = {"test": "svamp/SVAMP.json"}
    _hub = {"test": ("ChilleD/SVAMP", None, "train+test")}

    def _iter(self, split: str) -> Iterator[Problem]:
        def local(path: Path):
            for i, (line, obj) in enumerate(json_array_with_lines(path)):
                where = f"{path}:{line}: record {i}"
                yield self._problem(obj, where, {"file": str(path), "line": line})

        def hub(rows, src):
            for i, obj in enumerate(rows):
                yield self._problem(dict(obj), f"{src}[{i}]", {"file": src, "index": i})

        yield from self.source(split, local, hub)

    def _problem(self, obj, where: str, meta: dict) -> Problem:
        pid = require(obj, "ID", str, where)
        body = require(obj, "Body", str, where).strip()
        q = require(obj, "Question", str, where).strip()
        ans = numeric_answer(require(obj, "Answer", (int, float, str), where), where)
        eq = obj.get("Equation")
        meta = dict(meta, dataset="svamp", answer_type="number", equation=eq, type=obj.get("Type"))
        return Problem(id=f"svamp/{pid}", question=f"{body} {q}".strip(), answer=ans, meta=meta)
