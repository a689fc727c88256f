"""GSM8K (Cobbe et al. 2021): grade-school math, with a dev split carved from train."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Iterable, Iterator

from ...answers import parse_number, format_number
from ...errors import ConfigError, DataError
from ...records import Problem, iter_jsonl
from .base import BuiltinDataset, require

_CALC = re.compile(r"<<[^<>]*>>")


def clean_solution(solution: str) -> tuple[str, str]:
    """``(rationale, answer)`` from a GSM8K solution: calculator annotations dropped, ``#### N`` split off."""
    if "####" not in solution:
        raise ValueError("no '#### <answer>' line")
    body, _, ans = solution.rpartition("####")
    ans = ans.strip().replace(",", "")
    v = parse_number(ans)
    if v is None:
        raise ValueError(f"answer {ans!r} after '####' is not a number")
    rationale = _CALC.sub("", body).strip()
    return rationale, format_number(v)


class GSM8K(BuiltinDataset):
    """GSM8K grade-school math: train / dev (carved from train, seeded or the paper's index) / test."""

    name = "gsm8k"
    _splits = ("train", "dev", "test")
    _files = {"train": "gsm8k/train.jsonl", "dev": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
    _hub = {"train": ("openai/gsm8k", "main", "train"), "dev": ("openai/gsm8k", "main", "train"),
            "test": ("openai/gsm8k", "main", "test")}

    def __init__(self, data_dir: str | os.PathLike | None = None, dev_size: int = 200, dev_seed: int = 0,
                 dev_index: str | None = None):
        """``dev_index``: ``"paper"`` for gsm8k_prompts/validation_index.npy (Fu et al.), or a .npy/.txt path."""
        super().__init__(data_dir)
        if int(dev_size) < 0:
            raise ConfigError(f"gsm8k: dev_size must be >= 0, got {dev_size}")
        self.dev_size = int(dev_size)
        self.dev_seed = int(dev_seed)
        self.dev_index = dev_index
        self._dev: set[int] | None = None

    # ------------------------------------------------------------------ dev split

    def dev_indices(self, n_train: int | None = None) -> set[int]:
        """0-based indices into train.jsonl that form the dev split (train never yields them)."""
        if self._dev is not None:
            return self._dev
        if self.dev_index:
            self._dev = self._read_index(self.dev_index)
        else:
            n = n_train if n_train is not None else sum(1 for _ in self._rows("train"))
            if self.dev_size > n:
                raise ConfigError(f"gsm8k: dev_size {self.dev_size} is larger than train ({n})")
            self._dev = set(random.Random(self.dev_seed).sample(range(n), self.dev_size))
        return self._dev

    def _read_index(self, spec: str) -> set[int]:
        if spec == "paper":
            p = self.local_file("gsm8k_prompts/validation_index.npy")
            if p is None:
                raise DataError(f"gsm8k: dev_index 'paper' needs gsm8k_prompts/validation_index.npy under the data "
                                f"directory ({self.data_dir}); set --data-dir or LORASP_DATA_DIR")
        else:
            p = Path(spec)
            if not p.exists():
                raise DataError(f"gsm8k: dev_index file {p} not found")
        if p.suffix == ".npy":
            import numpy as np

            try:
                arr = np.load(p)
            except Exception as exc:
                raise DataError(f"{p}: not a readable .npy index ({type(exc).__name__})") from None
            return {int(x) for x in arr.reshape(-1)}
        out = set()
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.add(int(line.strip()))
                except ValueError:
                    raise DataError(f"{p}:{i}: expected an integer index, got {line.strip()!r}") from None
        return out

    # ------------------------------------------------------------------ rows

    def _rows(self, split: str) -> Iterator[Problem]:
        file_split = "test" if split == "test" else "train"

        def local(path: Path) -> Iterable[Problem]:
            for idx, (lineno, obj) in enumerate(iter_jsonl(path)):
                where = f"{path}:{lineno}"
                q = require(obj, "question", str, where)
                sol = require(obj, "answer", str, where)
                yield self._problem(file_split, idx, q, sol, where, {"file": str(path), "line": lineno})

        def hub(rows, src):
            for idx, obj in enumerate(rows):
                yield self._problem(file_split, idx, obj["question"], obj["answer"], f"{src}[{idx}]",
                                    {"file": src, "index": idx})

        yield from self.source(file_split, local, hub)

    def _problem(self, split: str, idx: int, q: str, sol: str, where: str, meta: dict) -> Problem:
        try:
            rationale, ans = clean_solution(sol)
        except ValueError as exc:
            raise DataError(f"{where}: field 'answer': {exc}") from None
        meta = dict(meta, dataset="gsm8k", split=split, index=idx, answer_type="number")
        return Problem(id=f"gsm8k/{split}/{idx}", question=q.strip(), answer=ans, rationale=rationale, meta=meta)

    def _iter(self, split: str) -> Iterator[Problem]:
        if split == "test":
            yield from self._rows("test")
            return
        rows = list(self._rows("train"))
        dev = self.dev_indices(len(rows))
        bad = [i for i in dev if not 0 <= i < len(rows)]
        if bad:
            raise DataError(f"gsm8k: dev index {bad[0]} is out of range for train ({len(rows)} rows)")
        for p in rows:
            if (p.meta["index"] in dev) == (split == "dev"):
                if split == "dev":
                    p.meta["split"] = "dev"
                yield p
