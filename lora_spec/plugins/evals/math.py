"""``math``: GSM8K (in-distribution) plus the out-of-distribution trio MultiArith, ASDiv and SVAMP."""

from __future__ import annotations

from ...errors import ConfigError
from ...records import EvalTask
from .base import Suite

MATH_DATASETS = ("gsm8k", "multiarith", "asdiv", "svamp")


class MathSuite(Suite):
    """GSM8K test (in-distribution) + MultiArith, ASDiv, SVAMP (out-of-distribution), Fu et al.'s math sets."""

    name = "math"

    def __init__(self, mode: str = "icl_cot", limit: int | None = None, datasets: list[str] | None = None,
                 gsm8k_split: str = "test", max_new_tokens: int | None = None):
        super().__init__(mode, limit, max_new_tokens)
        ds = list(datasets) if datasets else list(MATH_DATASETS)
        bad = [d for d in ds if d not in MATH_DATASETS]
        if bad:
            raise ConfigError(f"math: unknown dataset {bad[0]!r} (expected some of {', '.join(MATH_DATASETS)})")
        self.datasets = ds
        self.gsm8k_split = gsm8k_split

    def tasks(self) -> list[EvalTask]:
        out = []
        for d in self.datasets:
            split = self.gsm8k_split if d == "gsm8k" else "test"
            out.append(EvalTask(name=d if split == "test" else f"{d}_{split}", dataset=d, split=split,
                                mode=self.mode, scorer="auto", limit=self.limit,
                                max_new_tokens=self.budget(256)))
        return out
