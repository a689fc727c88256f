"""Statistics for accuracies measured on a finite set of problems: intervals and paired comparisons.

Every accuracy lorasp shows is a proportion ``k/n``; every comparison it makes (before vs after, one checkpoint vs
another, one eval run vs another) is on the *same* problems, so it is paired. The API is small:

- ``wilson(k, n) -> (lo, hi)``: the 95% Wilson score interval of ``k/n`` (scipy's
  ``binomtest(k, n).proportion_ci(method="wilson")``). Unlike the normal ("Wald") interval it stays inside [0, 1]
  and is not degenerate at 0/n or n/n.
- ``mcnemar(a, b) -> p``: the exact McNemar test of two paired correct/incorrect vectors: a two-sided exact
  binomial test (scipy ``binomtest``, p = 0.5) on the discordant pairs, the problems that exactly one side solved.
- ``paired(a, b) -> dict``: the change from ``a`` to ``b`` in accuracy points with Newcombe's paired-difference
  interval (Newcombe 1998, "Improved confidence intervals for the difference between binomial proportions based on
  paired data", method 10: the two marginal Wilson intervals combined by square-and-add with the continuity-
  corrected correlation of the pair), the McNemar p-value and a ``within_noise`` flag (p >= 0.05: the data do not
  show a difference).
- ``macro(ks, ns)`` / ``macro_paired(results)``: the same for a macro average over tasks (equal task sizes: the
  pooled Wilson interval; otherwise the MOVER combination of the per-task intervals).
- ``paired_loss(a, b) -> dict``: the change of a reference loss (mean per-token NLL over problems, see
  ``lora_spec.selection``) from ``a`` to ``b`` on the same problems, with a seeded paired bootstrap interval over
  problems and its two-sided bootstrap p-value.

``a`` and ``b`` are sequences of booleans in the same problem order.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

ALPHA = 0.05  # two-sided; "within noise" means p >= ALPHA
CONFIDENCE = 1 - ALPHA

__all__ = ["ALPHA", "CONFIDENCE", "wilson", "mcnemar", "newcombe_paired", "paired", "macro", "macro_paired",
           "paired_loss", "fmt_paired_loss", "fmt_interval", "fmt_acc", "fmt_p", "fmt_paired"]


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``k/n`` as fractions ``(lo, hi)``; ``(0.0, 1.0)`` when ``n`` is 0
    (no problems, no information)."""
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson: expected 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def _table(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, int, int]:
    """(both right, only b right, only a right, both wrong) of two paired vectors."""
    if len(a) != len(b):
        raise ValueError(f"paired vectors differ in length: {len(a)} vs {len(b)}")
    both = only_b = only_a = neither = 0
    for x, y in zip(a, b):
        x, y = bool(x), bool(y)
        if x and y:
            both += 1
        elif y:
            only_b += 1
        elif x:
            only_a += 1
        else:
            neither += 1
    return both, only_b, only_a, neither


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of paired vectors ``a``, ``b`` (1.0 when no problem is discordant)."""
    _both, only_b, only_a, _neither = _table(a, b)
    d = only_a + only_b
    if d == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(only_b, d, 0.5).pvalue))


def newcombe_paired(both: int, only_b: int, only_a: int, neither: int,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for ``p_b - p_a`` from the paired 2x2 table, as fractions."""
    n = both + only_b + only_a + neither
    if n == 0:
        return -1.0, 1.0
    pb, pa = (both + only_b) / n, (both + only_a) / n
    lb, ub = wilson(both + only_b, n, confidence)
    la, ua = wilson(both + only_a, n, confidence)
    # correlation of the pair, continuity-corrected as Newcombe does (0 for a degenerate margin)
    margins = (both + only_b) * (only_a + neither) * (both + only_a) * (only_b + neither)
    phi = 0.0
    if margins > 0:
        cross = both * neither - only_b * only_a
        if cross > n / 2:
            phi = (cross - n / 2) / math.sqrt(margins)
        elif cross < 0:
            phi = cross / math.sqrt(margins)
    d = pb - pa
    lo = d - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    hi = d + math.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def paired(a_correct: Sequence[bool], b_correct: Sequence[bool], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Compare ``b`` with ``a`` on the same problems (same order).

    Returns ``n``, ``a``/``b`` (accuracies as fractions) with their Wilson intervals ``a_ci``/``b_ci``, ``delta``
    (b - a, in accuracy **points**), ``delta_ci`` (Newcombe's paired interval, points), ``only_a``/``only_b``
    (problems only that side solved), ``p`` (exact McNemar) and ``within_noise`` (p >= 0.05).
    """
    both, only_b, only_a, neither = _table(a_correct, b_correct)
    n = both + only_b + only_a + neither
    ka, kb = both + only_a, both + only_b
    lo, hi = newcombe_paired(both, only_b, only_a, neither, confidence)
    p = mcnemar(a_correct, b_correct)
    return {"n": n, "a": ka / n if n else 0.0, "b": kb / n if n else 0.0,
            "a_ci": list(wilson(ka, n, confidence)), "b_ci": list(wilson(kb, n, confidence)),
            "delta": 100.0 * (kb - ka) / n if n else 0.0, "delta_ci": [100.0 * lo, 100.0 * hi],
            "only_a": only_a, "only_b": only_b, "p": p, "within_noise": bool(p >= 1 - confidence)}


def macro(ks: Sequence[int], ns: Sequence[int], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The macro average of the per-task accuracies ``k_t/n_t`` and its interval: ``(mean, lo, hi)``.

    When every task has the same n, the macro average *is* the pooled accuracy, and its interval is the Wilson
    interval of the pool. Otherwise the per-task Wilson intervals are combined by MOVER (Zou & Donner 2008,
    "Construction of confidence limits about effect measures": square-and-add of the distances to each task's
    limits, weight 1/T each), the same construction as Newcombe's difference interval; the tasks are independent.
    """
    if len(ks) != len(ns) or not ks:
        raise ValueError("macro: expected one (k, n) per task, at least one task")
    t = len(ks)
    if len(set(ns)) == 1:
        lo, hi = wilson(sum(ks), sum(ns), confidence)
        return (sum(ks) / sum(ns) if ns[0] else 0.0), lo, hi
    ps = [k / n if n else 0.0 for k, n in zip(ks, ns)]
    cis = [wilson(k, n, confidence) for k, n in zip(ks, ns)]
    mean = sum(ps) / t
    lo = mean - math.sqrt(sum((p - l) ** 2 for p, (l, _h) in zip(ps, cis))) / t
    hi = mean + math.sqrt(sum((h - p) ** 2 for p, (_l, h) in zip(ps, cis))) / t
    return mean, max(0.0, lo), min(1.0, hi)


def macro_paired(per_task: Sequence[dict], pooled_p: float | None = None,
                 confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Combine per-task ``paired`` results into a macro summary: the mean change in points, its MOVER interval (the
    per-task Newcombe intervals, weight 1/T), and ``p`` = the exact McNemar test on all problems pooled (pass it as
    ``pooled_p``; under "no difference" every discordant problem is a fair coin, whatever its task)."""
    if not per_task:
        raise ValueError("macro_paired: no tasks")
    t = len(per_task)
    ds = [r["delta"] for r in per_task]
    mean = sum(ds) / t
    lo = mean - math.sqrt(sum((d - r["delta_ci"][0]) ** 2 for d, r in zip(ds, per_task))) / t
    hi = mean + math.sqrt(sum((r["delta_ci"][1] - d) ** 2 for d, r in zip(ds, per_task))) / t
    out: dict[str, Any] = {"tasks": t, "delta": mean, "delta_ci": [lo, hi],
                           "better": sum(1 for r in per_task if not r["within_noise"] and r["delta"] > 0),
                           "worse": sum(1 for r in per_task if not r["within_noise"] and r["delta"] < 0)}
    if pooled_p is not None:
        out["p"] = float(pooled_p)
        out["within_noise"] = bool(pooled_p >= 1 - confidence)
    return out


def paired_loss(a: Sequence[tuple[str, float, int]], b: Sequence[tuple[str, float, int]], *, resamples: int = 4000,
                seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The change of a token-weighted mean loss from ``a`` to ``b``, paired on the problems both scored.

    ``a``/``b``: per problem ``(id, summed NLL, target tokens)``. The loss of a side is ``sum(NLL) / sum(tokens)``;
    ``delta = loss_b - loss_a``. Its interval is the percentile interval of a paired bootstrap over problems (the same
    resampled problems for both sides, ``resamples`` draws, seeded: reproducible); ``p`` is the two-sided bootstrap
    p-value (twice the smaller tail of the resampled deltas around 0, at least ``1/resamples``), and ``within_noise``
    is ``p >= ALPHA``. Raises ``ValueError`` when no problem is common to both."""
    import numpy as np

    bm = {i: (x, k) for i, x, k in b}
    common = [(x, bm[i][0], k) for i, x, k in a if i in bm]
    if not common:
        raise ValueError("no problem is common to both sides")
    xa, xb, n = (np.array(v, dtype=float) for v in zip(*common))
    delta = float(xb.sum() / n.sum() - xa.sum() / n.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(common), size=(resamples, len(common)))
    boot = (xb[idx].sum(1) - xa[idx].sum(1)) / n[idx].sum(1)
    lo, hi = (float(np.quantile(boot, q)) for q in ((1 - confidence) / 2, (1 + confidence) / 2))
    p = min(1.0, max(2 * min(float((boot <= 0).mean()), float((boot >= 0).mean())), 1 / resamples))
    return {"loss_a": float(xa.sum() / n.sum()), "loss_b": float(xb.sum() / n.sum()), "delta": delta,
            "delta_ci": (lo, hi), "p": p, "within_noise": p >= 1 - confidence, "n": len(common)}


def fmt_paired_loss(r: dict) -> str:
    """``-0.0312 [-0.0401, -0.0228], p<0.001`` (the change of a reference loss, lower is better)."""
    lo, hi = r["delta_ci"]
    return f"{r['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}], {fmt_p(r['p'])}" + (", within noise" if r["within_noise"] else "")


# --------------------------------------------------------------------------------------------- formatting


def fmt_p(p: float) -> str:
    """``p=0.012``, or ``p<0.001`` below that."""
    return f"p={p:.3f}" if p >= 0.001 else "p<0.001"


def fmt_interval(lo: float, hi: float) -> str:
    """``[lo, hi]`` of fractions as percentages with one decimal: ``[3.1, 12.0]``."""
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def fmt_acc(k: int, n: int) -> str:
    """``7.0% [3.4, 13.7] (7/100)``: accuracy, 95% Wilson interval, counts."""
    if not n:
        return "– (0 problems)"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f}% {fmt_interval(lo, hi)} ({k}/{n})"


def fmt_paired(r: dict) -> str:
    """``+12.0 points [4.1, 19.6], p=0.003`` or ``... p=0.41, within noise``."""
    lo, hi = r["delta_ci"]
    return f"{r['delta']:+.1f} points [{lo:+.1f}, {hi:+.1f}], {fmt_p(r['p'])}" + (", within noise" if r["within_noise"]
                                                                            else "")
