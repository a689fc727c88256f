"""The four formats and their mixture: exact prompt/target text shared with eval, seeded exemplars that never
contain the question itself, exact proportions, clear errors."""

from __future__ import annotations

import pytest

from lora_spec import prompts
from lora_spec.errors import ConfigError, DataError
from lora_spec.formats import (allocate, build_examples, data_fingerprint, fewer_shots, format_counts,
                               items_from_run, parse_mixture)
from lora_spec.records import FORMATS, Problem, Sample


def _items(n=12):
    probs = {f"p{i}": Problem(f"p{i}", f"Tom has {i} apples and buys {i + 1} more. How many?", str(2 * i + 1),
                              rationale=f"{i} + {i + 1} = {2 * i + 1}.") for i in range(n)}
    samples = [Sample(f"p{i}", 0, "x", f"Tom has {i}. Then {i} + {i + 1} = {2 * i + 1}.\nThe answer is {2 * i + 1}.",
                      answer=str(2 * i + 1), correct=True) for i in range(n)]
    samples.append(Sample("p0", 1, "x", "wrong", answer="7", correct=False))
    return items_from_run(probs, samples)


def test_parse_mixture_and_errors():
    w = parse_mixture("in_context_cot=4,zero_shot_cot=2,in_context_answer=1,zero_shot_answer=1")
    assert w == {"in_context_cot": 4.0, "in_context_answer": 1.0, "zero_shot_cot": 2.0, "zero_shot_answer": 1.0}
    assert parse_mixture("zs_cot=1")["zero_shot_cot"] == 1.0 and parse_mixture("zs_cot")["zero_shot_cot"] == 1.0
    with pytest.raises(ConfigError, match="did you mean 'zero_shot_cot'"):
        parse_mixture("zero_shot_cott=1")
    with pytest.raises(ConfigError, match="weight of 'zero_shot_cot' must be a number"):
        parse_mixture("zero_shot_cot=abc")
    with pytest.raises(ConfigError, match="at least one format"):
        parse_mixture("zero_shot_cot=0")
    with pytest.raises(ConfigError, match=">= 0"):
        parse_mixture("zero_shot_cot=-1")


def test_allocate_is_exact():
    c = allocate(80, parse_mixture("in_context_cot=4,zero_shot_cot=2,in_context_answer=1,zero_shot_answer=1"))
    assert c == {"in_context_cot": 40, "in_context_answer": 10, "zero_shot_cot": 20, "zero_shot_answer": 10}
    c = allocate(7, parse_mixture("zero_shot_cot=1,zero_shot_answer=1"))
    assert sum(c.values()) == 7 and c["in_context_cot"] == 0


def test_examples_match_eval_prompts_and_exemplars_exclude_question(smollm2):
    tok = smollm2.tokenizer
    items = _items(12)
    assert len(items) == 12  # the wrong sample is dropped
    w = parse_mixture("in_context_cot=1,in_context_answer=1,zero_shot_cot=1,zero_shot_answer=1")
    ex = build_examples(items, w, tok, n_shots=3, seed=5)
    assert format_counts(ex) == {f: 3 for f in FORMATS}
    assert ex == build_examples(items, w, tok, n_shots=3, seed=5)  # seeded
    assert ex != build_examples(items, w, tok, n_shots=3, seed=6)
    by_id = {it.problem.id: it for it in items}
    for e in ex:
        p = by_id[e.problem_id].problem
        mode = prompts.MODE_OF_FORMAT[e.format]
        if mode.startswith("zs_"):
            # exactly what evaluation asks the student
            assert e.prompt == prompts.build_prompt(p, mode, tok)
        else:
            assert e.prompt.count("Question:") == 4  # 3 exemplars + the question
            # the question appears once: it is never its own exemplar
            assert e.prompt.count(p.question) == 1
            assert e.prompt.rstrip().endswith(prompts.TRIGGER) == (mode == "icl_cot")
        if mode.endswith("_cot"):
            assert e.target == prompts.cot_target(by_id[e.problem_id].text, p.answer)
            assert e.target.endswith(f"The answer is {p.answer}.") and e.target.count("The answer is") == 1
        else:
            assert e.target == prompts.answer_target(p.answer)


