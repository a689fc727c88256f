"""``bbh``: the 27 BIG-Bench Hard tasks (generic ability), 3-shot CoT by default."""

from __future__ import annotations

from ...errors import ConfigError
from ...records import EvalTask
from ..datasets.bbh import BBH_TASKS
from .base import Suite


class BBHSuite(Suite):
    """BIG-Bench Hard: 27 tasks (or a chosen subset), per-task exact-match accuracy and the macro average."""

    name = "bbh"

    def __init__(self, mode: str = "icl_cot", limit: int | None = None, tasks: list[str] | None = None,
                 max_new_tokens: int | None = None):
        super().__init__(mode, limit, max_new_tokens)
        chosen = list(tasks) if tasks else list(BBH_TASKS)
        bad = [t for t in chosen if t not in BBH_TASKS]
        if bad:
            raise ConfigError(f"bbh: unknown task {bad[0]!r} (tasks: {', '.join(BBH_TASKS)})")
        self.task_names = chosen

    def tasks(self) -> list[EvalTask]:
        return [EvalTask(name=f"bbh/{t}", dataset="bbh", split="test", dataset_params={"task": t}, mode=self.mode,
                         scorer="auto", limit=self.limit, max_new_tokens=self.budget(256))
                for t in self.task_names]
