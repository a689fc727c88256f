"""lorasp plugins from a third-party distribution: a unit-conversion dataset and its eval suite."""

from __future__ import annotations

import hashlib
import random
from typing import Iterator

from lora_spec.records import EvalTask, Problem

# (big unit, small unit, factor)
_UNITS = [("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7),
          ("meters", "centimeters", 100), ("kilograms", "grams", 1000), ("dollars", "cents", 100),
          ("feet", "inches", 12), ("yards", "feet", 3), ("gallons", "quarts", 4)]


def _problem(rng: random.Random, index: int, split: str) -> Problem:
    big, small, factor = rng.choice(_UNITS)
    a = rng.randint(2, 12)
    b = rng.randint(1, factor - 1)
    answer = a * factor + b
    question = f"How many {small} are in {a} {big} and {b} {small}?"
    rationale = (f"One of the {big} is {factor} {small}, so {a} {big} are {a} * {factor} = {a * factor} {small}. "
                 f"Adding {b} {small} gives {a * factor} + {b} = {answer}. The answer is {answer}.")
    pid = hashlib.sha1(question.encode()).hexdigest()[:10]
    return Problem(id=f"units-{pid}", question=question, answer=str(answer), rationale=rationale,
                   meta={"split": split, "index": index, "answer_type": "number", "source": "lorasp-example-plugin"})


class UnitsDataset:
    """Seeded two-step unit-conversion word problems (example third-party plugin)."""

    name = "units"

    def __init__(self, seed: int = 0, n_train: int = 500, n_test: int = 100):
        self.seed, self.n = seed, {"train": n_train, "test": n_test}

    def splits(self) -> list[str]:
        return ["train", "test"]

    def load(self, split: str = "train", limit: int | None = None) -> Iterator[Problem]:
        if split not in self.n:
            raise ValueError(f"units: unknown split {split!r} (expected one of {self.splits()})")
        # Train and test come from one stream, deduplicated by question, so they never share a problem.
        rng = random.Random(self.seed)
        seen: set[str] = set()
        buckets: dict[str, list[Problem]] = {"test": [], "train": []}
        order = ["test", "train"]
        i = 0
        while any(len(buckets[s]) < self.n[s] for s in order):
            p = _problem(rng, i, "")
            i += 1
            if p.question in seen:
                continue
            seen.add(p.question)
            s = next(s for s in order if len(buckets[s]) < self.n[s])
            p.meta["split"] = s
            buckets[s].append(p)
        rows = buckets[split]
        yield from rows[:limit] if limit is not None else rows


class UnitsSuite:
    """Unit-conversion word problems, zero-shot CoT (example third-party plugin)."""

    name = "units"

    def __init__(self, limit: int | None = None):
        self.limit = limit

    def tasks(self) -> list[EvalTask]:
        return [EvalTask(name="units", dataset="units", split="test", mode="zs_cot", scorer="number",
                         limit=self.limit, max_new_tokens=96)]
