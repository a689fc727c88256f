"""losses.py: NLL / KL-on-top-k / mix, against brute-force references; accumulation; quantized LoRA students."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lora_spec.errors import ConfigError
from lora_spec.losses import (IGNORE_INDEX, LossSpec, TopKBatch, collate_topk, compute_loss, count_tokens,
                              distribution_kl, token_nll)


def _rand(b=2, t=6, v=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, v, generator=g), torch.randint(0, v, (b, t), generator=g)


def _brute_kl(z, ids, lps, renormalize=False):
    """Reference: KL over the K candidates + the 'other' bucket, one position at a time, in float64."""
    s = torch.log_softmax(z.double(), -1)
    out = torch.zeros(z.shape[:2], dtype=torch.float64)
    for b in range(z.shape[0]):
        for t in range(z.shape[1]):
            keep = [(int(i), float(l)) for i, l in zip(ids[b, t], lps[b, t]) if math.isfinite(float(l))]
            p = [math.exp(l) for _, l in keep]
            if renormalize:
                tot = sum(p)
                p = [x / tot for x in p]
            q = [math.exp(float(s[b, t, i])) for i, _ in keep]
            kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
            pr, qr = 1 - sum(p), 1 - sum(q)
            if not renormalize and pr > 1e-9:
                kl += pr * math.log(pr / qr)
            out[b, t] = kl
    return out


def test_loss_spec_parse():
    assert LossSpec.parse("sample").alpha == 0.0
    assert LossSpec.parse("distribution").alpha == 1.0
    m = LossSpec.parse("mix:0.3")
    assert (m.kind, m.alpha, str(m)) == ("mix", 0.3, "mix:0.3")
    assert LossSpec.parse("distribution").needs_teacher_topk and not LossSpec.parse("sample").needs_teacher_topk
    for bad in ("kl", "mix:", "mix:1.5", "mix:-0.1", "mix:abc", ""):
        with pytest.raises(ConfigError, match="--loss"):
            LossSpec.parse(bad)
    with pytest.raises(ConfigError, match="temperature"):
        LossSpec.parse("distribution", temperature=0)


def test_token_nll_matches_cross_entropy_and_shift():
    z, y = _rand()
    y[0, :2] = IGNORE_INDEX
    s, n = token_nll(z, y)
    ref = F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    assert n == int((y != IGNORE_INDEX).sum()) and torch.allclose(s, ref)
    s, n = token_nll(z, y, causal=True)
    ref = F.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), y[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="sum")
    assert n == count_tokens(y, causal=True) == int((y[:, 1:] != IGNORE_INDEX).sum()) and torch.allclose(s, ref)


@pytest.mark.parametrize("renormalize", [False, True])
def test_topk_kl_matches_bruteforce(renormalize):
    z, _ = _rand(seed=1)
    teacher = torch.log_softmax(torch.randn_like(z) * 2, -1)
    top = teacher.topk(4, -1)
    lps = top.values.clone()
    lps[0, 1, 2:] = float("-inf")  # a position where the teacher gave only 2 candidates
    mask = torch.ones(z.shape[:2], dtype=torch.bool)
    mask[1, 3] = False
    s, n = distribution_kl(z, top.indices, lps, mask, renormalize=renormalize)
    ref = (_brute_kl(z, top.indices, lps, renormalize) * mask).sum()
    assert n == int(mask.sum())
    assert abs(float(s) - float(ref)) < 1e-4 and float(s) >= 0


def test_full_vocabulary_teacher_equals_full_kl_and_temperature():
    z, _ = _rand(seed=2)
    t_logits = torch.randn_like(z)
    t = torch.log_softmax(t_logits, -1)
    ids = torch.arange(z.shape[-1]).expand(*z.shape[:2], -1)
    mask = torch.ones(z.shape[:2], dtype=torch.bool)
    s, _ = distribution_kl(z, ids, t, mask)
    ref = F.kl_div(torch.log_softmax(z, -1), t, log_target=True, reduction="sum")
    assert abs(float(s) - float(ref)) < 1e-3
    # temperature: with the full distribution, re-tempering within the kept set is exact; scaled by tau^2
    tau = 2.0
    s, _ = distribution_kl(z, ids, t, mask, temperature=tau)
    ref = F.kl_div(torch.log_softmax(z / tau, -1), torch.log_softmax(t_logits / tau, -1), log_target=True,
                   reduction="sum") * tau ** 2
    assert abs(float(s) - float(ref)) < 1e-3
    # the student's own distribution as a teacher: zero loss, zero gradient
    zz = z.clone().requires_grad_(True)
    s, _ = distribution_kl(zz, ids, torch.log_softmax(z, -1), mask)
    s.backward()
    assert abs(float(s.detach())) < 1e-4 and zz.grad.abs().max() < 1e-5


def test_one_hot_teacher_is_nll_and_mix_interpolates():
    z, y = _rand(seed=3)
    y[1, :3] = IGNORE_INDEX
    onehot = TopKBatch(y.clamp(min=0).unsqueeze(-1), torch.zeros(*y.shape, 1), y != IGNORE_INDEX)
    nll, n = compute_loss("sample", z, y, None, causal=False)
    d, n2 = compute_loss("distribution", z, y, onehot, causal=False)
    assert n == n2 and abs(float(nll) - float(d)) < 1e-4
    # a real (non one-hot) teacher: mix is the per-token interpolation
    top = torch.log_softmax(torch.randn_like(z), -1).topk(3, -1)
    tb = TopKBatch(top.indices, top.values, torch.rand(y.shape, generator=torch.Generator().manual_seed(0)) > .3)
    d, _ = compute_loss("distribution", z, y, tb, causal=True)
    s, _ = compute_loss("sample", z, y, tb, causal=True)
    m, _ = compute_loss("mix:0.25", z, y, tb, causal=True)
    assert abs(float(m) - (0.25 * float(d) + 0.75 * float(s))) < 1e-4
    assert abs(float(d) - float(s)) > 1e-3  # the teacher distribution really changes the loss
    # with no aligned position at all, distribution == sample
    d0, _ = compute_loss("distribution", z, y, TopKBatch.empty(*y.shape, 3), causal=True)
    assert abs(float(d0) - float(s)) < 1e-4


def test_gradient_accumulation_normalisation_equals_full_batch():
    """Summed losses / window token count: micro-batches of unequal length give the full-batch gradient."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 17)
    x = torch.randn(4, 9, 8)
    y = torch.randint(0, 17, (4, 9))
    y[0, :7] = IGNORE_INDEX  # very unequal numbers of label tokens per row
    y[3, :2] = IGNORE_INDEX
    top = torch.log_softmax(torch.randn(4, 9, 17), -1).topk(4, -1)
    tb = TopKBatch(top.indices, top.values, torch.ones(4, 9, dtype=torch.bool))
    spec = LossSpec.parse("mix:0.5")

    def sl(t, a, b):
        return TopKBatch(t.ids[a:b], t.logprobs[a:b], t.mask[a:b])

    lin.zero_grad()
    full, n = compute_loss(spec, lin(x), y, tb, causal=True)
    (full / n).backward()
    g_full = lin.weight.grad.clone()
    lin.zero_grad()
    parts = [(0, 1), (1, 4)]
    n_total = sum(count_tokens(y[a:b], causal=True) for a, b in parts)
    assert n_total == n
    for a, b in parts:
        s, _ = compute_loss(spec, lin(x[a:b]), y[a:b], sl(tb, a, b), causal=True)
        (s / n_total).backward()
    assert torch.allclose(lin.weight.grad, g_full, atol=1e-6)
    # the naive mean-of-means is measurably different here (so this test can fail)
    lin.zero_grad()
    for a, b in parts:
        s, k = compute_loss(spec, lin(x[a:b]), y[a:b], sl(tb, a, b), causal=True)
        (s / k / len(parts)).backward()
    assert not torch.allclose(lin.weight.grad, g_full, atol=1e-4)


