"""Checkpoint selection: held-out sets, the periodic evaluator and the rules that pick the exported checkpoint.

Specialization trades generic ability for the target skill, and the best in-distribution checkpoint is often not
the best out-of-distribution one (Fu et al., 2023). So ``fit`` scores the model on three held-out sets at
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

**Telling checkpoints apart.** Each checkpoint record also keeps its per-problem results (``correct``), so
checkpoints are compared paired, on the same problems (``lora_spec.stats``). ``prefer_earliest`` exports the
earliest checkpoint that is not significantly worse than the best (exact McNemar p >= 0.05). Real runs score 150 /
150 / 160 problems (a 95% half-width of at most 8 points); the quickstart keeps its 16 / 9 / 8.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .errors import ConfigError, DataError, LoraspError, one_line

SETS = ("in_dist", "ood", "generic")
MODES = ("icl_cot", "zs_cot", "icl_answer", "zs_answer")
SIMPLE_RULES = ("in_dist", "ood", "generic", "loss", "last")
EVAL_SECONDS = "eval_seconds"
# the reserved key of an evaluator's result that carries per-problem correctness, ``{"<set>/<task>": "0110..."}``
# (one character per problem, in the order of ``selection.sets[set].ids[task]``); the trainer moves it from the
# scores to the checkpoint record (``checkpoints[*].correct``), so paired tests survive --resume
CORRECT = "correct"
ALPHA = 0.05  # "significantly worse": exact McNemar two-sided p < ALPHA (lora_spec.stats)

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
        "in-distribution held-out set, 'DATASET[:SPLIT][@K=V],...;limit=N;mode=M;seed=S;max_new_tokens=T' or none "
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
    select_by: str = Field("ood", description="which checkpoint to export: in_dist | ood | generic | loss | last, "
                                              "or weights such as ood=0.7,in_dist=0.3 (ties: earliest step; "
                                              "default ood, in_dist on the quickstart)")

    @field_validator("select_by")
    @classmethod
    def _check_rule(cls, value: str, info: ValidationInfo) -> str:
        """Runs only for an explicit --select-by (defaults are not validated): it must be usable."""
        rule = parse_rule(value)
        if info.data.get("prefer_earliest") and (rule.kind != "score" or len(rule.weights) != 1):
            raise ValueError(f"--prefer-earliest compares checkpoints on one held-out score (in_dist, ood, generic "
                             f"or a per-task score such as ood/svamp), not on {value!r}")
        if rule.kind != "score":
            return value
        if info.data.get("eval_every") == 0:
            raise ValueError(f"{value!r} needs held-out scores, but --eval-every is 0 (set --eval-every N >= 1, "
                             f"or use --select-by last|loss)")
        for key, w in rule.weights:
            st = info.data.get(key.split("/", 1)[0])
            if w > 0 and isinstance(st, HeldOutSet) and not st.enabled:
                raise ValueError(f"{value!r} needs the {key.split('/', 1)[0]} held-out set, which is off")
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


def correct_vector(ckpt: dict, key: str) -> list[bool] | None:
    """A checkpoint's per-problem correctness on a score key: ``in_dist``/``ood``/``generic`` (every task of the
    set, in task order) or ``<set>/<task>``; None when the record has none (older artifacts, custom evaluators)."""
    bits = ckpt.get(CORRECT)
    if not isinstance(bits, dict):
        return None
    parts = [v for k, v in bits.items() if k == key or k.split("/", 1)[0] == key and "/" not in key]
    if not parts or not all(isinstance(v, str) for v in parts):
        return None
    return [ch == "1" for v in parts for ch in v]


def earliest_within_noise(cands: list[dict], best: dict, r: Rule) -> tuple[dict, float | None]:
    """The earliest checkpoint (not pruned from disk) whose paired held-out results on the rule's single score are not
    significantly worse than ``best``'s (exact McNemar p >= ALPHA), with its p-value; ``(best, None)`` when there is
    nothing to compare (no per-problem results, or no earlier checkpoint)."""
    from .stats import mcnemar

    key = r.weights[0][0]
    vb = correct_vector(best, key)
    if vb is None:
        return best, None
    for c in cands:
        if int(c["step"]) >= int(best["step"]):
            break
        if c.get("pruned") or checkpoint_value(c, r) is None:
            continue
        vc = correct_vector(c, key)
        if vc is None or len(vc) != len(vb):
            continue
        p = mcnemar(vb, vc)
        if p >= ALPHA:
            return c, p
    return best, None


def select_checkpoint(checkpoints: list[dict], rule: str | Rule = "last", prefer_earliest: bool = False) -> dict:
    """The checkpoint the rule picks among the trained ones (step > 0). Ties go to the earliest step.

    ``prefer_earliest`` (a rule on one score): the earliest checkpoint, still on disk, that is not significantly
    worse than the best one (:func:`earliest_within_noise`), since fewer updates mean less drift from the base.

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
    if prefer_earliest and r.kind == "score" and len(r.weights) == 1:
        return earliest_within_noise(cands, best, r)[0]
    return best


