"""Held-out set configuration: ``HeldOutSet`` (``--in-dist``/``--ood``/``--generic``), dataset specs, the real and
quickstart defaults, and ``SelectionOptions``, the selection fields that ``FitConfig`` inherits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .rules import parse_rule, rule_set

MODES = ("icl_cot", "zs_cot", "icl_answer", "zs_answer")
SET_KEYS = ("limit", "mode", "seed", "max_new_tokens", "score", "calculator")  # after a set string's datasets


class HeldOutSet(BaseModel):
    """One held-out set: datasets (``name[:split][@param=value,...]``), a total size limit, a prompt mode, a seed,
    and what is scored: ``score=accuracy`` (default) generates and judges answers; ``score=both`` also measures the
    reference loss (the mean per-token NLL of each problem's reference solution, in the set's prompt mode: a
    forward pass, no generation); ``score=loss`` only the loss, for cheap dev sweeps.

    On the command line a set is one string: ``"multiarith,svamp,asdiv;limit=12;mode=zs_cot;seed=0"`` (any part
    after the first may be left out), or ``none`` to switch the set off. In YAML it is a mapping with the same keys.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    datasets: list[str] = Field(default_factory=list, description="dataset specs, name[:split][@param=value,...]")
    limit: int = Field(16, ge=1, le=100_000, description="problems in the whole set, split evenly over datasets")
    mode: Literal["icl_cot", "zs_cot", "icl_answer", "zs_answer"] = "zs_cot"
    seed: int = 0
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="generation budget; None: the task's")
    score: Literal["accuracy", "both", "loss"] = Field("accuracy", description="accuracy (generate and judge), "
                                                       "loss (reference NLL, no generation) or both")
    calculator: bool = Field(False, description="generate with lorasp's decode-time calculator (as `lorasp eval "
                                                "--calculator`): choose checkpoints for a deployment that has it")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_set_string(value)
        return value

    @field_validator("datasets")
    @classmethod
    def _check_specs(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_dataset_spec(spec)  # raises ValueError with a clear message
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.datasets)

    @property
    def scores_accuracy(self) -> bool:
        return self.enabled and self.score != "loss"

    @property
    def scores_loss(self) -> bool:
        return self.enabled and self.score != "accuracy"

    def as_string(self) -> str:
        if not self.datasets:
            return "none"
        s = f"{','.join(self.datasets)};limit={self.limit};mode={self.mode};seed={self.seed}"
        s += f";max_new_tokens={self.max_new_tokens}" if self.max_new_tokens else ""
        s += f";score={self.score}" if self.score != "accuracy" else ""
        return s + (";calculator=1" if self.calculator else "")

    def __str__(self) -> str:  # what --help shows as the default
        return self.as_string()


def parse_set_string(text: str) -> dict[str, Any]:
    text = text.strip()
    if text.lower() in ("", "none", "off", "no"):
        return {"datasets": []}
    parts = [p.strip() for p in text.split(";") if p.strip()]
    out: dict[str, Any] = {}
    first = parts[0]
    if "=" in first.split("@", 1)[0]:  # "limit=12" with no datasets
        raise ValueError(f"a held-out set string starts with its datasets, e.g. 'multiarith,svamp;limit=12' "
                         f"(got {text!r})")
    out["datasets"] = _split_specs(first)
    for part in parts[1:]:
        if "=" not in part:
            raise ValueError(f"expected key=value after ';' ({', '.join(SET_KEYS)}), got {part!r}")
        k, v = (x.strip() for x in part.split("=", 1))
        k = k.replace("-", "_")
        if k not in SET_KEYS:
            raise ValueError(f"unknown held-out set key {k!r} (expected {', '.join(SET_KEYS[:-1])} or {SET_KEYS[-1]})")
        out[k] = v
    return out


def _split_specs(text: str) -> list[str]:
    """Split ``a,b@x=1,y=2,c`` on commas that start a new dataset (not the ones between @ parameters)."""
    specs: list[str] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        if specs and "@" in specs[-1] and "=" in piece and "@" not in piece and ":" not in piece.split("=")[0]:
            specs[-1] += "," + piece  # another parameter of the previous spec
        else:
            specs.append(piece)
    return specs


