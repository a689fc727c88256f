"""A calculator in the decoding loop: the model writes an equation, the calculator writes its result.

A small student gets much of its chain-of-thought arithmetic wrong (``lora_spec.answers.equation_errors``: a third
of the recipe adapter's GSM8K equations). With ``lorasp eval --calculator`` (``generate(..., calculator=True)``),
whenever an output ends in plain arithmetic followed by ``=`` (``48 / 2 =``, ``$12 x 5 = $``), the next tokens are
not sampled but forced to the exact result (``24``, ``60``), and the token after it may not continue the number.
The model still decides what to compute and what to do with the result; only the result of the operation is
given. This is the calculator of Cobbe et al. (2021, the GSM8K paper), applied at decode time to any model, with no
special training format: it is not part of Fu et al.'s setting, so results made with it say so.

The rule is stateless (it looks only at the text generated so far), so the same function serves the continuous
batching decoder (``lora_spec.generation``) and ``model.generate`` (a logits processor, for seq2seq students).
"""

from __future__ import annotations

import re
import weakref
from fractions import Fraction
from typing import Any, Sequence

from .answers import ARITH_LHS, arith_value, python_operators, round_half_up

# the tail of an output that asks for a result: an expression, "=", maybe "$", then what was already forced
_TAIL_RE = re.compile(ARITH_LHS + r"[ \t]*=([ \t]*\$?[ \t]*)(-?[\d.,]*)$")
_RESULT_START_RE = re.compile(r"=[ \t]*\$?[ \t]*-?$")
# per tokenizer, the ids whose text would continue a number: decoding a whole vocabulary one id at a time costs a
# noticeable fraction of a second, so it is done once per tokenizer, not once per ``generate`` call
_CONTINUING: "weakref.WeakKeyDictionary[Any, list[int]]" = weakref.WeakKeyDictionary()
DECIMALS = 2   # a result that is not an integer is written with at most this many decimals (rounded half up)
WINDOW = 48    # tokens of context the rule looks at (an equation is shorter)


def evaluate(expr: str) -> Fraction | None:
    """The exact value of a plain arithmetic expression as a chain of thought writes it (``$1,200 x 3``,
    ``(4 + 6) ÷ 2``), or None when it is not one: no operator, words, a division by zero."""
    e = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", expr)  # thousands separators
    e = re.split(r"[,.](?=\s)|[,.]$", e)[-1]           # "He has 5. 3 + 4": the clause after the last ", " / ". "
    e = re.sub(r"^[\s*/+]+", "", python_operators(e))  # "Max 3 + 4": the "x" of a word is no operator
    return None if not e or "," in e else arith_value(e)


def format_result(value: Fraction, thousands: bool = False) -> str:
    """``24``, ``-3``, ``3.33``, ``0.5``: an integer as it is, else rounded half up to :data:`DECIMALS` places;
    ``thousands``: with separators (``50,000``), as the expression was written."""
    scale = 10 ** DECIMALS
    r = round_half_up(value, DECIMALS)
    sign = "-" if r < 0 else ""
    whole, frac = divmod(int(abs(r) * scale), scale)  # abs(r) * scale is a whole number
    digits = f"{frac:0{DECIMALS}d}".rstrip("0")
    return sign + (f"{whole:,}" if thousands else str(whole)) + (f".{digits}" if digits else "")


def next_text(text: str) -> str | None:
    """What the calculator writes next after ``text`` (the output so far): the rest of a result (``" 24"`` right
    after ``48 / 2 =``, ``"4"`` after ``48 / 2 = 2``), ``""`` when the result is complete (the next token must not
    continue the number: no digit, no ``.5``), or None when the model is free."""
    m = _TAIL_RE.search(text[-400:])
    if m is None:
        return None
    value = evaluate(m.group(1))
    if value is None:
        return None
    result, written = format_result(value, bool(re.search(r"\d,\d{3}", m.group(1)))), m.group(3)
    if written in (result, result + "."):
        return ""
    if not result.startswith(written):
        return None  # the model wrote these digits itself (the calculator was not on for them)
    if "$" in m.group(1) and "$" not in m.group(2):
        result = "$" + result  # "$80,000 + $50,000 =": the result is money too
        written = ""
    if written == "" and m.group(2) == "":
        return " " + result  # right after "=": the space a result is written with
    return result[len(written):]


