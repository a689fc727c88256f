"""BIG-Bench Hard (Suzgun et al. 2022): 27 hard BIG-Bench tasks (generic-ability eval). Eval only: never train."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Iterator

from ...errors import ConfigError
from ...records import Problem
from .base import BuiltinDataset, json_array_with_lines, require

BBH_TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)


def target_kind(target: str) -> str:
    """The answer kind of a BBH target: option / bool / yesno / validity / number / free."""
    t = target.strip()
    if re.fullmatch(r"\([A-R]\)", t):
        return "option"
    if t in ("True", "False"):
        return "bool"
    if t.lower() in ("yes", "no"):
        return "yesno"
    if t in ("valid", "invalid"):
        return "validity"
    if re.fullmatch(r"-?\d+", t):
        return "number"
    return "free"


class BBH(BuiltinDataset):
    """BIG-Bench Hard: one of 27 tasks (parameter ``task``); targets scored by exact match of the final answer."""

    name = "bbh"
    _splits = ("test",)

    def __init__(self, task: str | None = None, data_dir=None):
        super().__init__(data_dir)
        if task is None:
            raise ConfigError(f"bbh: the parameter 'task' is required (one of {', '.join(BBH_TASKS)})")
        if task not in BBH_TASKS:
            close = difflib.get_close_matches(task, BBH_TASKS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (tasks: {', '.join(BBH_TASKS)})"
            raise ConfigError(f"bbh: unknown task {task!r}{hint}")
        self.task = task
        self._files = {"test": f"bbh/bbh/{task}.json"}
        self._hub = {"test": ("lukaemon/bbh", task, "test")}

    def _iter(self, split: str) -> Iterator[Problem]:
        def local(path: Path):
            for i, (line, obj) in enumerate(json_array_with_lines(path)):
                where = f"{path}:{line}: record {i}"
                yield self._problem(i, require(obj, "input", str, where), require(obj, "target", str, where),
                                    {"file": str(path), "line": line})

        def hub(rows, src):
            for i, obj in enumerate(rows):
                yield self._problem(i, obj["input"], obj["target"], {"file": src, "index": i})

        yield from self.source(split, local, hub)

    def _problem(self, i: int, inp: str, target: str, meta: dict) -> Problem:
        meta = dict(meta, dataset="bbh", task=self.task, answer_type=target_kind(target))
        return Problem(id=f"bbh/{self.task}/{i}", question=inp.strip(), answer=target.strip(), meta=meta)
