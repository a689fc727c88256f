"""align.py / topk.py with real tokenizers: SmolLM2 byte-level BPE and a locally trained T5-style SentencePiece.

Property tests (hypothesis): self-alignment is the identity, aligned spans cover identical bytes, target
distributions sum to <= 1. Plus the disagreement cases that need the DP fallback, and the compact store.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_spec.align import (Aligner, AlignStats, StudentVocab, equal_segments, match_spans, teacher_token_bytes)
from lora_spec.errors import DataError
from lora_spec.topk import TopKStore, TopKWriter, sample_key


@pytest.fixture(scope="module")
def smol_tok(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


@pytest.fixture(scope="module")
def t5_tok(tiny_t5_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_t5_path))


@pytest.fixture(scope="module")
def smol(smol_tok):
    return Aligner(smol_tok)


@pytest.fixture(scope="module")
def t5(t5_tok):
    return Aligner(t5_tok)


@pytest.fixture(scope="module")
def gsm8k_texts(data_dir):
    out = []
    with open(data_dir / "gsm8k" / "train.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= 60:
                break
            out.append(json.loads(line)["answer"])
    return out


def _teacher_from(tok, text, *, raw=False, k=3, seed=0):
    """Teacher tokens/top-k from a tokenizer's own tokenisation: the sampled token gets the most mass."""
    ids = tok(text, add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids) if raw else [tok.decode([i]) for i in ids]
    rng = np.random.default_rng(seed)
    vocab = tok.convert_ids_to_tokens(list(range(min(len(tok), 5000))))
    tops = []
    for p in pieces:
        probs = rng.dirichlet(np.ones(k + 1))
        probs[::-1].sort()
        cands = [p] + [(v if raw else tok.convert_tokens_to_string([v])) for v in rng.choice(vocab, k - 1)]
        tops.append({c: math.log(float(q)) for c, q in zip(cands, probs[:k])})
    return ids, pieces, tops


_TEXT = st.lists(st.sampled_from(list("abcdefxyz ABC 0123456789 .,$%*=+-\n'’é½→😀€") + ["  ", " the", "\t", " eggs"]),
                 min_size=1, max_size=60).map("".join)


# --------------------------------------------------------------------------------------------- properties

@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=_TEXT)
def test_self_alignment_is_identity(smol_tok, smol, t5_tok, t5, text):
    for tok, al, enc in ((smol_tok, smol, "byte_level"), (t5_tok, t5, "sentencepiece")):
        ids, pieces, tops = _teacher_from(tok, text, raw=True)
        # raw vocabulary pieces: a short text cannot always tell 'Ã©' (byte-level 'é') from text, so say it
        r = Aligner(al.vocab, teacher_encoding=enc).align(text, pieces, tops)
        assert r.student_ids.tolist() == ids
        unk = tok.unk_token_id
        want = [j for j, i in enumerate(ids) if i != unk]
        assert r.positions.tolist() == want
        # the teacher's own token is a candidate: the student token itself, with the teacher's top logprob
        for row, p in enumerate(r.positions):
            assert int(r.student_ids[p]) in r.ids[row].tolist()
        assert r.aligned_fraction == (len(want) / len(ids) if ids else 0.0)
    # the direct-id fast path (shared vocabulary) gives the same targets
    ids, pieces, tops = _teacher_from(smol_tok, text, raw=True)
    d = Aligner(smol.vocab, same_vocab=True, teacher_encoding="byte_level").align(text, pieces, tops)
    g = Aligner(smol.vocab, teacher_encoding="byte_level").align(text, pieces, tops)
    assert d.direct and d.student_ids.tolist() == g.student_ids.tolist()
    assert d.positions.tolist() == g.positions.tolist() and (d.ids == g.ids).all()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=_TEXT, seed=st.integers(0, 2 ** 16))
def test_cross_tokenizer_spans_are_identical_and_distributions_sum_le_1(smol_tok, smol, t5, text, seed):
    _ids, pieces, tops = _teacher_from(smol_tok, text, seed=seed, k=4)
    r = t5.align(text, pieces, tops)
    t_pieces = [teacher_token_bytes(p) for p in pieces]
    s_ids, s_pieces = t5.vocab.encode(text)
    pairs = match_spans(t_pieces, s_pieces)
    # every aligned pair covers identical bytes, and pairs are strictly monotone on both sides
    for (a, b) in pairs:
        assert t_pieces[a] == s_pieces[b]
    assert all(p[0] < q[0] and p[1] < q[1] for p, q in zip(pairs, pairs[1:]))
    assert set(r.positions.tolist()) <= {b for _, b in pairs}
    mass = np.exp(r.logprobs.astype(np.float64)).sum(-1)
    assert (mass <= 1.0 + 2e-3).all()
    assert r.logprobs.dtype == np.float16 and r.ids.dtype == np.int32
    # candidate ids are real student tokens whose surface is the candidate's string
    for row, pos in enumerate(r.positions):
        for cid, lp in zip(r.ids[row], r.logprobs[row]):
            if np.isfinite(lp):
                assert t5.vocab.surfaces[cid] is not None