_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str | None
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in self.params)
        return self.name + (f":{self.split}" if self.split else "") + (f"@{p}" if p else "")

    @property
    def short(self) -> str:
        """A short task label: the dataset, or the value of its single parameter (BBH task name)."""
        if len(self.params) == 1:
            return str(self.params[0][1])
        return self.name if not self.params else self.label


def _coerce(v: str) -> Any:
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """``gsm8k:dev``, ``svamp``, ``bbh@task=date_understanding``, ``auto`` (the training dataset)."""
    s = spec.strip()
    params: list[tuple[str, Any]] = []
    if "@" in s:
        s, ptext = s.split("@", 1)
        for kv in ptext.split(","):
            if not kv.strip():
                continue
            if "=" not in kv:
                raise ValueError(f"dataset spec {spec!r}: expected param=value after '@', got {kv!r}")
            k, v = (x.strip() for x in kv.split("=", 1))
            params.append((k, _coerce(v)))
    name, _, split = s.partition(":")
    name, split = name.strip(), split.strip() or None
    if not name or not _NAME.match(name) or (split is not None and not _NAME.match(split)):
        raise ValueError(f"dataset spec {spec!r}: expected name[:split][@param=value,...], e.g. 'gsm8k:dev' "
                         f"or 'bbh@task=navigate'")
    return DatasetSpec(name, split, tuple(params))


# The generic slice: BBH tasks whose answers are short and well defined (options, booleans, numbers),
# across the four BBH families (arithmetic/algorithmic, logical, language, world knowledge).
DEFAULT_BBH_TASKS = ("boolean_expressions", "date_understanding", "navigate", "object_counting",
                     "sports_understanding", "web_of_lies", "logical_deduction_three_objects", "causal_judgement")


# Real runs: sets large enough to tell checkpoints apart. With 150 problems the 95% Wilson interval of any accuracy
# is at most +-7.9 points (+-6.4 at 20%); the generic score is a macro average over 8 BBH tasks of 20 problems each.
# Generation budgets follow the answers' lengths in SmolLM2 tokens: GSM8K's reference CoT (+ "The answer is X.") is
# 90 tokens at the median, 186 at the 95th and 223 at the 99th percentile (dev split), so 192 cuts 4.5% of them
# (128 cut 18%); the OOD sets are 1-2 step problems, and GSM8K's 1-2 step solutions are 90 tokens at the 95th, 118
# at the 99th percentile (112 cuts 1.3%); a BBH answer-only target is at most 7 tokens. README: the cost.
REAL_IN_DIST = {"datasets": ["auto"], "limit": 150, "mode": "zs_cot", "max_new_tokens": 192}
REAL_OOD = {"datasets": ["multiarith", "svamp", "asdiv"], "limit": 150, "mode": "zs_cot", "max_new_tokens": 112}
REAL_GENERIC = {"datasets": [f"bbh@task={t}" for t in DEFAULT_BBH_TASKS], "limit": 160, "mode": "zs_answer",
                "max_new_tokens": 16}
# The quickstart (lorasp fit with no data source) keeps its small, fast sets: 16 arith dev, 9 OOD, 8 BBH problems.
QUICKSTART_SETS = {
    "in_dist": {"datasets": ["auto"], "limit": 16, "mode": "zs_cot", "max_new_tokens": 128},
    "ood": {"datasets": ["multiarith", "svamp", "asdiv"], "limit": 9, "mode": "zs_cot", "max_new_tokens": 128},
    "generic": {"datasets": [f"bbh@task={t}" for t in DEFAULT_BBH_TASKS], "limit": 8, "mode": "zs_answer",
                "max_new_tokens": 16},
}


def default_in_dist() -> HeldOutSet:
    return HeldOutSet(**REAL_IN_DIST)


def default_ood() -> HeldOutSet:
    return HeldOutSet(**REAL_OOD)


def default_generic() -> HeldOutSet:
    # answer-only: BBH answers are short (an option, True/False, a number), so this costs a few tokens per problem
    return HeldOutSet(**REAL_GENERIC)


