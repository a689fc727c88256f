"""Answer extraction and equivalence over every format in shared/data/SOURCES.md."""

from __future__ import annotations

import pytest

from lora_spec.answers import answers_match, extract_answer, format_number, kind_for, parse_number
from lora_spec.records import Problem


@pytest.mark.parametrize("text,kind,expected", [
    # GSM8K gold and CoT style
    ("Natalia sold 48+24 = 72 clips.\n#### 72", "number", "72"),
    ("#### 1,080", "number", "1080"),
    ("#### 109,200,000", "number", "109200000"),
    ("He lost 7 dollars.\n#### -7", "number", "-7"),
    ("The answer is 1,080.", "number", "1080"),
    ("The answer is $7", "number", "7"),
    ("so the answer is 8.", "number", "8"),
    ("The answer is 8.5.", "number", "8.5"),
    ("The answer is 0.46 dollars.", "number", "0.46"),
    ("The answer is 5/2.", "number", "2.5"),
    ("The answer is 1/3", "number", "1/3"),
    ("The answer is 60 + 18 = 78", "number", "78"),
    ("The answer is 2:45 am", "time", "2:45"),
    ("... But the answer is 185", "number", "185"),
    ("The final answer is: 42", "number", "42"),
    ("The answer is -3.", "number", "-3"),
    ("21-15 = 6 so 6 trees", "number", "6"),  # '-' between numbers is an operator, not a sign
    ("We get 14 - 3 = 11 apples", "number", "11"),  # last number when there is no marker
    ("Answer: 52%", "number", "52"),
    ("So the total is \\boxed{\\frac{5}{2}}", "number", "2.5"),
    ("The answer is \\boxed{12}.", "number", "12"),
    ("no numbers here", "number", None),
    # ASDiv multi-answers
    ("The answer is 5 (years old); 15 (years old); 20 (years old).", "multi", "5; 15; 20"),
    ("The answer is 9:03:36 a.m.", "time", "9:03:36"),
    # BBH
    ("... So the answer is (B).", "option", "(B)"),
    ("So the answer is B.", "option", "(B)"),
    ("(A) is wrong, (C) fits. So the answer is (C).", "option", "(C)"),
    ("not ( True ) ... So the answer is False.", "bool", "False"),
    ("So the answer is Yes.", "yesno", "Yes"),
    ("So the answer is no.", "yesno", "No"),
    ("So the answer is invalid.", "validity", "invalid"),
    ("So the answer is valid.", "validity", "valid"),
    ("So the answer is ] ] >.", "free", "] ] >"),
    ("So the answer is apple banana cherry.", "free", "apple banana cherry"),
    ("So the answer is Monsters, Inc.", "free", "Monsters, Inc"),
    ("The answer is Mrs. Doyle's class.", "free", "Mrs. Doyle's class"),
    ("The answer is -(1/3).", "number", "-1/3"),
])
def test_extract(text, kind, expected):
    assert extract_answer(text, kind) == expected


@pytest.mark.parametrize("pred,gold,kind,ok", [
    ("1080", "1,080", "number", True),
    ("51", "51.0", "number", True),
    ("9", "9 (apples)", "number", True),
    ("0.46", "0.46 (dollars)", "number", True),
    ("2.5", "5/2", "number", True),
    ("-0.3333", "-(1/3)", "number", True),
    ("1/3", "-(1/3)", "number", False),
    ("72", "73", "number", False),
    (None, "72", "number", False),
    ("5; 20; 15", "5 (years old); 15 (years old); 20 (years old)", "multi", True),
    ("5; 15", "5 (years old); 15 (years old); 20 (years old)", "multi", False),
    ("5:45", "5:45", "time", True),
    ("9:3:36", "9:03:36 a.m.", "time", True),
    ("3:4", "4:3", "time", False),
    ("(B)", "(B)", "option", True),
    ("(B)", "(C)", "option", False),
    ("Yes", "yes", "yesno", True),
    ("invalid", "valid", "validity", False),
    ("dearth, wind, & fire", "dearth, wind, & fire", "free", True),
    ("Rug B", "Rug B", "free", True),
    ("They are equal", "They are equal", "free", True),
])
def test_match(pred, gold, kind, ok):
    assert answers_match(pred, gold, kind) is ok


def test_kind_for_and_judge():
    from lora_spec.answers import judge, scorer_for

    p = Problem("x", "q", "(B)", meta={"answer_type": "option"})
    assert kind_for(p) == "option"
    assert kind_for(Problem("y", "q", "3")) == "number"
    assert scorer_for(p, "auto") == scorer_for(p, None) == "option" and scorer_for(p, "number") == "number"
    for strict in (True, False):  # scorer auto: the problem's kind
        assert judge(p, "So the answer is (B).", strict=strict) == ("(B)", True)
    # strict needs an answer sentence; flexible takes the last number (teach's filter, eval's flexible score)
    q = Problem("z", "q", "12")
    assert judge(q, "3 + 9 = 12", strict=True) == (None, False)
    assert judge(q, "3 + 9 = 12", strict=False) == ("12", True)
    assert judge(q, "The answer is 13.", strict=False) == ("13", False)


def test_parse_and_format_roundtrip():
    for s in ("72", "-7", "2.5", "1/3", "0.46"):
        assert format_number(parse_number(s)) == s
    assert parse_number("$1,080.00") == 1080


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown answer kind"):
        extract_answer("x", "nope")


def test_equation_errors_checks_whole_chains_and_rounding():
    from lora_spec.answers import equation_errors

    text = ("2 + 3 + 4 = 9 and (2 + 3) x 4 = 20 and 1,200 * 2 = 2,400 and $5 / 3 = 1.67 and 10/4 = 3 and "
            "7 - 10 = -3. He eats 16 * 3 = 48 eggs, then 2 * 432 = 916. Step 3 = 7; 10/4 = 2; 5 / 0 = 1")
    # chains count once (not "3 + 4 = 9"), separators and $ are read, half-up rounding is right, a bare number or a
    # division by zero is not an equation; 2 * 432 = 916 and 10/4 = 2 are wrong
    assert equation_errors(text) == (9, 2)
    assert equation_errors("The answer is 5.") == (0, 0) and equation_errors(None) == (0, 0)
    assert equation_errors("0.1 + 0.2 = 0.3") == (1, 0)  # exact arithmetic, no float noise
    # halves round away from zero on both sides of it (as the calculator writes them): -0.125 is -0.13
    assert equation_errors("1 - 9 / 8 = -0.13") == (1, 0) and equation_errors("1 - 9 / 8 = -0.12") == (1, 1)