def test_collate_topk_places_rows_and_fp16():
    import numpy as np

    rows = [(np.array([1, 3]), np.array([[5, 6], [7, 8]]), np.array([[-0.1, -2.5], [-0.2, -np.inf]], np.float16)),
            None]
    tb = collate_topk(rows, 6, pad_left=[1, 0])
    assert tb.ids.shape == (2, 6, 2) and tb.mask.tolist() == [[False, False, True, False, True, False], [False] * 6]
    assert tb.ids[0, 2].tolist() == [5, 6] and tb.ids[0, 4].tolist() == [7, 8]
    assert torch.isinf(tb.logprobs[0, 4, 1]) and abs(float(tb.logprobs[0, 2, 0]) + 0.1) < 1e-3


@pytest.mark.parametrize("preset,quant", [("tiny-llama", "nf4"), ("tiny-t5", "int8")])
def test_distribution_loss_trains_quantized_lora_student(preset, quant):
    """Decoder-only and seq2seq, bitsandbytes-quantized base + LoRA: finite loss, gradients reach LoRA only."""
    from peft import LoraConfig, get_peft_model

    from lora_spec.student import load_student

    st = load_student(preset, quant=quant)
    causal = st.kind == "causal"
    targets = ["q_proj", "v_proj"] if causal else ["q", "v"]
    model = get_peft_model(st.model, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                 task_type="CAUSAL_LM" if causal else "SEQ_2_SEQ_LM"))
    tok = st.tokenizer
    enc = tok(["how many apples are left", "John buys 3 books"], return_tensors="pt", padding=True)
    labels = enc.input_ids.clone()
    labels[enc.attention_mask == 0] = IGNORE_INDEX
    if causal:
        logits = model(**enc).logits
    else:
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).logits
    v = logits.shape[-1]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, v, (*labels.shape, 3), generator=g)
    ids[..., 0] = labels.clamp(min=0)
    lps = torch.log(torch.tensor([0.6, 0.2, 0.1])).expand(*labels.shape, 3).clone()
    tb = TopKBatch(ids, lps, labels != IGNORE_INDEX)
    loss, n = compute_loss(LossSpec.parse("distribution", temperature=2.0), logits, labels, tb, causal=causal)
    assert n > 0 and torch.isfinite(loss)
    (loss / n).backward()
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    assert lora and all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora)
    assert any(p.grad.abs().sum() > 0 for p in lora)
    assert all(p.grad is None for name, p in model.named_parameters() if "lora_" not in name)


