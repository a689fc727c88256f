"""Answer extraction and equivalence for every answer format in the staged data sets.

Two functions do the work and are used everywhere (teacher filtering, training targets, eval)::

    extract_answer(text, kind="number") -> str | None     # the model's final answer, canonicalised
    answers_match(pred, gold, kind="number") -> bool       # pred (extracted) vs a dataset's gold string

and one diagnostic, :func:`equation_errors`: how many of the equations a chain of thought writes state a wrong
result (a student that reasons wrongly vs one that computes wrongly).

Kinds (``problem.meta["answer_type"]``, read by :func:`kind_for`):

- ``number``: GSM8K/SVAMP/MultiArith/ASDiv numbers: ``#### 1,080``, ``-7``, ``0.46``, ``5/2``, ``-(1/3)``, ``$7``,
  ``9 (apples)``. Compared exactly as fractions (relative tolerance 1e-4 for decimals that round a fraction).
- ``multi``: several numbers separated by ``;`` (ASDiv ``5 (years old); 15 (years old)``); order-insensitive.
- ``time``: clock times and ratios (``5:45``, ``3:4``, ``9:03:36 a.m.``), compared field by field.
- ``option``: BBH option letters ``(B)``.
- ``bool`` (``True``/``False``), ``yesno`` (``Yes``/``No``, any case), ``validity`` (``valid``/``invalid``).
- ``free``: free-form spans (BBH dyck_languages / word_sorting, ASDiv names); exact match after whitespace,
  case and trailing-period normalisation.

Where the final answer is: the span after the last "the answer is" (also "answer:", GSM8K's "####" and LaTeX
``\\boxed{}``), else the whole text. For numbers, the first number of that span, or the number after its last
``=`` ("The answer is 60 + 18 = 78" gives 78); with no marker at all, the last number in the text -- unless
``strict=True`` (lm-eval's strict-match, ``lorasp eval``'s headline accuracy): then no marker means no answer.

Why hand rules and not only ``math-verify``: the data here is plain-text arithmetic; hand rules are exact on
thousands separators, units, negative numbers next to ``-`` operators, "answer is" markers and BBH letters, and
are ~1000x faster (math-verify runs sympy for each call). ``math-verify`` is used where it is better: outputs
written in LaTeX (``\\frac{5}{2}``, ``\\boxed{...}``, ``\\dfrac``), which a small instruct model often emits.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from fractions import Fraction
from typing import Any

KINDS = ("number", "multi", "time", "option", "bool", "yesno", "validity", "free")

# A number: thousands-separated, plain, decimal, or a fraction; optional sign glued to the digits.
_NUM = r"(?<![\w.])-?(?:\(\d+/\d+\)|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:\s*/\s*\d+(?!\.\d))?|\.\d+)"
_NUM_RE = re.compile(_NUM)
_MARKER_RE = re.compile(r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:|####)\s*:?", re.IGNORECASE)
_TIME_RE = re.compile(r"\d{1,2}(?::\d{1,2}){1,2}")
_OPTION_RE = re.compile(r"\(([A-R])\)")


def kind_for(problem: Any) -> str:
    """The answer kind of a problem (``problem.meta['answer_type']``, default ``number``)."""
    meta = getattr(problem, "meta", None) or {}
    return str(meta.get("answer_type", "number"))


def scorer_for(problem: Any, scorer: str | None = "auto") -> str:
    """The answer kind an output is scored by: ``scorer``, or the problem's own kind (:func:`kind_for`) for
    ``auto``/None (a task's ``scorer`` setting)."""
    return kind_for(problem) if scorer in (None, "", "auto") else str(scorer)


def judge(problem: Any, output: str | None, *, scorer: str | None = "auto", strict: bool = True) -> tuple[Any, bool]:
    """``(extracted answer, correct)`` of one output for ``problem``: the one scoring rule of lorasp. ``lorasp eval``
    and a fit's held-out evaluation score by it (strict and flexible), and teach's correctness filter keeps a
    teacher's sample by it (flexible). ``strict``: only an answer stated in an answer sentence ("The answer is X")
    counts; else the last number (or option) is taken as well (lm-eval's flexible-extract)."""
    kind = scorer_for(problem, scorer)
    ext = extract_answer(output, kind, strict=strict)
    return ext, bool(answers_match(ext, getattr(problem, "answer", None), kind))


# --------------------------------------------------------------------------------------------- numbers

def parse_number(text: str | None) -> Fraction | None:
    """A single number from a gold or extracted string; ``None`` when there is none.

    Handles ``1,080``, ``$7``, ``52%``, ``0.46 (dollars)``, ``5/2``, ``-(1/3)``, ``3.0``.
    """
    if text is None:
        return None
    s = str(text).strip()
    s = re.sub(r"\s*\([^()]*[A-Za-z][^()]*\)\s*$", "", s)  # trailing unit "(apples)"
    s = s.replace("$", "").replace("%", "").strip()
    m = re.fullmatch(r"(-?)\(\s*(-?\d+(?:\.\d+)?)\s*/\s*(\d+)\s*\)", s)  # -(1/3)
    if m:
        v = Fraction(m.group(2)) / Fraction(m.group(3))
        return -v if m.group(1) else v
    m = _NUM_RE.search(s)
    if not m:
        return None
    return _to_fraction(m.group(0))


def _to_fraction(tok: str) -> Fraction | None:
    tok = tok.replace(",", "").replace(" ", "").replace("(", "").replace(")", "")
    try:
        if "/" in tok:
            a, b = tok.split("/", 1)
            if Fraction(b) == 0:
                return None
            return Fraction(a) / Fraction(b)
        return Fraction(tok)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(v: Fraction) -> str:
    """Canonical text: ``72``, ``-7``, ``2.5``, ``1/3``."""
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # a terminating decimal
        s = f"{float(v):.12f}".rstrip("0").rstrip(".")
        if Fraction(s) == v:
            return s
    return f"{v.numerator}/{v.denominator}"


def _numbers_close(a: Fraction, b: Fraction) -> bool:
    if a == b:
        return True
    return abs(float(a) - float(b)) <= 1e-4 * max(1.0, abs(float(b)))


# --------------------------------------------------------------------------------------------- spans

def _boxed(text: str) -> str | None:
    i = text.rfind("\\boxed{")
    if i < 0:
        return None
    j, depth = i + len("\\boxed{"), 1
    k = j
    while k < len(text) and depth:
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
        k += 1
    return text[j:k - 1] if depth == 0 else text[j:]


def answer_span(text: str, sentence: bool = True) -> tuple[str, bool]:
    """The text after the last answer marker (to the end of that sentence, or of the line when ``sentence`` is
    False) and whether a marker was found."""
    last = None
    for last in _MARKER_RE.finditer(text):
        pass
    if last is not None:
        span = text[last.end():]
        span = span.split("\n", 1)[0] if span.strip() else span
        # cut at a sentence end: ". " / ".\n" / final "." (but not a decimal point)
        m = re.search(r"\.(?=\s|$)", span) if sentence else None
        if m:
            span = span[:m.start()]
        return span.strip(), True
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip(), True
    return text.strip(), False


def _latex_number(span: str) -> Fraction | None:
    """LaTeX numbers (``\\frac{5}{2}``, ``\\dfrac``) through math-verify."""
    if "\\" not in span:
        return None
    try:
        from math_verify import parse

        for obj in parse(span if "$" in span or "\\boxed" in span else f"${span}$"):
            try:
                import sympy

                if isinstance(obj, sympy.Basic) and obj.is_number:
                    r = sympy.nsimplify(obj, rational=True)
                    return Fraction(int(r.p), int(r.q))
            except Exception:
                continue
    except Exception:
        return None
    return None


def _extract_number(text: str, strict: bool = False) -> str | None:
    span, marked = answer_span(text)
    if strict and not marked:
        return None
    if marked:
        lat = _latex_number(span)
        if lat is not None:
            return format_number(lat)
        part = span.rsplit("=", 1)[1] if "=" in span else span
        m = _NUM_RE.search(part)
        if not m and "=" in span:
            m = _NUM_RE.search(span)
        if m:
            v = _to_fraction(m.group(0))
            return format_number(v) if v is not None else None
        if strict:
            return None
        # a marker with no number after it ("the answer is unknown"): fall back to the whole text
    boxed = _boxed(text)
    if boxed is not None:
        lat = _latex_number(boxed)
        if lat is not None:
            return format_number(lat)
    nums = _NUM_RE.findall(text)
    for tok in reversed(nums):
        v = _to_fraction(tok)
        if v is not None:
            return format_number(v)
    return None


def _extract_multi(text: str, strict: bool = False) -> str | None:
    span, marked = answer_span(text)
    if not marked:
        return None if strict else _extract_number(text)
    vals = [_to_fraction(t) for t in _NUM_RE.findall(span)]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return "; ".join(format_number(v) for v in vals)


def _extract_time(text: str, strict: bool = False) -> str | None:
    span, marked = answer_span(text)
    found = _TIME_RE.findall(span) if marked else []
    if found:
        return found[0]
    if strict:
        return None
    found = _TIME_RE.findall(text)
    return found[-1] if found else None


def _extract_choice(text: str, pattern: str, canon: dict[str, str], strict: bool = False) -> str | None:
    span, marked = answer_span(text)
    rx = re.compile(pattern, re.IGNORECASE)
    if marked:
        m = rx.search(span)
        if m:
            return canon[m.group(1).lower()]
    if strict:
        return None
    found = rx.findall(text)
    return canon[found[-1].lower()] if found else None


def _extract_option(text: str, strict: bool = False) -> str | None:
    span, marked = answer_span(text)
    if marked:
        m = _OPTION_RE.search(span)
        if m:
            return f"({m.group(1)})"
        m = re.fullmatch(r"\s*(?:option\s+)?([A-R])\s*[.)]?\s*", span, re.IGNORECASE)
        if m and (m.group(1).isupper() or len(span.strip()) == 1):
            return f"({m.group(1).upper()})"
    if strict:
        return None
    found = _OPTION_RE.findall(text)
    return f"({found[-1]})" if found else None


def _norm_free(s: str) -> str:
    s = s.strip().strip("*").strip()
    s = re.sub(r"\s+", " ", s)
    s = s.rstrip(".").strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
        s = s[1:-1].strip()
    return s


def _extract_free(text: str, strict: bool = False) -> str | None:
    span, marked = answer_span(text, sentence=False)
    if strict and not marked:
        return None
    if not marked:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        span = lines[-1] if lines else ""
    span = _norm_free(span)
    return span or None


def extract_answer(text: str | None, kind: str = "number", strict: bool = False) -> str | None:
    """The final answer in ``text`` for an answer ``kind``, canonicalised; ``None`` when there is none.

    ``strict``: only an answer stated in an answer sentence ("The answer is X", "Answer:", "####", ``\\boxed{}``)
    counts (lm-eval's ``strict-match``); otherwise (``flexible-extract``) an output without one falls back to its
    last number / option / word of the answer kind, which can credit a lucky number in a text that never answered.
    """
    if text is None:
        return None
    text = str(text)
    if kind == "number":
        return _extract_number(text, strict)
    if kind == "multi":
        return _extract_multi(text, strict)
    if kind == "time":
        return _extract_time(text, strict)
    if kind == "option":
        return _extract_option(text, strict)
    if kind == "bool":
        return _extract_choice(text, r"\b(true|false)\b", {"true": "True", "false": "False"}, strict)
    if kind == "yesno":
        return _extract_choice(text, r"\b(yes|no)\b", {"yes": "Yes", "no": "No"}, strict)
    if kind == "validity":
        return _extract_choice(text, r"\b(valid|invalid)\b", {"valid": "valid", "invalid": "invalid"}, strict)
    if kind == "free":
        return _extract_free(text, strict)
    raise ValueError(f"unknown answer kind {kind!r} (expected one of {', '.join(KINDS)})")


# --------------------------------------------------------------------------------------------- matching

def _time_fields(s: str) -> tuple[int, ...] | None:
    m = _TIME_RE.search(s)
    return tuple(int(x) for x in m.group(0).split(":")) if m else None


def _multi_values(s: str) -> list[Fraction] | None:
    parts = [p for p in re.split(r";", s) if p.strip()]
    vals = [parse_number(p) for p in parts]
    if not vals or any(v is None for v in vals):
        return None
    return vals  # type: ignore[return-value]


def answers_match(pred: str | None, gold: str, kind: str = "number") -> bool:
    """Whether an extracted answer equals a dataset's gold answer for ``kind``."""
    if pred is None:
        return False
    pred, gold = str(pred), str(gold)
    if kind == "number":
        g, p = parse_number(gold), parse_number(pred)
        if g is None or p is None:
            return _norm_free(pred).lower() == _norm_free(gold).lower()
        return _numbers_close(p, g)
    if kind == "multi":
        g, p = _multi_values(gold), _multi_values(pred)
        if g is None or p is None:
            return _norm_free(pred).lower() == _norm_free(gold).lower()
        if len(g) != len(p):
            return False
        return all(_numbers_close(a, b) for a, b in zip(sorted(p), sorted(g)))
    if kind == "time":
        return _time_fields(pred) is not None and _time_fields(pred) == _time_fields(gold)
    if kind == "option":
        gm, pm = _OPTION_RE.search(gold), _OPTION_RE.search(pred)
        if gm and pm:
            return gm.group(1) == pm.group(1)
        return _norm_free(pred) == _norm_free(gold)
    if kind in ("bool", "yesno", "validity"):
        return _norm_free(pred).lower() == _norm_free(gold).lower()
    if kind == "free":
        return _norm_free(pred).lower() == _norm_free(gold).lower()
    raise ValueError(f"unknown answer kind {kind!r} (expected one of {', '.join(KINDS)})")


# ------------------------------------------------------------------------------ arithmetic in a chain of thought

# an arithmetic expression as a chain of thought writes it (``$1,200 x 3``, ``(4 + 6) ÷ 2``), up to an "="
ARITH_LHS = r"([\d.,$()+\-*/x×÷ ]*[\d)])"
_EQUATION_RE = re.compile(ARITH_LHS + r"\s*=\s*\$?(-?\d[\d,]*(?:\.\d+)?)")
_OPERATOR_RE = re.compile(r"\d\s*[-+*/]\s*[\d(]")
_ARITH_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _arith(node: ast.AST) -> Fraction:
    """The exact value of a parsed expression of numbers, parentheses and + - * / (anything else: ValueError)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arith(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
        return _ARITH_OPS[type(node.op)](_arith(node.left), _arith(node.right))
    raise ValueError("not plain arithmetic")


def python_operators(expr: str) -> str:
    """``$12 x 5 ÷ 2`` -> ``12 * 5 / 2``: a written expression with Python's operators, without ``$``."""
    return expr.replace("$", "").replace("×", "*").replace("x", "*").replace("÷", "/").strip()


def arith_value(expr: str) -> Fraction | None:
    """The exact value of ``expr`` (Python operators, see :func:`python_operators`) when it is plain arithmetic
    with at least one operator; None otherwise (a bare number, words, a division by zero)."""
    if not _OPERATOR_RE.search(expr) or len(expr) > 200:
        return None
    try:
        return _arith(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, TypeError):
        return None


def round_half_up(value: Fraction, decimals: int) -> Fraction:
    """``value`` rounded to ``decimals`` places, halves away from zero as people round (``2.5 -> 3``,
    ``-0.125 -> -0.13``): the one rounding rule of :func:`equation_errors` and the decode-time calculator."""
    scale = 10 ** decimals
    n = math.floor(abs(value) * scale + Fraction(1, 2))
    return Fraction(-n if value < 0 else n, scale)


def equation_errors(text: str | None) -> tuple[int, int]:
    """``(checked, wrong)``: the equations ``<arithmetic with an operator> = <number>`` in a model's output, and how
    many of them state a wrong result, computed exactly and rounded half up (away from zero, :func:`round_half_up`) to the stated number's decimals
    (``5 / 3 = 1.67`` and ``10 / 4 = 3`` are right, ``10 / 4 = 2`` is wrong). A whole chain counts once
    (``2 + 3 + 4 = 9``, not ``3 + 4 = 9``); thousands separators and ``$`` are read; ``x``, ``×`` and ``÷`` are
    operators. What is not plain arithmetic (a bare ``Step 3 = 7``, a division by zero, words) is not checked."""
    checked = wrong = 0
    for lhs, rhs in _EQUATION_RE.findall(text or ""):
        value = arith_value(python_operators(lhs.replace(",", "")))
        if value is None:
            continue
        stated = Fraction(rhs.replace(",", ""))
        checked += 1
        wrong += round_half_up(value, len(rhs.split(".")[1]) if "." in rhs else 0) != stated
    return checked, wrong
