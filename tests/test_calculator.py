"""The calculator in the decoding loop (lora_spec.calculator): the rule, its tokens, and the decoders using it."""

from __future__ import annotations

from fractions import Fraction

import pytest

from lora_spec.answers import equation_errors
from lora_spec.calculator import Calculator, evaluate, format_result, next_text


@pytest.mark.parametrize("text, expected", [
    ("Janet eats 16 * 3 =", " 48"),                        # right after "=": the result with its space
    ("48 / 2 = 2", "4"),                                   # the rest of a result being written
    ("48 / 2 = 24", ""), ("48 / 2 = 24.", ""),             # complete: nothing may continue the number
    ("10 / 3 =", " 3.33"), ("7 / 2 =", " 3.5"), ("5 - 8 =", " -3"),
    ("2 * (3 + 4) =", " 14"), ("(4 + 6) ÷ 2 =", " 5"), ("12 x 7 =", " 84"), ("3 × 4 =", " 12"),
    ("sells them for $2 * 48 = $", "96"),                  # the model wrote "$": the digits follow it
    ("$80,000 + $50,000 =", " $130,000"),                 # money stays money, separators stay separators
    ("$80,000 + $50,000 = $130", ",000"),
    ("He has 5. 3 + 4 =", " 7"), ("I have 3, 4 + 5 =", " 9"), ("Max 3 + 4 =", " 7"),  # clause, not "5.3", "34"
    ("3 + 4 = 9", None),                                   # digits the calculator did not write: left alone
    ("x = 5 =", None), ("20% of 50 =", None), ("Step 3 =", None), ("5 / 0 =", None), ("3 + 4 = 7 apples", None),
    ("no equation here", None),
])
def test_the_rule(text, expected):
    assert next_text(text) == expected


def test_numbers_are_exact_and_rounded_half_up():
    assert evaluate("0.1 + 0.2") == Fraction(3, 10) and evaluate("1,200 x 3") == 3600
    assert evaluate("3") is None and evaluate("3 + apples") is None
    assert [format_result(Fraction(*f)) for f in ((24, 1), (10, 3), (2, 3), (1, 8), (-1, 1000), (5, 2))] == [
        "24", "3.33", "0.67", "0.13", "0", "2.5"]
    assert format_result(Fraction(1234567, 2), thousands=True) == "617,283.5"
    # what it writes, equation_errors (the eval's arithmetic check) accepts as right
    assert [format_result(Fraction(*f)) for f in ((-1, 8), (-5, 2), (-1, 200))] == ["-0.13", "-2.5", "-0.01"]
    for expr in ("10 / 3", "2 / 3", "1,234 * 5", "7 - 9.5", "1 - 9 / 8", "0 - 1 / 200"):  # halves round away from 0
        text = f"{expr} =" + next_text(f"{expr} =")
        assert equation_errors(text) == (1, 0), text


