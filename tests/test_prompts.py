"""Prompt modes, exemplar sets and the exact targets shared by training and evaluation."""

from __future__ import annotations

import pytest

from lora_spec import registry
from lora_spec.answers import extract_answer
from lora_spec.errors import ConfigError, DataError
from lora_spec.prompts import (MODES, TRIGGER, answer_target, bbh_exemplars, build_example, build_prompt,
                               cot_target, default_exemplars, gsm8k_exemplars)
from lora_spec.records import Problem

BBH_TASKS = 27


def _gsm8k_test(n=1):
    return list(registry.create("datasets", "gsm8k").load("test", limit=n))


def test_targets_are_exact():
    p = Problem("t/1", "q?", "72", rationale="48 + 24 = 72.")
    assert cot_target(p) == "48 + 24 = 72.\nThe answer is 72."
    assert answer_target("72") == "The answer is 72."
    assert answer_target("(B)") == "The answer is (B)."
    # a teacher rationale that already states the answer gets exactly one final sentence
    assert cot_target("So 6 + 3 = 9. The answer is 9", "9") == "So 6 + 3 = 9.\nThe answer is 9."
    assert cot_target("Let's think step by step. 2 + 2 = 4. So the answer is 4.", "4") == "2 + 2 = 4.\nThe answer is 4."
    assert cot_target("a = 1\n#### 1", "1") == "a = 1\nThe answer is 1."
    assert extract_answer(cot_target(p)) == "72"


def test_gsm8k_exemplar_sets(data_dir):
    eight, four = gsm8k_exemplars(8), gsm8k_exemplars(4)
    assert len(eight) == 8 and len(four) == 4
    assert [e.answer for e in eight] == ["6", "5", "39", "8", "9", "29", "33", "8"]
    assert [e.answer for e in four] == ["21", "48", "399", "13"]
    assert all(e.rationale and TRIGGER not in e.rationale and "answer is" not in e.rationale for e in eight + four)
    assert eight[0].question.startswith("There are 15 trees in the grove.")
    for name in ("complex", "mid", "simple", "random"):
        assert len(gsm8k_exemplars(8, name=name)) == 8
    with pytest.raises(ConfigError, match="unknown GSM8K exemplar set"):
        gsm8k_exemplars(8, name="nope")


def test_bbh_exemplars_for_all_27_tasks(data_dir):
    tasks = sorted(p.stem for p in (data_dir / "bbh" / "cot-prompts").glob("*.txt"))
    assert len(tasks) == BBH_TASKS
    for t in tasks:
        ex = bbh_exemplars(t)
        assert len(ex) == 3, t
        for e in ex:
            assert e.rationale and "So the answer is" not in e.rationale and not e.answer.endswith(".")
    d = bbh_exemplars("date_understanding")[0]
    assert d.answer == "(D)" and d.question.startswith("Today is Christmas Eve of 1937.") and "(F)" in d.question


def test_plain_prompts_all_modes(data_dir):
    p = _gsm8k_test()[0]
    zs_cot = build_prompt(p, "zs_cot")
    assert zs_cot == f"Question: {p.question}\n{TRIGGER}\n"
    assert build_prompt(p, "zs_answer") == f"Question: {p.question}\n"
    icl = build_prompt(p, "icl_cot", n_shots=2)
    blocks = icl.split("\n\n")
    assert len(blocks) == 3 and blocks[0].endswith("The answer is 6.") and blocks[-1] == zs_cot
    icl_a = build_prompt(p, "icl_answer")
    assert icl_a.count("Question:") == 9 and TRIGGER not in icl_a and icl_a.endswith(f"{p.question}\n")
    # the format names of records.FORMATS are accepted as modes too
    assert build_prompt(p, "zero_shot_cot") == zs_cot
    with pytest.raises(ConfigError, match="unknown prompt mode"):
        build_prompt(p, "few_shot")


def test_explicit_exemplars_from_a_training_pool(data_dir):
    pool = list(registry.create("datasets", "gsm8k").load("train", limit=3))
    p = _gsm8k_test()[0]
    text = build_prompt(p, "icl_cot", exemplars=pool)
    for e in pool:
        assert f"Question: {e.question}\n{TRIGGER}\n{cot_target(e)}" in text
    prompt, target = build_example(p, "icl_cot", exemplars=pool)
    assert prompt == text and target == cot_target(p)
    prompt, target = build_example(p, "zs_cot", rationale="Teacher says 9 * 2 = 18. The answer is 18", answer="18")
    assert target == "Teacher says 9 * 2 = 18.\nThe answer is 18."
    with pytest.raises(DataError, match="has no rationale"):
        build_prompt(p, "icl_cot", exemplars=[Problem("x", "q", "1")])


def test_chat_template_for_instruct_student(smollm2_path, data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    p = _gsm8k_test()[0]
    text = build_prompt(p, "zs_cot", tok)
    assert text.startswith("<|im_start|>system\n") and "named SmolLM" not in text  # our short system message
    assert text.endswith(f"<|im_start|>assistant\n{TRIGGER}\n")
    icl = build_prompt(p, "icl_cot", tok, n_shots=2)
    assert icl.count("<|im_start|>assistant\n") == 3 and f"{TRIGGER}\n" + cot_target(gsm8k_exemplars(8)[0]) in icl
    assert build_prompt(p, "zs_answer", tok).endswith("<|im_start|>assistant\n")
    # chat=False gives the plain layout even for an instruct tokenizer
    assert build_prompt(p, "zs_cot", tok, chat=False) == build_prompt(p, "zs_cot")
    # no chat template (T5/base models): plain text
    with pytest.raises(ConfigError, match="chat template"):
        build_prompt(p, "zs_cot", None, chat=True)


def test_default_exemplars_follow_the_dataset(data_dir):
    arith = registry.create("datasets", "arith", n_test=40)
    q = next(iter(arith.load("test")))
    ex = default_exemplars(q, 3)
    train_ids = {e.id for e in arith.load("train", limit=3)}
    assert {e.id for e in ex} == train_ids
    assert {e.question for e in ex}.isdisjoint({p.question for p in arith.load("test")})
    bbh = Problem("bbh/navigate/0", "q", "Yes", meta={"dataset": "bbh", "task": "navigate"})
    assert len(default_exemplars(bbh)) == 3
    assert len(default_exemplars(_gsm8k_test()[0])) == 8
    assert set(MODES) == {"icl_cot", "zs_cot", "icl_answer", "zs_answer"}