def test_in_context_rows_drop_whole_exemplars_to_fit_max_length(smollm2):
    from lora_spec.batching import encode_examples, over_budget

    tok = smollm2.tokenizer
    items = _items(12)
    w = parse_mixture("in_context_cot=1,in_context_answer=1,zero_shot_cot=1")
    full = build_examples(items, w, tok, n_shots=4, seed=3)
    assert all(e.n_shots == 4 for e in full if e.format.startswith("in_context")) and fewer_shots(full, 4) == {}
    longest = max(len(encode_examples([e], tok, "causal", 10 ** 6)[0][0].input_ids) for e in full)
    one_shot = build_examples(items, w, tok, n_shots=1, seed=3)
    short = max(len(encode_examples([e], tok, "causal", 10 ** 6)[0][0].input_ids) for e in one_shot)
    budget = (short + longest) // 2  # every 1-shot row fits; the longest 4-shot rows do not
    fit = build_examples(items, w, tok, n_shots=4, seed=3, max_length=budget)
    assert fewer_shots(fit, 4) and sum(fewer_shots(fit, 4).values()) == sum(
        1 for e in fit if e.n_shots is not None and e.n_shots < 4)
    _, cut = encode_examples(fit, tok, "causal", budget)
    _, cut_before = encode_examples(full, tok, "causal", budget)
    assert cut == 0 < cut_before  # whole exemplars went instead of the start of the prompt
    for a, b in zip(full, fit):
        assert a.problem_id == b.problem_id and a.format == b.format and a.target == b.target
        if a.n_shots is None:
            assert a == b  # zero-shot rows are untouched
        elif b.n_shots < 4:
            assert over_budget(tok, "causal", budget, a.prompt, a.target)
            assert not over_budget(tok, "causal", budget, b.prompt, b.target)
            # the kept exemplars are the last ones of the row's own draw, whole, and the question is unchanged
            assert b.prompt.count("Question:") == b.n_shots + 1 and a.prompt.endswith(b.prompt.split("Question:")[-1])
            assert a.prompt.split("Question:", 1)[0] == b.prompt.split("Question:", 1)[0]  # system text kept
            assert "Question:" + b.prompt.split("Question:", 1)[1] in a.prompt
        else:
            assert a == b
    # over_budget is encode_examples' own rule
    for e in full:
        enc, n = encode_examples([e], tok, "causal", budget)
        assert bool(n) == over_budget(tok, "causal", budget, e.prompt, e.target) == enc[0].truncated


def test_plain_text_for_seq2seq_and_errors(tiny_t5_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_t5_path))
    items = _items(4)
    ex = build_examples(items, parse_mixture("zero_shot_cot=1"), tok, chat=False)
    assert all(e.prompt.startswith("Question: ") and e.prompt.endswith(prompts.TRIGGER + "\n") for e in ex)
    with pytest.raises(DataError, match="need more than 4 distinct training problems"):
        build_examples(items, parse_mixture("in_context_cot=1"), tok, n_shots=4)
    with pytest.raises(DataError, match="no correct teacher samples"):
        build_examples([], parse_mixture("zero_shot_cot=1"), tok)
    assert data_fingerprint(items, {"a": 1}) != data_fingerprint(items[:3], {"a": 1})


def test_items_from_run_keeps_the_first_problems_in_file_order():
    """`lorasp fit --data RUN --first N`: the correct samples of the run's first N problems; an unknown problem is
    still an error even past N."""
    probs = {f"p{i}": Problem(f"p{i}", f"q{i}", str(i)) for i in (3, 1, 2)}
    samples = [Sample(f"p{i}", 0, "x", f"The answer is {i}.", answer=str(i), correct=True) for i in (1, 2, 3)]
    assert [it.problem.id for it in items_from_run(probs, samples, first=2)] == ["p1", "p3"]  # p3, p1 come first
    assert len(items_from_run(probs, samples)) == 3
    with pytest.raises(DataError, match="'p9'"):
        items_from_run(probs, samples + [Sample("p9", 0, "x", "t", answer="9", correct=True)], first=1)
