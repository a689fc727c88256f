"""Dataset plugins over the real staged files, their splits, and their error messages."""

from __future__ import annotations

import json

import pytest

from lora_spec import registry
from lora_spec.answers import answers_match, extract_answer, kind_for
from lora_spec.errors import DataError


def _load(name, split, **kw):
    return list(registry.create("datasets", name, **kw).load(split))


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