# --------------------------------------------------------------------------------------------- chunked head losses

@pytest.mark.parametrize("rows, bias, frozen", [(5, True, False), (64, False, False), (1, False, True)])
def test_linear_cross_entropy_equals_cross_entropy_with_gradients(rows, bias, frozen):
    from lora_spec.losses import linear_cross_entropy

    g = torch.Generator().manual_seed(rows)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(101, 16, generator=g, requires_grad=not frozen)
    b = torch.randn(101, generator=g, requires_grad=True) if bias else None
    y = torch.randint(0, 101, (37,), generator=g)
    ref = F.cross_entropy(h @ w.T + (b if bias else 0), y, reduction="sum")
    leaves = [t for t in (h, w, b) if t is not None and t.requires_grad]
    want = torch.autograd.grad(ref * 0.3, leaves)
    got_loss = linear_cross_entropy(h, w, y, b, rows=rows)
    got = torch.autograd.grad(got_loss * 0.3, leaves)
    assert torch.allclose(got_loss, ref, rtol=1e-5)
    for a, e in zip(got, want):
        assert torch.allclose(a, e, atol=1e-5), (a - e).abs().max()


@pytest.mark.parametrize("spec", ["distribution", "mix:0.3", "sample"])
def test_chunked_head_loss_equals_compute_loss(spec):
    from lora_spec.losses import chunked_head_loss

    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(12, 29)
    h = torch.randn(23, 12, generator=g, requires_grad=True)
    y = torch.randint(0, 29, (23,), generator=g)
    ids = torch.randint(0, 29, (23, 4), generator=g)
    lps = torch.log_softmax(torch.randn(23, 4, generator=g), -1) - 0.2
    mask = torch.rand(23, generator=g) > 0.3
    s = LossSpec.parse(spec, temperature=1.5)
    ref, _ = compute_loss(s, head(h)[None], y[None], TopKBatch(ids[None], lps[None], mask[None]), causal=False)
    want = torch.autograd.grad(ref, (h, head.weight))
    got = chunked_head_loss(head, h, y, s, TopKBatch(ids, lps, mask), rows=4)
    assert torch.allclose(got, ref, rtol=1e-5)
    for a, e in zip(torch.autograd.grad(got, (h, head.weight)), want):
        assert torch.allclose(a, e, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["sample", "distribution"])
def test_batch_loss_equals_full_logits_loss_on_the_real_model(smollm2, spec):
    """The training loss (labelled positions only, the head applied in chunks) equals the plain loss over the
    full [batch, length, vocab] logits on SmolLM2-135M in fp32: value and the LoRA gradients."""
    from peft import LoraConfig, get_peft_model

    from lora_spec.losses import batch_loss
    from lora_spec.records import Example
    from lora_spec.trainer import collate, encode_examples

    tok = smollm2.tokenizer
    ex = [Example("zero_shot_cot", "Question: Tom has 3 apples and buys 4.\n", "3 + 4 = 7.\nThe answer is 7."),
          Example("zero_shot_answer", "Question: 2 times 6?\n", "The answer is 12.")]
    enc, _ = encode_examples(ex, tok, "causal", 256)
    b = collate(enc, tok.pad_token_id, "causal")
    if spec == "distribution":  # a teacher top-k at every other label position
        gen = torch.Generator().manual_seed(0)
        B, T = b["labels"].shape
        ids = torch.randint(0, len(tok), (B, T, 5), generator=gen)
        ids[..., 0] = b["labels"].clamp(min=0)
        lps = torch.log_softmax(torch.randn(B, T, 5, generator=gen), -1) - 0.05
        b["topk"] = TopKBatch(ids, lps, (b["labels"] != IGNORE_INDEX) & (torch.arange(T) % 2 == 0))
    torch.manual_seed(0)
    model = get_peft_model(smollm2.model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    try:
        inner = model.get_base_model()
        fast, n = batch_loss(inner, b, kind="causal", loss_spec=spec)
        lora = [p for p in model.parameters() if p.requires_grad]
        g_fast = torch.autograd.grad(fast, lora)
        logits = inner(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ref, n2 = compute_loss(spec, logits, b["labels"], b.get("topk"), causal=True)
        g_ref = torch.autograd.grad(ref, lora)
    finally:
        model.unload()  # the session's shared SmolLM2 stays as it was
    # fp32 tolerance: on this batch the plain fp32 log-softmax over 49,152 pieces is itself 1.5e-5 (relative) off
    # an fp64 reference, and the fused loss (logsumexp minus the target logit) is closer to it (measured)
    assert n == n2 and torch.allclose(fast, ref, rtol=1e-4), (fast, ref)
    for a, e in zip(g_fast, g_ref):  # relative error of each LoRA gradient
        assert float((a - e).norm() / e.norm()) < 1e-3, float((a - e).norm() / e.norm())
