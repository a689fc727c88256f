"""Checkpoint selection: held-out sets, the periodic evaluator and the rules that pick the exported checkpoint.

Specialization trades generic ability for the target skill, and the best in-distribution checkpoint is often not
the best out-of-distribution one (Fu et al., 2023). So ``fit`` scores the model on three small held-out sets at
step 0 (the base model, "before"), every ``eval_every`` steps and at the end:

- ``in_dist``: the training distribution's dev split (``gsm8k:dev`` or ``arith:dev``; ``auto`` follows the
  training dataset);
- ``ood``: seeded slices of MultiArith, SVAMP and ASDiv;
- ``generic``: a seeded slice across BIG-Bench Hard tasks.

Each set has a size limit (split evenly over its datasets), a prompt mode and a seed. The scores of every
checkpoint are kept in ``lorasp.json`` (``checkpoints[*].scores``), and ``select_checkpoint`` picks the exported
checkpoint by a rule: ``in_dist``, ``ood``, ``generic`` (highest accuracy), ``loss`` (lowest training loss),
``last``, or a weighted combination such as ``ood=0.7,in_dist=0.3``.

**Ties go to the earliest step.** A checkpoint that reaches the same held-out score after fewer updates has
drifted less from the base model, which is what keeps generic ability (the paper's trade-off), and the rule is
deterministic. Step 0 (the untouched base model) is the "before" reference, never a candidate: an artifact is
always a trained checkpoint. The report says so when the base model beats the chosen checkpoint.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError, DataError, one_line

SETS = ("in_dist", "ood", "generic")
MODES = ("icl_cot", "zs_cot", "icl_answer", "zs_answer")
SIMPLE_RULES = ("in_dist", "ood", "generic", "loss", "last")
EVAL_SECONDS = "eval_seconds"

# --------------------------------------------------------------------------------------------- config


class HeldOutSet(BaseModel):
    """One held-out set: datasets (``name[:split][@param=value,...]``), a total size limit, a prompt mode, a seed.

    On the command line a set is one string: ``"multiarith,svamp,asdiv;limit=12;mode=zs_cot;seed=0"`` (any part
    after the first may be left out), or ``none`` to switch the set off. In YAML it is a mapping with the same keys.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    datasets: list[str] = Field(default_factory=list, description="dataset specs, name[:split][@param=value,...]")
    limit: int = Field(16, ge=1, le=100_000, description="problems in the whole set, split evenly over datasets")
    mode: Literal["icl_cot", "zs_cot", "icl_answer", "zs_answer"] = "zs_cot"
    seed: int = 0
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="generation budget; None: the task's")

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

    def as_string(self) -> str:
        if not self.datasets:
            return "none"
        s = f"{','.join(self.datasets)};limit={self.limit};mode={self.mode};seed={self.seed}"
        return s + (f";max_new_tokens={self.max_new_tokens}" if self.max_new_tokens else "")

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
            raise ValueError(f"expected key=value after ';' (limit, mode, seed, max_new_tokens), got {part!r}")
        k, v = (x.strip() for x in part.split("=", 1))
        k = k.replace("-", "_")
        if k not in ("limit", "mode", "seed", "max_new_tokens"):
            raise ValueError(f"unknown held-out set key {k!r} (expected limit, mode, seed or max_new_tokens)")
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


def default_in_dist() -> HeldOutSet:
    return HeldOutSet(datasets=["auto"], limit=16, mode="zs_cot", max_new_tokens=160)


def default_ood() -> HeldOutSet:
    return HeldOutSet(datasets=["multiarith", "svamp", "asdiv"], limit=12, mode="zs_cot", max_new_tokens=160)


def default_generic() -> HeldOutSet:
    return HeldOutSet(datasets=[f"bbh@task={t}" for t in DEFAULT_BBH_TASKS], limit=8, mode="zs_cot",
                      max_new_tokens=128)