def keep_set(checkpoints: list[dict], keep: int | None, rule: str | Rule = "last",
             prefer_earliest: bool = False) -> set[int]:
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
        if prefer_earliest:  # the best stays too: later choices are measured against it
            kept.insert(0, int(select_checkpoint(cands, r, prefer_earliest=True)["step"]))
            kept = list(dict.fromkeys(kept))
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
                      delete: bool = True, prefer_earliest: bool = False) -> list[int]:
    """Delete checkpoint directories beyond ``keep`` (see ``keep_set``); their records (scores) stay.

    A pruned record gets ``path: None`` and ``pruned: True``. Returns the pruned steps.
    """
    keep_steps = keep_set(checkpoints, keep, rule, prefer_earliest)
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


def resolve_auto(specs: list[str], train_dataset: str | None, train_params: dict | None = None,
                 splits: list[str] | None = None) -> tuple[list[str], str | None]:
    """Replace ``auto`` by the training dataset's held-out split (``dev`` if it has one, else ``test``).

    Returns ``(specs, warning)``; without a known training dataset ``auto`` is dropped with a warning.
    """
    out, warning = [], None
    for s in specs:
        if s.strip() != "auto":
            out.append(s)
            continue
        if not train_dataset:
            warning = ("in_dist 'auto' needs the training dataset, which this run does not name; the in-distribution "
                       "set is off (set it with --in-dist DATASET:SPLIT, e.g. gsm8k:dev)")
            continue
        split = "dev" if (splits is None or "dev" in splits) else "test"
        params = ",".join(f"{k}={v}" for k, v in (train_params or {}).items()
                          if isinstance(v, (int, str, bool)) and k != "data_dir")
        out.append(f"{train_dataset}:{split}" + (f"@{params}" if params else ""))
    return out, warning


def seeded_slice(problems: list[Any], n: int, seed: int) -> list[Any]:
    """``n`` problems drawn without replacement with the set's seed, kept in file order: the same problems at every
    checkpoint and every rerun, and the same as ``lorasp eval --limit n --seed seed`` on that split (both use
    ``evaluate.seeded_sample``)."""
    from .evaluate import seeded_sample

    return seeded_sample(problems, n, seed)