@settings(max_examples=200, deadline=None)
@given(a=st.binary(max_size=60), edits=st.lists(st.tuples(st.integers(0, 59), st.binary(max_size=3)), max_size=4))
def test_equal_segments_cover_identical_bytes(a, edits):
    b = bytearray(a)
    for pos, ins in edits:
        pos = min(pos, len(b))
        b[pos:pos + 1] = ins
    b = bytes(b)
    segs = equal_segments(a, b)
    last_t = last_s = 0
    for t0, s0, n in segs:
        assert n > 0 and a[t0:t0 + n] == b[s0:s0 + n]
        assert t0 >= last_t and s0 >= last_s
        last_t, last_s = t0 + n, s0 + n
    if a == b:
        assert segs == ([(0, 0, len(a))] if a else [])


# --------------------------------------------------------------------------------------------- fallback cases

def test_disagreements_use_dp_only_locally(smol, t5):
    # SentencePiece adds a leading space; NFKC turns '½' into '1⁄2'; the rest must still align
    import re

    text = "she has ½ of 16 eggs and eats 3 eggs left"
    pieces = re.findall(r"\s*\S+", text)  # a word-level teacher: 'she', ' has', ' ½', ...
    r = t5.align(text, pieces, [{p: -0.1, " ea": -3.0, " of": -3.5} for p in pieces])
    t_bytes = b"".join(teacher_token_bytes(p) for p in pieces)
    s_ids, s_pieces = t5.vocab.encode(text)
    segs = equal_segments(t_bytes, b"".join(s_pieces))
    assert segs[0][:2] == (0, 1)  # the SentencePiece dummy-prefix space is skipped by the DP
    assert segs[-1][0] + segs[-1][2] == len(t_bytes)  # resynchronised after '½' -> '1', unk, '2'
    toks = t5.vocab.tokenizer.convert_ids_to_tokens(r.student_ids[r.positions].tolist())
    assert toks == ["▁16"]  # the only word that this 400-piece vocabulary keeps as one identical token
    # candidates that are single student tokens are kept (' ea' is '▁ea'); ' of' is not one student token
    assert r.ids[0].tolist() == [s_ids[r.positions[0]], t5.vocab.lookup[b" ea"]]
    assert np.isfinite(r.logprobs[0]).all() and b" of" not in t5.vocab.lookup
    # a teacher that dropped the bytes of an emoji (llama.cpp reports '' for partial UTF-8 tokens)
    text = "I like 😀 a lot and 12 more apples"
    ids, pieces, tops = _teacher_from(smol.vocab.tokenizer, text)
    broken = [("" if "\ufffd" in p else p) for p in pieces]
    r = smol.align(text, broken, tops)
    toks = smol.vocab.tokenizer.convert_ids_to_tokens(r.student_ids[r.positions].tolist())
    assert "Ġlot" in toks and "Ġapples" in toks and r.n_aligned == len(ids) - sum(p != b for p, b in zip(pieces, broken))
    # the target text differs from the teacher text (stripped, a suffix added): still aligned where equal
    text = " Tom buys 4 books.\nHe reads 2 of them."
    _ids, pieces, tops = _teacher_from(smol.vocab.tokenizer, text)
    r = smol.align(text.strip() + " The answer is 2.", pieces, tops)
    assert 0.5 < r.aligned_fraction < 1.0


def test_raw_piece_encodings_and_bytes_escapes(smol_tok, gsm8k_texts):
    from lora_spec.align import detect_teacher_encoding

    ids = smol_tok(gsm8k_texts[0], add_special_tokens=False).input_ids
    assert detect_teacher_encoding(smol_tok.convert_ids_to_tokens(ids)) == "byte_level"
    assert detect_teacher_encoding([smol_tok.decode([i]) for i in ids]) == "text"
    assert detect_teacher_encoding(["▁Janet", "’", "s", "▁ducks"]) == "sentencepiece"
    assert teacher_token_bytes("Ġthe", "byte_level") == b" the"
    assert teacher_token_bytes("▁the", "sentencepiece") == b" the"
    assert teacher_token_bytes("<0xE2>", "sentencepiece") == b"\xe2"
    assert teacher_token_bytes("bytes:\\xe2\\x80", "text") == b"\xe2\x80"
    assert teacher_token_bytes(" the") == b" the"


def test_no_topk_is_all_one_hot_and_length_mismatch_is_an_error(smol):
    r = smol.align("12 apples", None, None)
    assert r.n_student > 0 and r.n_aligned == 0 and r.aligned_fraction == 0.0
    with pytest.raises(DataError, match="2 tokens but 1 top-k"):
        smol.align("12 apples", ["12", " apples"], [{"12": -0.1}])