class SelectionOptions(BaseModel):
    """Fields that ``fit``'s config embeds (by inheritance): periodic evaluation and checkpoint selection."""

    eval_every: int = Field(0, ge=0, description="evaluate the held-out sets every N optimizer steps "
                                                 "(also at step 0 and at the end); 0: only before and after")
    select_by: str = Field("ood", description="which checkpoint to export: in_dist | ood | generic | loss | last, "
                                              "or weights such as ood=0.7,in_dist=0.3 (ties: earliest step)")
    keep_checkpoints: int | None = Field(None, ge=1, description="keep at most N checkpoint directories on disk "
                                                                  "(the chosen and the last are always kept)")
    in_dist: HeldOutSet = Field(default_factory=default_in_dist,
                                description="in-distribution held-out set ('auto' = the training dataset's dev split)")
    ood: HeldOutSet = Field(default_factory=default_ood, description="out-of-distribution held-out set")
    generic: HeldOutSet = Field(default_factory=default_generic, description="generic-ability held-out set (BBH)")
    eval_batch_size: int = Field(16, ge=1, le=4096, description="generation batch size of the held-out evaluation")

    @field_validator("select_by")
    @classmethod
    def _check_rule(cls, value: str) -> str:
        parse_rule(value)
        return value


# --------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """A parsed selection rule: ``kind`` is ``last``, ``loss`` or ``score`` (weights over score keys)."""

    kind: Literal["last", "loss", "score"]
    weights: tuple[tuple[str, float], ...] = ()
    text: str = ""

    def describe(self) -> str:
        if self.kind == "last":
            return "the last checkpoint"
        if self.kind == "loss":
            return "the lowest training loss (ties: earliest step)"
        if len(self.weights) == 1:
            return f"the highest {self.weights[0][0]} accuracy (ties: earliest step)"
        terms = " + ".join(f"{w:g}·{k}" for k, w in self.weights)
        return f"the highest {terms} (ties: earliest step)"

    @property
    def metrics(self) -> list[str]:
        return [k for k, _ in self.weights]


_KEY = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def parse_rule(text: str) -> Rule:
    """``in_dist|ood|generic|loss|last``, a score key (``ood/svamp``), or ``ood=0.7,in_dist=0.3``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("selection rule is empty (expected in_dist, ood, generic, loss, last or ood=0.7,in_dist=0.3)")
    t = text.strip()
    if t == "last":
        return Rule("last", (), t)
    if t == "loss":
        return Rule("loss", (), t)
    if "=" not in t and "," not in t:
        if not _KEY.match(t) or (t not in SETS and "/" not in t):
            raise ValueError(f"unknown selection rule {t!r} (expected one of {', '.join(SIMPLE_RULES)}, a per-task "
                             f"score such as ood/svamp, or weights such as ood=0.7,in_dist=0.3)")
        return Rule("score", ((t, 1.0),), t)
    weights: dict[str, float] = {}
    for part in t.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"selection rule {t!r}: expected key=weight, got {part!r}")
        k, w = (x.strip() for x in part.split("=", 1))
        if k in ("loss", "last"):
            raise ValueError(f"selection rule {t!r}: {k!r} cannot be weighted with accuracies; use it alone")
        if not _KEY.match(k) or (k not in SETS and "/" not in k):
            raise ValueError(f"selection rule {t!r}: unknown score {k!r} (expected in_dist, ood, generic "
                             f"or a per-task key such as ood/svamp)")
        try:
            wv = float(w)
        except ValueError:
            raise ValueError(f"selection rule {t!r}: weight of {k!r} is not a number: {w!r}") from None
        if not math.isfinite(wv) or wv < 0:
            raise ValueError(f"selection rule {t!r}: weight of {k!r} must be a finite number >= 0, got {w}")
        if k in weights:
            raise ValueError(f"selection rule {t!r}: {k!r} appears twice")
        weights[k] = wv
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"selection rule {t!r}: at least one weight must be > 0")
    return Rule("score", tuple(weights.items()), t)


def _rule(rule: str | Rule) -> Rule:
    if isinstance(rule, Rule):
        return rule
    try:
        return parse_rule(rule)
    except ValueError as exc:
        raise ConfigError(f"--select-by: {exc}") from None


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def checkpoint_value(ckpt: dict, rule: str | Rule) -> float | None:
    """The rule's value for one checkpoint (higher is better; loss is negated), or None if it cannot be scored."""
    r = _rule(rule)
    if r.kind == "last":
        return float(ckpt.get("step", 0))
    if r.kind == "loss":
        v = _num(ckpt.get("loss"))
        return None if v is None else -v
    scores = ckpt.get("scores") or {}
    total = 0.0
    for k, w in r.weights:
        v = _num(scores.get(k))
        if v is None:
            if w == 0:
                continue
            return None
        total += w * v
    return total


