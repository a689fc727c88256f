"""Distribution matching end to end with real teacher logprobs from the llama.cpp server (SmolLM2 GGUF).

1. ``lorasp teach`` with the openai teacher against the real server records per-token top-5 logprobs; they align
   to the SmolLM2 student (same vocabulary: the direct-id path) and to a T5-style SentencePiece student.
2. ``lorasp fit --loss distribution`` on SmolLM2: the teach run is made with the gold teacher (SmolLM2-135M
   rarely solves a problem itself, and only correct samples train), and the real server's top-5 at every
   position of each gold rationale (teacher forcing: ``echo`` + ``logprobs``) is recorded into the run's
   samples through the library API. The fit must align them, train, and report the aligned fraction.
"""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

from lora_spec.records import Sample, read_jsonl, write_jsonl

from tests.helpers import run_in_process

ARITH = ["--dataset", "arith", "--dataset-opt", "min_steps=1", "--dataset-opt", "max_steps=1"]


@pytest.fixture(scope="module")
def server():
    from .llama_server import llama_server

    with llama_server() as base:
        yield base


def _ok(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_real_teacher_topk_from_teach_aligns(server, tmp_path, smollm2_path, tiny_t5_path):
    from transformers import AutoTokenizer

    from lora_spec.align import Aligner, AlignStats, match_spans, teacher_token_bytes
    from lora_spec.teach import load_run

    run = tmp_path / "teach"
    _ok(run_in_process("teach", *ARITH, "--first", "2", "--teacher", "openai", "--model", "smollm2", "--base-url", server,
                "--samples", "1", "--temperature", "0.7", "--top-logprobs", "5", "--max-tokens", "40",
                "--keep", "all", "--concurrency", "2", "--out", str(run), "--no-progress"))
    _problems, samples = load_run(run, include_incorrect=True)
    assert len(samples) == 2
    for s in samples:
        assert s.tokens and len(s.tokens) == len(s.top_logprobs)
        for top in s.top_logprobs:
            assert 1 <= len(top) <= 6 and sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-3
    smol = Aligner(AutoTokenizer.from_pretrained(str(smollm2_path)))
    t5 = Aligner(AutoTokenizer.from_pretrained(str(tiny_t5_path)))
    same, cross = AlignStats(), AlignStats()
    for s in samples:
        r = smol.align_sample(s)
        same.add(r)
        # same vocabulary: the teacher's tokens are the student's (modulo partial UTF-8 tokens)
        if "".join(s.tokens) == s.text:
            assert r.direct and r.student_ids.tolist() == smol.vocab.tokenizer(
                s.text, add_special_tokens=False).input_ids
        mass = np.exp(r.logprobs.astype(np.float64)).sum(-1)
        assert (mass <= 1.0 + 2e-3).all()
        # the sampled token is in the teacher's top-k at most positions, so the student token is a candidate
        hit = np.mean([int(r.student_ids[p]) in r.ids[k].tolist() for k, p in enumerate(r.positions)])
        assert hit > 0.5
        c = t5.align_sample(s)
        cross.add(c)
        t_pieces = [teacher_token_bytes(t) for t in s.tokens]
        _ids, s_pieces = t5.vocab.encode(s.text)
        for a, b in match_spans(t_pieces, s_pieces):
            assert t_pieces[a] == s_pieces[b]
    assert same.fraction > 0.9
    assert cross.student_tokens > 0 and 0.0 < cross.fraction < same.fraction


def _teacher_force(base: str, prompt: str, text: str, k: int = 5) -> tuple[list[str], list[dict[str, float]]]:
    """The server's top-k at each token of ``text`` after ``prompt`` (echo + logprobs, nothing generated)."""
    r = httpx.post(base + "/completions", json={"model": "smollm2", "prompt": prompt + text, "max_tokens": 1,
                                                "echo": True, "logprobs": k, "temperature": 0.0}, timeout=300)
    r.raise_for_status()
    lp = r.json()["choices"][0]["logprobs"]
    toks, tops = [], []
    for tok, off, top in zip(lp["tokens"], lp["text_offset"], lp["top_logprobs"]):
        if off >= len(prompt) and off < len(prompt) + len(text) and top:
            toks.append(tok)
            tops.append({str(c): float(v) for c, v in top.items()})
    return toks, tops


def test_fit_with_distribution_loss_on_smollm2(server, tmp_path):
    from lora_spec.records import Problem
    from lora_spec.teach import resolve_prompt

    run = tmp_path / "gold"
    _ok(run_in_process("teach", *ARITH, "--first", "6", "--teacher", "gold", "--samples", "1", "--out", str(run),
                "--no-progress"))
    fit_args = ["--student", "smollm2-135m", "--formats", "zero_shot_cot=1", "--max-steps", "2",
                "--batch-size", "2", "--max-length", "256", "--targets", "q_proj,v_proj", "--rank", "4",
                "--no-progress", "--tracker", "none", "--before-after", "0"]
    # without recorded top-k, distribution matching is a one-line error naming the fix
    r = run_in_process("fit", "--data", str(run), "--loss", "distribution", "--out", str(tmp_path / "no"), *fit_args)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("error: --loss distribution needs the teacher's top-k"), r.stderr
    assert "--top-logprobs" in last and "Traceback" not in r.stderr and "student:" not in r.stderr  # before loading
    r = run_in_process("fit", "--data", str(run), "--loss", "mix:2", "--out", str(tmp_path / "no2"), *fit_args)
    assert r.returncode == 2 and r.stderr.startswith("error: --loss") and r.stderr.count("\n") == 1, r.stderr

    manifest = json.loads((run / "manifest.json").read_text())
    spec = resolve_prompt(manifest["prompt"]["name"])
    problems = {p.id: p for p in read_jsonl(run / "problems.jsonl", Problem)}
    samples = read_jsonl(run / "samples.jsonl", Sample)
    assert len(samples) == 6 and all(s.correct for s in samples)
    for s in samples:
        s.tokens, s.top_logprobs = _teacher_force(server, spec.render(problems[s.problem_id]), s.text)
        assert s.tokens
    write_jsonl(run / "samples.jsonl", samples)

    out = tmp_path / "adapter"
    _ok(run_in_process("fit", "--data", str(run), "--loss", "distribution", "--loss-temperature", "1.5",
                "--out", str(out), *fit_args))
    m = json.loads((out / "lorasp.json").read_text())
    assert m["loss"] == "distribution"
    d = m["distribution"]
    assert d["with_teacher_topk"] == 6 and d["temperature"] == 1.5
    assert d["aligned_fraction"] > 0.8  # same vocabulary; the rest: target text that the teacher did not write
    assert all(math.isfinite(x) for x in m["train"]["loss_history"]) and len(m["train"]["loss_history"]) == 2


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-t5"])
def test_trainer_glue_places_teacher_topk_on_target_labels(preset):
    """encode_examples + attach_topk + collate: distributions sit exactly on the target's label positions."""
    import torch

    from lora_spec.losses import IGNORE_INDEX, compute_loss
    from lora_spec.records import Example
    from lora_spec.student import load_student
    from lora_spec.trainer import batch_loss, collate, encode_examples

    from lora_spec.align import attach_topk

    st = load_student(preset)
    tok = st.tokenizer
    target = "John buys 3 books and 2 pens, so 3 + 2 = 5. The answer is 5."
    ids = tok(target, add_special_tokens=False).input_ids
    pieces = [tok.decode([i]) for i in ids]
    tops = [{p: -0.3, " the": -2.0} for p in pieces]
    exs = [Example("zero_shot_cot", "Question: how many things does John buy?\nAnswer:", target, "p1", pieces, tops),
           Example("zero_shot_answer", "Question: how many?\nAnswer:", "The answer is 5.", "p2", pieces, tops)]
    enc, _ = encode_examples(exs, tok, st.kind, 256)
    summary = attach_topk(enc, exs, tok, st.kind)
    assert summary["cot_examples"] == 1 and summary["with_teacher_topk"] == 1 and enc[1].topk is None
    pos, cid, _lp = enc[0].topk
    labels = enc[0].labels
    assert summary["aligned_fraction"] > 0.5
    for p, c in zip(pos.tolist(), cid.tolist()):
        assert labels[p] != IGNORE_INDEX and labels[p] in c  # the target token is one of the candidates
    batch = collate(enc, tok.pad_token_id, st.kind)
    assert batch["topk"].mask.sum() == len(pos) and batch["topk"].ids.shape[:2] == batch["labels"].shape
    d, n = batch_loss(st.model, batch, kind=st.kind, loss_spec="distribution")
    s, n2 = batch_loss(st.model, batch, kind=st.kind, loss_spec="sample")
    assert n == n2 and torch.isfinite(d) and abs(float(d.detach()) - float(s.detach())) > 1e-3
    if st.kind == "causal":  # the head-on-targets-only path equals the loss on full [B, T, vocab] logits
        full = st.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ref, n3 = compute_loss("mix:0.3", full, batch["labels"], batch["topk"], causal=True)
        got, n4 = batch_loss(st.model, batch, kind=st.kind, loss_spec="mix:0.3")
        assert n3 == n4 and abs(float(ref.detach()) - float(got.detach())) < 1e-3
