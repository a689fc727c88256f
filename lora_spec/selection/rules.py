"""Selection rules: parse ``--select-by``, score a checkpoint record by a rule, pick the exported checkpoint (ties: the
earliest step; ``prefer_earliest``: the earliest one within noise of the best, paired exact McNemar), and prune
checkpoint directories without ever deleting the one the rule would pick."""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

from ..errors import ConfigError, DataError
from ..stats import mcnemar

SETS = ("in_dist", "ood", "generic")
LOSS_KEYS = tuple(f"{s}_loss" for s in SETS)  # a set's reference loss: mean per-token NLL, lower is better
SIMPLE_RULES = ("in_dist", "ood", "generic", *LOSS_KEYS, "loss", "last")
EVAL_SECONDS = "eval_seconds"
# the reserved key of an evaluator's result that carries per-problem correctness, ``{"<set>/<task>": "0110..."}``
# (one character per problem, in the order of ``selection.sets[set].ids[task]``); the trainer moves it from the
# scores to the checkpoint record (``checkpoints[*].correct``), so paired tests survive --resume
CORRECT = "correct"
ALPHA = 0.05  # "significantly worse": exact McNemar two-sided p < ALPHA (lora_spec.stats)



@dataclass(frozen=True)
class Rule:
    """A parsed selection rule: ``kind`` is ``last``, ``loss`` (training loss), ``heldout_loss`` (the lowest
    reference loss of one held-out set, ``in_dist_loss``...) or ``score`` (weights over accuracy keys)."""

    kind: Literal["last", "loss", "heldout_loss", "score"]
    weights: tuple[tuple[str, float], ...] = ()
    text: str = ""

    def describe(self) -> str:
        if self.kind == "last":
            return "the last checkpoint"
        if self.kind == "loss":
            return "the lowest training loss (ties: earliest step)"
        if self.kind == "heldout_loss":
            name = rule_set(self.weights[0][0])
            return f"the lowest {name} reference loss (per-token NLL of the held-out reference solutions; ties: " \
                   f"earliest step)"
        if len(self.weights) == 1:
            return f"the highest {self.weights[0][0]} accuracy (ties: earliest step)"
        terms = " + ".join(f"{w:g}·{k}" for k, w in self.weights)
        return f"the highest {terms} (ties: earliest step)"

    @property
    def metrics(self) -> list[str]:
        return [k for k, _ in self.weights]


_KEY = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def rule_set(key: str) -> str:
    """The held-out set a score key belongs to: ``ood/svamp`` -> ood, ``in_dist_loss`` -> in_dist."""
    head = key.split("/", 1)[0]
    return head[:-len("_loss")] if head in LOSS_KEYS else head


def parse_rule(text: str) -> Rule:
    """``in_dist|ood|generic|in_dist_loss|ood_loss|generic_loss|loss|last``, a score key (``ood/svamp``), or
    ``ood=0.7,in_dist=0.3``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("selection rule is empty (expected in_dist, ood, generic, loss, last or ood=0.7,in_dist=0.3)")
    t = text.strip()
    if t == "last":
        return Rule("last", (), t)
    if t == "loss":
        return Rule("loss", (), t)
    if t in LOSS_KEYS:
        return Rule("heldout_loss", ((t, 1.0),), t)
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
        if k in ("loss", "last", *LOSS_KEYS):
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


def as_rule(rule: str | Rule) -> Rule:
    if isinstance(rule, Rule):
        return rule
    try:
        return parse_rule(rule)
    except ValueError as exc:
        raise ConfigError(f"--select-by: {exc}") from None


def finite_number(x: Any) -> float | None:
    """``x`` as a finite float; None for a bool, None, NaN, infinity or anything that is not a number."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def checkpoint_value(ckpt: dict, rule: str | Rule) -> float | None:
    """The rule's value for one checkpoint (higher is better; loss is negated), or None if it cannot be scored."""
    r = as_rule(rule)
    if r.kind == "last":
        return float(ckpt.get("step", 0))
    if r.kind == "loss":
        v = finite_number(ckpt.get("loss"))
        return None if v is None else -v
    if r.kind == "heldout_loss":
        v = finite_number((ckpt.get("scores") or {}).get(r.weights[0][0]))
        return None if v is None else -v
    scores = ckpt.get("scores") or {}
    total = 0.0
    for k, w in r.weights:
        v = finite_number(scores.get(k))
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
    r = as_rule(rule)
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
    r = as_rule(rule)
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