class Calculator:
    """The rule of :func:`next_text` as token-level actions for one tokenizer: ``action(ids)`` (the generated
    ids so far) is ``("force", token_id)``, ``("block", None)`` (the result is complete: nothing may continue the
    number) or None. :meth:`apply` applies them to a batch of next-token logits in place. ``calls``: how many
    results it has started to write."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.calls = 0

    def continuing_ids(self) -> list[int]:
        """The ids whose text would continue a number (digits, ``.5``, ``,000``), computed once per tokenizer."""
        try:
            return _CONTINUING[self.tokenizer]
        except (KeyError, TypeError):  # TypeError: a tokenizer that cannot be weakly referenced
            pass
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        ids = [i for i, t in enumerate(texts) if re.match(r"\d|[.,]\d", t)]
        try:
            _CONTINUING[self.tokenizer] = ids
        except TypeError:
            pass
        return ids

    def _token_for(self, ids: list[int], tail: str, todo: str) -> tuple[int, str] | None:
        """A token that writes the start of ``todo`` after ``ids`` (whose text is ``tail``): the first token of
        ``todo`` tokenized alone, else the vocabulary's piece for its first character (sentencepiece tokenizers
        put a word-start mark on a lone digit), with the text it adds; None when neither writes it."""
        tok = self.tokenizer
        cands = tok(todo, add_special_tokens=False)["input_ids"][:1]
        piece = tok.convert_tokens_to_ids(todo[0]) if todo[0] != " " else None
        if isinstance(piece, int) and piece != tok.unk_token_id:
            cands.append(piece)
        for c in cands:
            new = tok.decode(ids + [c], skip_special_tokens=True)
            if new.startswith(tail) and len(new) > len(tail) and (tail + todo).startswith(new):
                return c, new[len(tail):]
        return None

    def action(self, ids: Sequence[int]) -> tuple[str, int | None] | None:
        if not ids:
            return None
        window = list(ids[-WINDOW:])
        tail = self.tokenizer.decode(window, skip_special_tokens=True)
        if "=" not in tail:
            return None
        todo = next_text(tail)
        if todo is None:
            return None
        if todo == "":
            return ("block", None)
        found = self._token_for(window, tail, todo)
        if found is None:
            return None
        tok, piece = found
        # a result's first digit: one more result written
        self.calls += bool(_RESULT_START_RE.search(tail)) and any(ch.isdigit() for ch in piece)
        return ("force", tok)

    def apply(self, logits: Any, gens: Sequence[Sequence[int]]) -> None:
        """Force or block the next token of each row of ``logits`` (``[rows, vocab]``) whose ``gens[row]`` (its
        generated ids) ends in an equation."""
        for row, ids in enumerate(gens):
            act = self.action(ids)
            if act is None:
                continue
            kind, tok = act
            if kind == "force":
                logits[row, :] = float("-inf")
                logits[row, tok] = 0.0
            else:
                block = self.continuing_ids()
                if block:
                    logits[row, block] = float("-inf")


def logits_processor(calc: Calculator, prompt_width: int = 1) -> Any:
    """``calc`` as a transformers ``LogitsProcessor`` for ``model.generate`` (seq2seq: the decoder ids after the
    ``prompt_width`` start tokens are the generated ones)."""
    from transformers import LogitsProcessor

    class _CalculatorProcessor(LogitsProcessor):
        def __call__(self, input_ids, scores):
            calc.apply(scores, [row[prompt_width:].tolist() for row in input_ids])
            return scores

    return _CalculatorProcessor()
