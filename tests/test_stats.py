"""lora_spec.stats against known values: textbook Wilson intervals, the exact binomial, a published paired table."""

from __future__ import annotations

import math

import pytest

from lora_spec import stats


@pytest.mark.parametrize("k,n,lo,hi", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II (Wilson score method)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_textbook_values(k, n, lo, hi):
    got = stats.wilson(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)


def test_wilson_closed_form_and_edges():
    z = 1.959963984540054
    for k, n in [(7, 100), (50, 100), (100, 100), (3, 9)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lo, hi = stats.wilson(k, n)
        assert lo == pytest.approx(max(0.0, centre - half), abs=1e-9)
        assert hi == pytest.approx(min(1.0, centre + half), abs=1e-9)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson(5, 4)
    # the half-width at n=100 near 50% is under 10 points; at 16 problems it is over 20
    lo, hi = stats.wilson(50, 100)
    assert (hi - lo) / 2 < 0.10
    lo, hi = stats.wilson(8, 16)
    assert (hi - lo) / 2 > 0.20


def _vectors(both, only_b, only_a, neither):
    a = [True] * both + [False] * only_b + [True] * only_a + [False] * neither
    b = [True] * both + [True] * only_b + [False] * only_a + [False] * neither
    return a, b


def test_mcnemar_is_exact_binomial_on_discordant_pairs():
    a, b = _vectors(59, 16, 6, 80)
    p = stats.mcnemar(a, b)
    # by hand: two-sided exact binomial, 6 of 22 discordant pairs, p = 0.5
    by_hand = min(1.0, 2 * sum(math.comb(22, i) for i in range(0, 7)) / 2 ** 22)
    assert p == pytest.approx(by_hand, rel=1e-12)
    assert p == pytest.approx(0.052478790283203125, rel=1e-12)
    assert stats.mcnemar(a, b) == stats.mcnemar(b, a)
    assert stats.mcnemar([True, False], [True, False]) == 1.0  # no discordant pair
    with pytest.raises(ValueError):
        stats.mcnemar([True], [True, False])


def test_paired_matches_published_newcombe_interval():
    # Cavo et al. (2012), complete response before/after consolidation, n = [[59, 6], [16, 80]]: Fagerland,
    # Lydersen & Laake, Statistical Analysis of Contingency Tables, ch. 8: Newcombe square-and-add
    # estimate -0.0621 (95% CI -0.1186 to -0.0046)
    lo, hi = stats.newcombe_paired(59, 6, 16, 80)
    assert lo == pytest.approx(-0.1186, abs=5e-5) and hi == pytest.approx(-0.0046, abs=5e-5)
    # the same table as vectors: a = columns (before), b = rows (after); b - a = (59+6)/161 - (59+16)/161
    a, b = _vectors(59, 6, 16, 80)
    r = stats.paired(a, b)
    assert r["n"] == 161 and r["only_b"] == 6 and r["only_a"] == 16
    assert r["delta"] == pytest.approx(-6.2112, abs=1e-3)
    assert r["delta_ci"][0] == pytest.approx(-11.86, abs=5e-3) and r["delta_ci"][1] == pytest.approx(-0.46, abs=5e-3)
    assert r["p"] == pytest.approx(0.0525, abs=1e-4) and r["within_noise"] is True
    assert r["a_ci"] == pytest.approx(list(stats.wilson(75, 161))) and r["b"] == pytest.approx(65 / 161)


def test_paired_clear_difference_and_identical_runs():
    a = [False] * 100
    b = [True] * 30 + [False] * 70
    r = stats.paired(a, b)
    assert r["delta"] == pytest.approx(30.0) and r["within_noise"] is False and r["p"] < 1e-6
    assert r["delta_ci"][0] > 0 and r["delta_ci"][1] < 100
    same = stats.paired(b, b)
    assert same["delta"] == 0.0 and same["p"] == 1.0 and same["within_noise"] is True
    assert same["delta_ci"][0] < 0 < same["delta_ci"][1]


def test_formatting():
    assert stats.fmt_acc(7, 100) == "7.0% [3.4, 13.7] (7/100)"
    assert stats.fmt_acc(0, 0) == "– (0 problems)"
    a, b = _vectors(59, 16, 6, 80)
    assert stats.fmt_paired(stats.paired(a, b)) == "+6.2 points [+0.5, +11.9], p=0.052, within noise"


def test_macro_interval():
    # one task: the macro interval is that task's Wilson interval
    m, lo, hi = stats.macro([7], [100])
    assert m == pytest.approx(0.07) and (lo, hi) == pytest.approx(stats.wilson(7, 100))
    # tasks of equal size: the macro average is the pooled accuracy, with the pool's Wilson interval
    m8, lo8, hi8 = stats.macro([1, 1, 1, 0, 0, 0, 0, 0], [1] * 8)
    assert m8 == pytest.approx(3 / 8) and (lo8, hi8) == pytest.approx(stats.wilson(3, 8))
    # unequal sizes: MOVER, square-and-add of the distances to each task's Wilson limits, weight 1/T
    ks, ns = [7, 30], [100, 50]
    m2, lo2, hi2 = stats.macro(ks, ns)
    ps = [0.07, 0.6]
    cis = [stats.wilson(7, 100), stats.wilson(30, 50)]
    assert m2 == pytest.approx(0.335)
    assert lo2 == pytest.approx(0.335 - math.sqrt(sum((p - c[0]) ** 2 for p, c in zip(ps, cis))) / 2)
    assert hi2 == pytest.approx(0.335 + math.sqrt(sum((c[1] - p) ** 2 for p, c in zip(ps, cis))) / 2)
    assert lo2 < m2 < hi2
    with pytest.raises(ValueError):
        stats.macro([], [])


def test_macro_paired_combines_tasks():
    a, b = _vectors(59, 16, 6, 80)
    r = stats.paired(a, b)
    one = stats.macro_paired([r], pooled_p=r["p"])
    assert one["delta"] == pytest.approx(r["delta"]) and one["delta_ci"] == pytest.approx(r["delta_ci"])
    assert one["within_noise"] is True and one["better"] == 0 and one["worse"] == 0
    a1, b1 = [False] * 100, [True] * 30 + [False] * 70
    clear = stats.paired(a1, b1)
    two = stats.macro_paired([clear, stats.paired(b, b)], pooled_p=stats.mcnemar(a1 + b, b1 + b))
    assert two["delta"] == pytest.approx(15.0) and two["better"] == 1 and two["worse"] == 0
    assert two["within_noise"] is False


def test_paired_loss_bootstrap():
    from lora_spec.stats import fmt_paired_loss, paired_loss

    a = [(f"p{i}", 1.0 * (10 + i % 7), 10 + i % 7) for i in range(200)]  # loss 1.0 per token
    same = paired_loss(a, a)
    assert same["delta"] == 0 and same["within_noise"] and same["delta_ci"] == (0.0, 0.0)
    # every problem 5% better: a clear, consistent change
    b = [(i, x * 0.95, k) for i, x, k in a]
    r = paired_loss(a, b)
    assert r["delta"] == pytest.approx(-0.05) and not r["within_noise"] and r["p"] < 0.001
    assert r["delta_ci"][0] <= -0.05 <= r["delta_ci"][1] + 1e-12
    assert fmt_paired_loss(r).startswith("-0.0500 [")
    # noise around zero: within noise; only common problems count; seeded, so reproducible
    import random

    rng = random.Random(1)
    c = [(i, x + rng.gauss(0, 2.0), k) for i, x, k in a[:150]]
    r2 = paired_loss(a, c)
    assert r2["n"] == 150 and r2["within_noise"] and r2["delta_ci"][0] < 0 < r2["delta_ci"][1]
    assert paired_loss(a, c) == r2
    with pytest.raises(ValueError, match="no problem is common"):
        paired_loss(a, [("x", 1.0, 1)])
