"""``arith``: the synthetic multi-step arithmetic test split (the embedded default's held-out set)."""

from __future__ import annotations

from ...records import EvalTask
from .base import Suite


class ArithSuite(Suite):
    """Synthetic arith test split (seeded; never shares a problem with its train split)."""

    name = "arith"

    def __init__(self, mode: str = "icl_cot", limit: int | None = None, split: str = "test", seed: int = 0,
                 n_test: int = 500, max_new_tokens: int | None = None):
        super().__init__(mode, limit, max_new_tokens)
        self.split, self.seed, self.n_test = split, int(seed), int(n_test)

    def tasks(self) -> list[EvalTask]:
        return [EvalTask(name="arith" if self.split == "test" else f"arith_{self.split}", dataset="arith",
                         split=self.split, dataset_params={"seed": self.seed, "n_test": self.n_test},
                         mode=self.mode, scorer="auto", limit=self.limit, max_new_tokens=self.budget(160))]