def _write(calc: Calculator, tok, text: str, steps: int = 20) -> str:
    """Apply the calculator's actions to ``text`` token by token until it lets the model go on."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for _ in range(steps):
        act = calc.action(ids)
        if act is None or act[0] == "block":
            return tok.decode(ids, skip_special_tokens=True)
        ids = ids + [act[1]]
    raise AssertionError("the calculator never finished")


@pytest.mark.parametrize("preset", ["smollm2-135m", "tiny-llama", "tiny-t5"])  # byte BPE, BPE, sentencepiece
def test_tokens_write_exactly_the_result(preset):
    from transformers import AutoTokenizer

    from lora_spec.student import preset_path

    tok = AutoTokenizer.from_pretrained(preset_path(preset))
    calc = Calculator(tok)
    for text, want in (("so 16 * 3 =", "so 16 * 3 = 48"), ("he pays 125 / 4 =", "he pays 125 / 4 = 31.25"),
                       ("then 1,250 + 3,750 =", "then 1,250 + 3,750 = 5,000")):
        assert _write(calc, tok, text) == want, preset
    assert calc.calls == 3
    cont = set(calc.continuing_ids())
    assert Calculator(tok).continuing_ids() is calc.continuing_ids()  # computed once per tokenizer
    assert tok.convert_tokens_to_ids("7") in cont or tok.convert_tokens_to_ids("▁7") in cont


def test_apply_forces_and_blocks_rows_of_a_batch():
    import torch
    from transformers import AutoTokenizer

    from lora_spec.student import preset_path

    tok = AutoTokenizer.from_pretrained(preset_path("tiny-llama"))
    calc = Calculator(tok)
    gens = [tok(t, add_special_tokens=False)["input_ids"] for t in ("so 6 * 7 =", "so 6 * 7 = 42", "hello there")]
    logits = torch.randn(3, len(tok))
    free = logits[2].clone()
    calc.apply(logits, gens)
    forced = int(logits[0].argmax())
    assert tok.decode(gens[0] + [forced]).endswith("= 4") or tok.decode(gens[0] + [forced]).endswith("= 42")
    assert torch.isinf(logits[0]).sum() == len(tok) - 1           # one token left
    assert all(torch.isinf(logits[1, i]) for i in calc.continuing_ids())  # no digit after "42"
    assert torch.equal(logits[2], free)                           # a row without an equation is untouched


def test_the_real_student_computes_every_checked_equation_right(smollm2, data_dir):
    """SmolLM2 writes GSM8K chains of thought; with the calculator every equation it writes has the right result
    (without it, some do not), through the continuous batching decoder."""
    from lora_spec.eval_engine import make_dataset
    from lora_spec.generation import generate
    from lora_spec.prompts import build_prompt

    probs = list(make_dataset("gsm8k", data_dir=data_dir).load("test", 4))
    prompts = [build_prompt(p, "zs_cot", smollm2.tokenizer, chat=True, data_dir=data_dir) for p in probs]
    st: dict = {}
    outs = generate(smollm2.model, smollm2.tokenizer, prompts, max_new_tokens=96, calculator=True, stats=st,
                    progress=False, batch_size=4)
    checked = [equation_errors(o) for o in outs]
    assert st["calculator_calls"] >= 1 and sum(c for c, _ in checked) >= st["calculator_calls"] // 2
    assert sum(w for _, w in checked) == 0, outs


def test_seq2seq_generate_takes_the_calculator(tiny_t5_path):
    from lora_spec.generation import generate
    from lora_spec.student import load_student

    st = load_student("tiny-t5")
    a = generate(st.model, st.tokenizer, ["3 + 4", "hello"], kind="seq2seq", max_new_tokens=6, progress=False)
    stats: dict = {}
    b = generate(st.model, st.tokenizer, ["3 + 4", "hello"], kind="seq2seq", max_new_tokens=6, progress=False,
                 calculator=True, stats=stats)
    assert a == b and stats["calculator_calls"] == 0  # a random model writes no equation: nothing changes


def test_lorasp_generate_takes_the_calculator(smollm2_path, capsys, data_dir, monkeypatch):
    """`lorasp generate --calculator` on the real SmolLM2: the decoder gets the calculator, and every equation of
    the answer that the calculator reads has its exact result."""
    import json
    import re

    import lora_spec.adapters.swap as swap
    from tests.helpers import main_cli

    seen = []
    real = swap.generate

    def spy(*a, **kw):
        seen.append(kw.get("calculator"))
        return real(*a, **kw)

    monkeypatch.setattr(swap, "generate", spy)
    q = ("A baker makes 37 trays of 24 cookies and sells 598 cookies. Write each calculation as an equation. "
         "How many cookies are left?")
    code, out, err = main_cli(capsys, "generate", "--model", "smollm2-135m", "--prompt", q, "--mode", "zs_cot",
                              "--max-new-tokens", "96", "--calculator", "--json")
    assert code == 0, err
    assert seen == [True]
    text = json.loads(out)["completion"]
    results = [(text[:m.start()] + "=", m.group(1)) for m in re.finditer(r"=( ?\$?-?[\d,]+(?:\.\d+)?)", text)]
    read = [(before, got) for before, got in results if next_text(before) is not None]
    assert read and all(next_text(before) == got for before, got in read), text