class HeldOutEvaluator:
    """Scores a model on the held-out sets; an ``evaluator(model, tokenizer, step) -> scores`` for ``train``.

    The problems are drawn once (seeded), here in ``__init__``. Every call generates with
    ``lora_spec.evaluate.generate`` (length-sorted batches, left padding, KV cache, stop sequences, greedy) and
    scores with ``answers.extract_answer``/``answers_match`` exactly like ``lorasp eval`` (strict: the answer must
    be stated in an answer sentence, so a lucky number in a degenerate output earns nothing) -- but all problems of
    the same prompt mode and budget go through one batched generation, instead of one small batch per dataset.

    The scores are flat floats: ``in_dist``, ``ood``, ``generic`` (the set's accuracy), ``<set>/<task>`` per
    dataset or BBH task, and ``eval_seconds``. ``generic`` is the macro average over its BBH tasks (standard BBH
    practice); ``in_dist`` and ``ood`` are micro averages over their problems.
    """

    def __init__(self, options: SelectionOptions, *, train_dataset: str | None = None,
                 train_params: dict | None = None, exclude_ids: Iterable[str] = (), kind: str = "causal",
                 chat: bool | None = None, data_dir: str | None = None, batch_size: int | None = None,
                 progress: bool = False, log: Callable[[str], None] | None = None):
        from .evaluate import make_dataset

        self.kind = kind
        self.chat = chat
        self.data_dir = data_dir
        self.batch_size = batch_size or options.eval_batch_size
        self.progress = progress
        self.log = log or (lambda m: None)
        self.sets: dict[str, SetTasks] = {}
        self.history: list[dict] = []
        self.journal: Path | None = None  # see keep_journal
        self._restored = True
        self.warnings: list[str] = []
        exclude = set(exclude_ids)
        for name in SETS:
            conf: HeldOutSet = getattr(options, name)
            specs = list(conf.datasets)
            if name == "in_dist" and "auto" in [s.strip() for s in specs]:
                splits = None
                if train_dataset:
                    try:
                        splits = make_dataset(train_dataset, train_params, data_dir).splits()
                    except Exception:
                        splits = None
                specs, warn = resolve_auto(specs, train_dataset, train_params, splits)
                if warn:
                    self.warnings.append(warn)
                    self.log(f"warning: {warn}")
            elif "auto" in [s.strip() for s in specs]:
                raise ConfigError(f"--{name.replace('_', '-')}: 'auto' is only for the in-distribution set")
            if not specs:
                continue
            conf = conf.model_copy(update={"datasets": specs})
            parsed = [parse_dataset_spec(s) for s in specs]
            quotas = _per_dataset(conf.limit, len(parsed))
            st = SetTasks(name, conf, [])
            dropped = 0
            for spec, quota in zip(parsed, quotas):
                if quota <= 0:
                    continue
                params = dict(spec.params)
                try:
                    ds = make_dataset(spec.name, params, data_dir)
                    split = spec.split or ("test" if "test" in ds.splits() else ds.splits()[-1])
                    if split not in ds.splits():
                        raise DataError(f"dataset {spec.name!r} has no split {split!r} "
                                        f"(splits: {', '.join(ds.splits())})")
                    pool = list(ds.load(split))
                except LoraspError as exc:
                    if name not in options.model_fields_set and isinstance(exc, DataError) \
                            and "not found" in exc.message:
                        # a *default* held-out set whose files are not here (e.g. the quickstart without
                        # LORASP_DATA_DIR): say so and go on; a set the user asked for is an error
                        w = (f"{name}: {spec.label} skipped, its data is not available here ({exc.message}); "
                             f"set --{name.replace('_', '-')} or LORASP_DATA_DIR to include it")
                        self.warnings.append(w)
                        self.log(f"warning: {w}")
                        continue
                    raise type(exc)(f"--{name.replace('_', '-')} {spec.label}: {exc.message}") from None
                except Exception as exc:
                    raise DataError(f"--{name.replace('_', '-')} {spec.label}: {type(exc).__name__}: "
                                    f"{one_line(exc)}") from None
                if exclude:
                    n0 = len(pool)
                    pool = [p for p in pool if p.id not in exclude]
                    dropped += n0 - len(pool)
                chosen = seeded_slice(pool, quota, conf.seed)
                if not chosen:
                    raise DataError(f"--{name.replace('_', '-')} {spec.label}: split {split!r} has no problems")
                task_name = spec.short
                if task_name in st.problems:
                    task_name = spec.label
                st.problems[task_name] = chosen
                st.tasks.append({"task": task_name, "dataset": spec.name, "split": split, "params": params,
                                 "n": len(chosen)})
            if dropped:
                w = f"{name}: {dropped} held-out problems are also training problems and were left out"
                self.warnings.append(w)
                self.log(f"warning: {w}")
            if st.problems:
                self.sets[name] = st

    # ------------------------------------------------------------------ description

    @property
    def n_problems(self) -> int:
        return sum(len(v) for st in self.sets.values() for v in st.problems.values())

    def describe(self) -> dict[str, Any]:
        """What goes to ``lorasp.json`` ``selection.sets``: per set its datasets, mode, seed and task sizes."""
        out: dict[str, Any] = {}
        for name in SETS:
            st = self.sets.get(name)
            if st is None:
                out[name] = {"datasets": []}
                continue
            c = st.config
            out[name] = {"datasets": list(c.datasets), "limit": c.limit, "mode": c.mode, "seed": c.seed,
                         "max_new_tokens": c.max_new_tokens,
                         "tasks": {t["task"]: t["n"] for t in st.tasks},
                         "splits": {t["task"]: t["split"] for t in st.tasks},
                         "ids": {t: [p.id for p in ps] for t, ps in st.problems.items()}}
        return out

    # ------------------------------------------------------------------ scoring

    def keep_journal(self, path: str | Path, *, resume: bool) -> None:
        """Append every evaluation's predictions to ``path`` (fsynced) as it happens, so that a cut and resumed fit
        still writes the predictions of the evaluations before the cut. A fresh run starts the journal empty; a
        resumed one reads it back at its next evaluation (or when the predictions are written), keeping only the
        steps before that evaluation (a later step's rows come from a run that was cut before its checkpoint)."""
        self.journal = Path(path)
        self._restored = not resume
        if not resume:
            self.journal.unlink(missing_ok=True)

    def restore_journal(self, before_step: int | None = None) -> None:
        """Load the journal's evaluations of steps < ``before_step`` (all when None) into ``history``, once."""
        if self._restored or self.journal is None:
            return
        self._restored = True
        if not self.journal.exists():
            return
        from .records import iter_jsonl, write_jsonl

        by_step: dict[int, list[dict]] = {}
        for _line, row in iter_jsonl(self.journal):
            st = int(row.get("step", -1))
            if before_step is None or st < before_step:
                by_step.setdefault(st, []).append(row)
        known = {h["step"] for h in self.history}
        restored = [{"step": st, "scores": None, "predictions": [{k: v for k, v in r.items() if k != "step"}
                                                                 for r in rows]}
                    for st, rows in sorted(by_step.items()) if st not in known]
        self.history[:0] = restored
        write_jsonl(self.journal, ({"step": h["step"], **p} for h in self.history for p in h["predictions"]))

    def _journal_append(self, step: int, preds: list[dict]) -> None:
        if self.journal is None:
            return
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a", encoding="utf-8") as fh:
            for p in preds:
                fh.write(json.dumps({"step": step, **p}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def __call__(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        from .answers import answers_match, extract_answer
        from .evaluate import generate, scorer_for
        from .prompts import build_prompt, check_mode, stop_sequences, uses_chat
        from .records import EvalTask

        t0 = time.perf_counter()
        use_chat = uses_chat(tokenizer, self.chat) if self.kind == "causal" else False
        # group every problem by (mode, max_new_tokens): one batched generation per group
        groups: dict[tuple[str, int], list[tuple[str, str, Any, EvalTask]]] = {}
        for name, st in self.sets.items():
            mode = check_mode(st.config.mode)
            for t in st.tasks:
                task = EvalTask(name=t["task"], dataset=t["dataset"], split=t["split"], dataset_params=t["params"],
                                mode=mode, scorer="auto")
                budget = st.config.max_new_tokens or task.max_new_tokens
                for p in st.problems[t["task"]]:
                    groups.setdefault((mode, budget), []).append((name, t["task"], p, task))
        correct: dict[tuple[str, str], list[bool]] = {}
        preds: list[dict] = []
        for (mode, budget), rows in groups.items():
            prompts = [build_prompt(p, mode, tokenizer, chat=use_chat, data_dir=self.data_dir) for _, _, p, _ in rows]
            outs = generate(model, tokenizer, prompts, kind=self.kind, max_new_tokens=budget,
                            stop=stop_sequences(mode, use_chat), batch_size=self.batch_size,
                            progress=self.progress, description=f"held-out eval, step {step}")
            for (name, task_name, p, task), o in zip(rows, outs):
                sc = scorer_for(task, p)
                ext = extract_answer(o, sc, strict=True)
                ok = bool(answers_match(ext, p.answer, sc))
                correct.setdefault((name, task_name), []).append(ok)
                preds.append({"set": name, "task": task_name, "id": p.id, "gold": p.answer, "output": o,
                              "extracted": ext, "correct": ok})
        scores: dict[str, float] = {}
        for name, st in self.sets.items():
            per_task = {t["task"]: correct.get((name, t["task"]), []) for t in st.tasks}
            for task_name, oks in per_task.items():
                scores[f"{name}/{task_name}"] = sum(oks) / len(oks) if oks else 0.0
            if name == "generic":  # BBH: macro average over tasks
                accs = [sum(o) / len(o) for o in per_task.values() if o]
                scores[name] = sum(accs) / len(accs) if accs else 0.0
            else:
                allo = [x for o in per_task.values() for x in o]
                scores[name] = sum(allo) / len(allo) if allo else 0.0
        scores[EVAL_SECONDS] = round(time.perf_counter() - t0, 3)
        self.restore_journal(before_step=step)
        self.history.append({"step": step, "scores": dict(scores), "predictions": preds})
        self._journal_append(step, preds)
        scores[CORRECT] = {f"{name}/{t['task']}": "".join("1" if ok else "0"
                                                           for ok in correct.get((name, t["task"]), []))
                           for name, st in self.sets.items() for t in st.tasks}
        from .stats import fmt_acc, macro

        parts = []
        for name, st in self.sets.items():
            oks = [correct.get((name, t["task"]), []) for t in st.tasks]
            if name == "generic":  # macro average over the BBH tasks
                _m, lo, hi = macro([sum(o) for o in oks], [len(o) for o in oks])
                parts.append(f"{name} {scores[name]:.1%} [{100 * lo:.1f}, {100 * hi:.1f}] "
                             f"(n={sum(len(o) for o in oks)})")
            else:
                parts.append(f"{name} {fmt_acc(sum(sum(o) for o in oks), sum(len(o) for o in oks))}")
        self.log(f"held-out eval at step {step}: " + ", ".join(parts) + f" ({scores[EVAL_SECONDS]:.1f}s)")
        return scores


# --------------------------------------------------------------------------------------------- fit wiring


def total_steps(n_examples: int, batch_size: int, grad_accum: int = 1, world: int = 1, epochs: float = 1.0,
                max_steps: int | None = None) -> int:
    """The optimizer steps a fit will run (the trainer's own arithmetic)."""
    if max_steps:
        return int(max_steps)
    per_epoch = (n_examples // max(1, batch_size)) // max(1, grad_accum * world)
    return max(1, int(math.ceil(epochs * max(1, per_epoch))))


QUICKSTART_EVALS = 3  # the quickstart evaluates at step 0 and 3 more times (the last at the end)


def resolve_eval_every(cfg: Any, *, quickstart: bool, total: int) -> int:
    """``eval_every`` as the trainer needs it. An explicit value wins. Unset, it is ``ceil(total / 4)`` on the
    quickstart and whenever ``--select-by`` names a held-out score explicitly (asking to select on OOD accuracy
    asks for the evaluation), and 0 (no held-out evaluation, export the last step) otherwise."""
    if cfg.eval_every is not None:
        return int(cfg.eval_every)
    explicit = "select_by" in cfg.model_fields_set and _rule(cfg.select_by).kind == "score"
    return max(1, int(math.ceil(total / QUICKSTART_EVALS))) if (quickstart or explicit) else 0


def setup_fit_evaluation(cfg: Any, *, quickstart: bool, source: dict, items: list, kind: str, n_examples: int,
                         world: int = 1, log: Callable[[str], None] | None = None
                         ) -> tuple[HeldOutEvaluator | None, int]:
    """For ``fit``: ``(evaluator or None, eval_every)``. No evaluator when ``eval_every`` resolves to 0 or every
    held-out set is off; then the last checkpoint is exported."""
    total = total_steps(n_examples, cfg.batch_size, cfg.grad_accum, world, cfg.epochs, cfg.max_steps)
    every = resolve_eval_every(cfg, quickstart=quickstart, total=total)
    if every <= 0 or not any(getattr(cfg, s).enabled for s in SETS):
        return None, 0  # an explicit --select-by that needs scores was already refused by the config
    from .evaluate import make_dataset  # noqa: F401  (fail early if the eval engine is missing)

    from .config import parse_kv

    # the training dataset's parameters, parsed exactly as teach parsed them (in_dist "auto" = its dev split)
    params = parse_kv(getattr(cfg, "dataset_opt", []) or [], "--dataset-opt") if source.get("kind") == "dataset" \
        else {}
    ev = HeldOutEvaluator(cfg, train_dataset=source.get("dataset"), train_params=params,
                          exclude_ids={getattr(getattr(it, "problem", None), "id", None) for it in items} - {None},
                          kind=kind, chat=getattr(cfg, "chat", None), data_dir=getattr(cfg, "data_dir", None),
                          batch_size=cfg.eval_batch_size, progress=False, log=log)
    if not ev.sets:
        return None, 0
    if log:
        desc = "; ".join(f"{n} {sum(len(v) for v in st.problems.values())} ({', '.join(st.problems)})"
                         for n, st in ev.sets.items())
        log(f"held-out evaluation at step 0, every {every} steps and at the end: {desc}; "
            f"select by {cfg.select_by}")
    return ev, every


def effective_rule(cfg: Any, evaluator: Any) -> str:
    """The rule a fit applies: ``--select-by`` when there are held-out scores; without them an explicit ``loss`` or
    ``last`` still applies (neither needs scores), and anything else falls back to ``last``. The *default* rule
    falls back to the first scored set when the set it names was skipped for want of data."""
    if evaluator is not None:
        r = _rule(cfg.select_by)
        sets = getattr(evaluator, "sets", None)
        if "select_by" not in cfg.model_fields_set and r.kind == "score" and sets is not None \
                and not all(k.split("/")[0] in sets for k, _w in r.weights):
            # the default rule names a default set that was skipped (its data is not here): use what was scored
            return next((s for s in SETS if s in sets), "last")
        return cfg.select_by
    if "select_by" in cfg.model_fields_set and _rule(cfg.select_by).kind in ("loss", "last"):
        return cfg.select_by
    return "last"


def selection_manifest(cfg: Any, evaluator: Any, eval_every: int, chosen: dict | None,
                       train_seconds: float | None = None, eval_seconds: float | None = None) -> dict:
    """The ``selection`` block of ``lorasp.json``."""
    rule = effective_rule(cfg, evaluator)
    out: dict[str, Any] = {"rule": rule, "description": _rule(rule).describe(),
                           "chosen_step": (chosen or {}).get("step"), "eval_every": eval_every,
                           "keep_checkpoints": cfg.keep_checkpoints}
    r = _rule(rule)
    if getattr(cfg, "prefer_earliest", False) and r.kind == "score" and len(r.weights) == 1:
        out["prefer_earliest"] = True
        out["description"] = (f"the earliest checkpoint not significantly worse than the one with the highest "
                              f"{r.weights[0][0]} accuracy (paired exact McNemar test, p >= {ALPHA:g})")
    if evaluator is not None and hasattr(evaluator, "describe"):
        out["sets"] = evaluator.describe()
        if getattr(evaluator, "warnings", None):
            out["warnings"] = list(evaluator.warnings)
    if train_seconds is not None:
        out["train_seconds"] = round(float(train_seconds), 2)
    if eval_seconds is not None:
        out["eval_seconds"] = round(float(eval_seconds), 2)
    return out


PREDICTIONS_FILE = "heldout_predictions.jsonl"


def write_predictions(evaluator: Any, path: str | Path) -> Path | None:
    """Every held-out prediction of every evaluation (step, set, task, id, gold, output, extracted, correct), so that
    any score in the report can be audited. None when there is nothing to write."""
    if hasattr(evaluator, "restore_journal"):  # a resumed fit: the evaluations before the cut
        evaluator.restore_journal()
    hist = getattr(evaluator, "history", None)
    if not hist:
        return None
    from .records import write_jsonl

    rows = ({"step": h["step"], **p} for h in hist for p in h["predictions"])
    write_jsonl(path, rows)
    return Path(path)