def quickstart_sets(cfg: Any) -> dict[str, HeldOutSet]:
    """The quickstart's small held-out sets, for every set the user did not give explicitly."""
    return {k: HeldOutSet(**v) for k, v in QUICKSTART_SETS.items() if k not in cfg.model_fields_set}


class SelectionOptions(BaseModel):
    """Fields that ``fit``'s config embeds (by inheritance): periodic evaluation and checkpoint selection."""

    eval_every: int | None = Field(None, ge=0, description="score the held-out sets at step 0, every N optimizer "
                                   "steps and at the end, and export the checkpoint --select-by picks; 0: no "
                                   "held-out evaluation, export the last step (default: ceil(steps/3) on the "
                                   "quickstart or when --select-by is given, else 0)")
    keep_checkpoints: int | None = Field(None, ge=1, description="keep at most N checkpoint directories on disk "
                                                                  "(the chosen and the last are always kept)")
    in_dist: HeldOutSet = Field(default_factory=default_in_dist, description=(
        "in-distribution held-out set, 'DATASET[:SPLIT][@K=V],...;limit=N;mode=M;seed=S;max_new_tokens=T;"
        "score=accuracy|loss|both' or none "
        f"('auto': the training dataset's dev split) [default: {default_in_dist().as_string()}; the quickstart: "
        f"limit=16, 128 tokens]"))
    ood: HeldOutSet = Field(default_factory=default_ood, description=(
        f"out-of-distribution held-out set (same form) [default: {default_ood().as_string()}; the quickstart: "
        f"limit=9, 128 tokens]"))
    generic: HeldOutSet = Field(default_factory=default_generic, description=(
        f"generic-ability held-out set (same form) [default: {default_generic().as_string()}; the quickstart: "
        f"limit=8]"))
    eval_batch_size: int = Field(32, ge=1, le=4096, description="rows in flight in the held-out evaluation's "
                                 "continuous batching")
    prefer_earliest: bool = Field(False, description="export the earliest trained checkpoint that is not "
                                  "significantly worse than the best by --select-by (paired exact McNemar test on "
                                  "the same held-out problems, p >= 0.05); needs a rule on one score")
    # after the sets, so that its validator sees them
    select_by: str = Field("ood", description="which checkpoint to export: in_dist | ood | generic (accuracy), "
                                              "in_dist_loss | ood_loss | generic_loss (the lowest reference loss "
                                              "on that held-out set, which needs score=loss|both), loss (training loss) | last, or weights such "
                                              "as ood=0.7,in_dist=0.3 (ties: earliest step; default ood, in_dist "
                                              "on the quickstart)")

    @field_validator("select_by")
    @classmethod
    def _check_rule(cls, value: str, info: ValidationInfo) -> str:
        """Runs only for an explicit --select-by (defaults are not validated): it must be usable."""
        rule = parse_rule(value)
        if info.data.get("prefer_earliest") and (rule.kind != "score" or len(rule.weights) != 1):
            raise ValueError(f"--prefer-earliest compares checkpoints on one held-out score (in_dist, ood, generic "
                             f"or a per-task score such as ood/svamp), not on {value!r}")
        if rule.kind not in ("score", "heldout_loss"):
            return value
        if info.data.get("eval_every") == 0:
            raise ValueError(f"{value!r} needs held-out scores, but --eval-every is 0 (set --eval-every N >= 1, "
                             f"or use --select-by last|loss)")
        for key, w in rule.weights:
            name = rule_set(key)
            st = info.data.get(name)
            if w <= 0 or not isinstance(st, HeldOutSet):
                continue
            if not st.enabled:
                raise ValueError(f"{value!r} needs the {name} held-out set, which is off")
            if rule.kind == "heldout_loss" and not st.scores_loss:
                raise ValueError(f"{value!r} needs the {name} set's reference loss, but it scores only accuracy "
                                 f"(set score=both or score=loss in --{name.replace('_', '-')})")
            if rule.kind == "score" and not st.scores_accuracy:
                raise ValueError(f"{value!r} needs the {name} set's accuracy, but it scores only the loss "
                                 f"(set score=both in --{name.replace('_', '-')}, or select by {name}_loss)")
        return value