def candidates(checkpoints: Iterable[dict]) -> list[dict]:
    """Checkpoints that can be exported: trained ones (step > 0), in step order."""
    return sorted((c for c in checkpoints if int(c.get("step", 0)) > 0), key=lambda c: int(c["step"]))


def select_checkpoint(checkpoints: list[dict], rule: str | Rule = "last") -> dict:
    """The checkpoint the rule picks among the trained ones (step > 0). Ties go to the earliest step.

    Raises ``DataError`` when no checkpoint can be scored by the rule (e.g. ``--select-by ood`` with the OOD set
    switched off), naming the score keys that are present.
    """
    r = _rule(rule)
    cands = candidates(checkpoints)
    if not cands:
        raise DataError("no trained checkpoint to select from (only the step-0 base model was evaluated)")
    if r.kind == "last":
        return cands[-1]
    best, best_v = None, None
    for c in cands:
        v = checkpoint_value(c, r)
        if v is None:
            continue
        if best_v is None or v > best_v + 1e-12:  # strictly better: ties keep the earlier step
            best, best_v = c, v
    if best is None:
        have = sorted({k for c in cands for k in (c.get("scores") or {}) if k != EVAL_SECONDS})
        what = "a training loss" if r.kind == "loss" else f"the score(s) {', '.join(r.metrics)}"
        raise DataError(f"--select-by {r.text}: no checkpoint has {what} "
                        f"(scores present: {', '.join(have) or 'none'}; is that held-out set switched off?)")
    return best


def keep_set(checkpoints: list[dict], keep: int | None, rule: str | Rule = "last") -> set[int]:
    """Steps whose checkpoint directories to keep: the current choice, the last, then the next best by the rule.

    Pruning can run while training goes on: the checkpoint the rule would choose now is always kept, and a pruned
    one was already beaten by a kept one, so it can never become the final choice.
    """
    cands = [c for c in candidates(checkpoints) if c.get("path")]
    steps = [int(c["step"]) for c in cands]
    if keep is None or len(steps) <= keep:
        return set(steps)
    r = _rule(rule)
    kept: list[int] = []
    try:
        kept.append(int(select_checkpoint(cands, r)["step"]))
    except DataError:
        pass
    if steps[-1] not in kept:
        kept.append(steps[-1])
    # then the best others by the rule (earliest first on ties), unscorable ones last, most recent first
    def order(c: dict):
        v = checkpoint_value(c, r)
        return (0, -v, int(c["step"])) if v is not None else (1, -int(c["step"]), 0)
    for c in sorted(cands, key=order):
        if len(kept) >= keep:
            break
        if int(c["step"]) not in kept:
            kept.append(int(c["step"]))
    return set(kept)


def prune_checkpoints(checkpoints: list[dict], keep: int | None, rule: str | Rule = "last", *,
                      delete: bool = True) -> list[int]:
    """Delete checkpoint directories beyond ``keep`` (see ``keep_set``); their records (scores) stay.

    A pruned record gets ``path: None`` and ``pruned: True``. Returns the pruned steps.
    """
    keep_steps = keep_set(checkpoints, keep, rule)
    pruned = []
    for c in checkpoints:
        step = int(c.get("step", 0))
        if step <= 0 or not c.get("path") or step in keep_steps:
            continue
        if delete:
            p = Path(c["path"])
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
        c["path"] = None
        c["pruned"] = True
        pruned.append(step)
    return pruned


# --------------------------------------------------------------------------------------------- evaluator


@dataclass
class SetTasks:
    name: str  # in_dist | ood | generic
    config: HeldOutSet
    tasks: list[Any]  # EvalTask
    problems: dict[str, list[Any]] = field(default_factory=dict)  # task name -> the seeded slice


def _per_dataset(limit: int, n: int) -> list[int]:
    base, extra = divmod(limit, n)
    return [base + (1 if i < extra else 0) for i in range(n)]