def test_real_gsm8k_rationales_align_across_tokenizers(smol_tok, smol, t5, gsm8k_texts):
    stats_same, stats_cross = AlignStats(), AlignStats()
    teach = [_teacher_from(smol_tok, text, seed=i, k=5) for i, text in enumerate(gsm8k_texts)]
    for al, stats in ((smol, stats_same), (t5, stats_cross)):
        one = [al.align(text, t[1], t[2]) for text, t in zip(gsm8k_texts, teach)]
        many = al.align_many(gsm8k_texts, [t[1] for t in teach], [t[2] for t in teach])
        for a, b in zip(one, many):  # the batched path gives the same targets
            assert (a.student_ids == b.student_ids).all() and (a.positions == b.positions).all()
            assert (a.ids == b.ids).all() and np.array_equal(a.logprobs, b.logprobs)
            stats.add(a)
    assert stats_same.fraction > 0.97  # text-convention pieces of the same BPE: everything but partial bytes
    assert 0.05 < stats_cross.fraction < 0.9  # a tiny 400-piece unigram vocabulary rarely agrees on a token
    s = stats_cross.summary()
    assert s["samples"] == len(gsm8k_texts) and s["aligned_tokens"] == stats_cross.aligned


# --------------------------------------------------------------------------------------------- storage

def test_topk_store_memory_disk_roundtrip(tmp_path, smol, gsm8k_texts):
    items = []
    for i, text in enumerate(gsm8k_texts[:20]):
        _ids, pieces, tops = _teacher_from(smol.vocab.tokenizer, text, seed=i, k=5)
        items.append((sample_key(f"gsm8k/train/{i}", 0), smol.align(text, pieces, tops)))
    mem = TopKStore.from_targets(items)
    assert len(mem) == 20 and mem.k == 5
    mem.save(tmp_path / "store")
    disk = TopKStore.open(tmp_path / "store")
    assert isinstance(disk._a["ids"], np.memmap)
    for (key, t), (key2, d) in zip(items, disk):
        assert key == key2
        assert (t.student_ids == d.student_ids).all() and (t.positions == d.positions).all()
        assert (t.ids[:, :5] == d.ids[:, : t.ids.shape[1]]).all()
        assert np.array_equal(t.logprobs, d.logprobs[:, : t.logprobs.shape[1]])
    assert disk.get("gsm8k/train/3#0") is not None and "nope#0" not in disk
    assert abs(disk.aligned_fraction - mem.meta["aligned_fraction"]) < 1e-3
    # 6 bytes per candidate slot + 8 per student token (+ offsets)
    rows = int(disk.row_off[-1])
    assert disk.nbytes == rows * 5 * 6 + int(disk.tok_off[-1]) * 4 + rows * 4 + (len(disk) + 1) * 16
    # streaming writer: abort on error leaves nothing under the final name
    with pytest.raises(RuntimeError):
        with TopKWriter(tmp_path / "half", k=5) as w:
            w.add("a#0", items[0][1])
            raise RuntimeError("crash")
    assert not (tmp_path / "half").exists()
    # a truncated file is reported with its name
    (tmp_path / "store" / "ids.i32").write_bytes(b"\0" * 8)
    with pytest.raises(DataError, match="ids.i32"):
        TopKStore.open(tmp_path / "store")
    with pytest.raises(DataError, match="duplicate"):
        TopKStore.from_targets([items[0], items[0]])


def test_student_vocab_kinds(smol, t5):
    assert smol.vocab.kind == "byte_level" and t5.vocab.kind == "sentencepiece"
    assert smol.vocab.lookup[b" the"] == smol.vocab.tokenizer.convert_tokens_to_ids("Ġthe")
    assert t5.vocab.surfaces[t5.vocab.tokenizer.convert_tokens_to_ids("▁")] == b" "
    assert isinstance(StudentVocab(smol.vocab.tokenizer).surfaces, list)


def test_build_store_streams_samples_to_disk(tmp_path, smol, gsm8k_texts):
    from lora_spec.records import Sample
    from lora_spec.topk import build_store

    samples = []
    for i, text in enumerate(gsm8k_texts[:25]):
        _ids, pieces, tops = _teacher_from(smol.vocab.tokenizer, text, seed=i, k=5)
        samples.append(Sample(f"gsm8k/train/{i}", 0, "p", text, tokens=pieces, top_logprobs=tops))
    disk = build_store(iter(samples), smol, tmp_path / "s", k=5, chunk=7, meta={"teacher": "test"})
    mem = build_store(samples, smol, None, k=5)
    assert len(disk) == len(mem) == 25 and disk.meta["teacher"] == "test" and disk.meta["samples"] == 25
    for (k1, a), (k2, b) in zip(disk, mem):
        assert k1 == k2 and (a.positions == b.positions).all() and (a.ids == b.ids).all()
    assert disk.aligned_fraction > 0.9 and disk.meta["aligned_fraction"] > 0.9
