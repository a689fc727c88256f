"""Dataset plugins over the real staged files, their splits, and their error messages."""

from __future__ import annotations

import json

import pytest

from lora_spec import registry
from lora_spec.answers import answers_match, extract_answer, kind_for
from lora_spec.errors import DataError


def _load(name, split, **kw):
    return list(registry.create("datasets", name, **kw).load(split))


_CACHE: dict = {}


def _cached(name, split="test", **kw):
    """The real files are read once per session (the records are not modified by the tests)."""
    key = (name, split, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = _load(name, split, **kw)
    return _CACHE[key]


# --------------------------------------------------------------------------------------------- gsm8k

def test_gsm8k_splits_and_dev_carving(data_dir):
    train, dev, test = (_load("gsm8k", s, data_dir=data_dir) for s in ("train", "dev", "test"))
    assert (len(train), len(dev), len(test)) == (7473 - 200, 200, 1319)
    assert not {p.id for p in train} & {p.id for p in dev}
    assert train[0].id == "gsm8k/train/0" and train[0].answer == "72"
    assert "<<" not in train[0].rationale and "####" not in train[0].rationale
    # seeded: the same seed gives the same dev split, another seed another one
    assert [p.id for p in _load("gsm8k", "dev", data_dir=data_dir)] == [p.id for p in dev]
    other = _load("gsm8k", "dev", data_dir=data_dir, dev_seed=1)
    assert {p.id for p in other} != {p.id for p in dev}
    # negative and thousands-separated gold answers are canonical numbers
    answers = {p.answer for p in train + dev + test}
    assert "-7" in answers or any(a.startswith("-") for a in answers)
    assert not any("," in a for a in answers)


def test_gsm8k_paper_validation_index(data_dir):
    import numpy as np

    idx = {int(i) for i in np.load(data_dir / "gsm8k_prompts" / "validation_index.npy")}
    dev = _load("gsm8k", "dev", data_dir=data_dir, dev_index="paper")
    train = _load("gsm8k", "train", data_dir=data_dir, dev_index="paper")
    assert {p.meta["index"] for p in dev} == idx
    assert not idx & {p.meta["index"] for p in train}
    assert len(train) + len(dev) == 7473


def test_gsm8k_malformed_file_names_file_and_line(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    good = json.dumps({"question": "q", "answer": "1+1=2\n#### 2"})
    (tmp_path / "gsm8k" / "test.jsonl").write_text(good + "\n" + json.dumps({"question": "q2"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: missing field 'answer'"):
        _load("gsm8k", "test", data_dir=tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: invalid JSON"):
        _load("gsm8k", "test", data_dir=tmp_path)
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:1: field 'answer': no '#### <answer>' line"):
        _load("gsm8k", "test", data_dir=tmp_path)


def test_missing_data_offline_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as exc:
        _load("gsm8k", "test", data_dir=tmp_path)
    msg = str(exc.value)
    assert str(tmp_path / "gsm8k" / "test.jsonl") in msg and "LORASP_DATA_DIR" in msg and "openai/gsm8k" in msg


def test_unknown_split_is_an_error(data_dir):
    with pytest.raises(DataError, match="no split 'validation'"):
        _load("gsm8k", "validation", data_dir=data_dir)


# --------------------------------------------------------------------------------------------- arith

def test_arith_is_seeded_disjoint_and_exact():
    a = registry.create("datasets", "arith", n_train=600, n_dev=100, n_test=300)
    splits = {s: list(a.load(s)) for s in ("train", "dev", "test")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [600, 100, 300]
    sigs = {s: {tuple(p.meta["signature"]) for p in ps} for s, ps in splits.items()}
    qs = {s: {p.question for p in ps} for s, ps in splits.items()}
    for x, y in (("train", "test"), ("train", "dev"), ("dev", "test")):
        assert not sigs[x] & sigs[y] and not qs[x] & qs[y]
    # deterministic, and another seed gives other problems
    again = registry.create("datasets", "arith", n_train=600, n_dev=100, n_test=300)
    assert [p.question for p in again.load("test")] == [p.question for p in splits["test"]]
    other = registry.create("datasets", "arith", seed=1, n_test=300)
    assert [p.question for p in other.load("test")] != [p.question for p in splits["test"]]
    # 2-5 steps, all four operations, integer answers, and the rationale computes the answer exactly
    steps = {p.meta["steps"] for ps in splits.values() for p in ps}
    assert steps == {2, 3, 4, 5}
    ops = {o for ps in splits.values() for p in ps for o in p.meta["signature"] if isinstance(o, str)}
    assert ops == {"+", "-", "*", "/"}
    for ps in splits.values():
        for p in ps:
            x = p.meta["signature"][0]
            sig = p.meta["signature"][1:]
            for op, k in zip(sig[::2], sig[1::2]):
                x = {"+": x + k, "-": x - k, "*": x * k, "/": x // k}[op]
                assert x > 0
            assert str(x) == p.answer
            assert extract_answer(p.rationale, "number") == p.answer
    wordings = {p.question.split(".")[0].split()[1] for p in splits["train"]}
    assert len(wordings) > 2


def test_arith_bad_params_are_config_errors():
    from lora_spec.errors import ConfigError

    with pytest.raises(ConfigError, match="min_steps"):
        registry.create("datasets", "arith", min_steps=4, max_steps=2)


def test_arith_limit_and_splits():
    a = registry.create("datasets", "arith", n_test=50)
    assert a.splits() == ["train", "dev", "test"]
    assert len(list(a.load("test", limit=7))) == 7
    assert all(kind_for(p) == "number" for p in a.load("test"))


# --------------------------------------------------------------------------------------------- real files

def test_ood_and_bbh_plugins_read_the_canonical_files(data_dir):
    svamp, multi = _cached("svamp"), _cached("multiarith")
    asdiv_all, asdiv_a = _cached("asdiv"), _load("asdiv", "test", subset="asdiv-a")
    assert (len(svamp), len(multi), len(asdiv_all), len(asdiv_a)) == (1000, 600, 2305, 1218)
    assert svamp[0].id == "svamp/chal-1" and svamp[0].answer == "51"
    assert svamp[0].question.startswith("Each pack of dvds costs 76 dollars.") and svamp[0].question.endswith("?")
    assert multi[0].answer == "39" and multi[0].question == multi[0].question.strip()
    a1 = asdiv_all[0]
    assert (a1.id, a1.answer, a1.meta["unit"], a1.meta["answer_type"]) == ("asdiv/nluds-0001", "9", "apples", "number")
    kinds = {}
    for p in asdiv_all:
        kinds[p.meta["answer_type"]] = kinds.get(p.meta["answer_type"], 0) + 1
    assert kinds["multi"] == 90 and kinds["time"] > 40 and kinds["free"] > 50 and kinds["number"] > 2000
    assert len(_load("asdiv", "test", numeric_only=True)) == kinds["number"] + kinds["multi"]
    from lora_spec.plugins.datasets.bbh import BBH_TASKS

    total = 0
    for t in BBH_TASKS:
        ps = _cached("bbh", task=t)
        total += len(ps)
        assert all(p.meta["task"] == t and p.meta["line"] >= 1 for p in ps)
    assert total == 6511
    dates = _load("bbh", "test", task="date_understanding")
    assert dates[0].answer.startswith("(") and kind_for(dates[0]) == "option"
    assert {kind_for(p) for p in _load("bbh", "test", task="ruin_names")} == {"option", "free"}


def test_bbh_unknown_task_and_malformed_files(tmp_path):
    from lora_spec.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'navigate'"):
        registry.create("datasets", "bbh", task="navigat")
    (tmp_path / "bbh" / "bbh").mkdir(parents=True)
    (tmp_path / "bbh" / "bbh" / "navigate.json").write_text(
        '{"canary": "x",\n "examples": [\n  {"input": "a", "target": "Yes"},\n  {"input": "b"}\n]}\n')
    with pytest.raises(DataError, match=r"navigate\.json:4: record 1: missing field 'target'"):
        _load("bbh", "test", task="navigate", data_dir=tmp_path)
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "SVAMP.json").write_text('[\n {"ID": "a", "Body": "b", "Question": "q", "Answer": 1.0},\n'
                                                   ' {"ID": "c", "Body": "b", "Question": "q", "Answer": "x"}\n]')
    with pytest.raises(DataError, match=r"SVAMP\.json:3: record 1: field 'Answer' must be a number"):
        _load("svamp", "test", data_dir=tmp_path)
    (tmp_path / "asdiv").mkdir()
    (tmp_path / "asdiv" / "ASDiv.xml").write_text(
        '<Machine-Reading-Corpus-File><ProblemSet>\n<Problem ID="nluds-1">\n<Body>b</Body>\n'
        '<Question>q</Question>\n</Problem>\n</ProblemSet></Machine-Reading-Corpus-File>\n')
    with pytest.raises(DataError, match=r"ASDiv\.xml:2: problem nluds-1 has no <Answer>"):
        _load("asdiv", "test", data_dir=tmp_path)
    (tmp_path / "asdiv" / "ASDiv.xml").write_text('<a>\n<b>\n</a>\n')
    with pytest.raises(DataError, match=r"ASDiv\.xml:3: invalid XML"):
        _load("asdiv", "test", data_dir=tmp_path)


KNOWN_EXCEPTIONS = {
    # SVAMP chal-680: "Rachel's tree had 4 apples. She picked 2 ... Thereafter 3 new apples grew ... How many apples
    # are there on the tree now?" Equation ( ( 4.0 - 2.0 ) + 3.0 ) = 5, but the gold Answer field is 1.0 (a label
    # error in SVAMP.json). The gold answer itself is still extracted back exactly; only the equation check fails.
    ("svamp/chal-680", "equation"),
}


def test_self_consistency_over_the_real_files(data_dir):
    """Extracting from each dataset's own reference (rationale or "The answer is <gold>") gives back its gold
    answer, for every record of every staged file. The only exception is listed in KNOWN_EXCEPTIONS with its
    reason; it is kept as the dataset states it (scores stay comparable with published numbers)."""
    from lora_spec.plugins.datasets.bbh import BBH_TASKS
    from lora_spec.prompts import answer_target, bbh_exemplars, cot_target

    failures = []
    # GSM8K: the raw human solution ("... #### 1,080") and our CoT target built from the cleaned rationale
    for split, fname in (("train", "train.jsonl"), ("test", "test.jsonl")):
        raw = [json.loads(line) for line in (data_dir / "gsm8k" / fname).read_text().splitlines() if line.strip()]
        probs = list(registry.create("datasets", "gsm8k", dev_size=0).load(split))
        assert len(raw) == len(probs)
        for obj, p in zip(raw, probs):
            gold = obj["answer"].rsplit("####", 1)[1].strip()
            if not answers_match(extract_answer(obj["answer"]), gold):
                failures.append((p.id, "raw solution", obj["answer"][-60:], gold))
            if not answers_match(extract_answer(cot_target(p)), gold):
                failures.append((p.id, "cot_target", cot_target(p)[-60:], gold))
    # SVAMP / MultiArith / ASDiv: gold written as "The answer is X." (ASDiv: the verbatim <Answer>, units and all)
    for name in ("svamp", "multiarith", "asdiv"):
        for p in _cached(name):
            gold_text = p.meta.get("raw_answer", p.answer)
            k = kind_for(p)
            got = extract_answer(answer_target(gold_text), k)
            if not answers_match(got, p.answer, k):
                failures.append((p.id, k, got, p.answer))
            if name == "svamp" and p.meta.get("equation"):  # the equation evaluates to the gold answer
                val = eval(p.meta["equation"], {"__builtins__": {}})  # noqa: S307 - digits and + - * / only
                if abs(val - float(p.answer)) > 1e-4:
                    failures.append((p.id, "equation", p.meta["equation"], p.answer))
    # BBH: every target as "So the answer is <target>." and every CoT exemplar's own rationale
    for t in BBH_TASKS:
        for p in _cached("bbh", task=t):
            k = kind_for(p)
            got = extract_answer(f"Let's think step by step. Some reasoning. So the answer is {p.answer}.", k)
            if not answers_match(got, p.answer, k):
                failures.append((p.id, k, got, p.answer))
        for e in bbh_exemplars(t):
            from lora_spec.plugins.datasets.bbh import target_kind

            k = target_kind(e.answer)
            got = extract_answer(f"{e.rationale} So the answer is {e.answer}.", k)
            if not answers_match(got, e.answer, k):
                failures.append((e.id, k, got, e.answer))
    failures = [f for f in failures if (f[0], f[1]) not in KNOWN_EXCEPTIONS]
    assert not failures, f"{len(failures)} records do not reproduce their gold answer: {failures[:10]}"
