"""MultiArith (Roy & Roth 2015): 600 multi-step arithmetic word problems (OOD eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ...errors import DataError
from ...records import Problem
from .base import BuiltinDataset, json_array_with_lines, require
from .svamp import numeric_answer


class MultiArith(BuiltinDataset):
    """MultiArith: 600 multi-step arithmetic word problems (the copy Fu et al. evaluated on)."""

    name = "multiarith"
    _splits = ("test",)
    _files = {"test": "multiarith/MultiArith.json"}
    _hub = {"test": ("ChilleD/MultiArith", None, "train+test")}

    def _iter(self, split: str) -> Iterator[Problem]:
        def local(path: Path):
            for i, (line, obj) in enumerate(json_array_with_lines(path)):
                where = f"{path}:{line}: record {i}"
                sols = require(obj, "lSolutions", list, where)
                if not sols:
                    raise DataError(f"{where}: field 'lSolutions' is empty")
                idx = require(obj, "iIndex", int, where)
                q = require(obj, "sQuestion", str, where).strip()
                yield Problem(id=f"multiarith/{idx}", question=q, answer=numeric_answer(sols[0], where),
                              meta={"dataset": "multiarith", "file": str(path), "line": line, "answer_type": "number",
                                    "equations": obj.get("lEquations")})

        def hub(rows, src):
            for i, obj in enumerate(rows):
                where = f"{src}[{i}]"
                q = obj.get("question") or obj.get("sQuestion") or ""
                a = obj.get("final_ans", obj.get("answer", (obj.get("lSolutions") or [None])[0]))
                yield Problem(id=f"multiarith/{i}", question=str(q).strip(), answer=numeric_answer(a, where),
                              meta={"dataset": "multiarith", "file": src, "index": i, "answer_type": "number"})

        yield from self.source(split, local, hub)
