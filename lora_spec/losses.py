"""Training losses: sample matching (token NLL), distribution matching (KL on teacher top-k), and their mixture.

Every loss function returns ``(loss_sum, count)``: the *sum* of per-position losses and the number of positions
it covers, never a mean. That is what makes gradient accumulation exact:

    # one optimizer step over micro-batches mb_1..mb_G (and over ranks, if distributed)
    n_total = sum(count_of(mb) for mb in window)             # count label tokens of the whole window first
    for mb in window:
        loss_sum, _ = compute_loss(spec, logits(mb), mb.labels, mb.topk, causal=...)
        (loss_sum / n_total).backward()                        # NOT loss_sum / n_mb, NOT mean of means
    optimizer.step()

so that the accumulated gradient equals the gradient of the per-token mean over the *whole* accumulated batch,
whatever the lengths of the micro-batches (``count_tokens(labels, causal=...)`` counts a micro-batch's
label tokens cheaply, before the forward pass). Dividing each micro-batch by its own token count and then by
the number of micro-batches weights short sequences too much (the bug that transformers fixed in 4.46).

Shapes (B = batch, T = sequence, V = vocabulary, K = top-k):

- ``logits``: ``[B, T, V]`` (any float dtype; computed in fp32), ``labels``: ``[B, T]`` with ``-100`` ignored.
- ``causal=True`` (decoder-only students): ``labels`` are aligned with ``input_ids`` (the Hugging Face
  convention) and the functions shift internally, so that ``logits[:, t]`` scores ``labels[:, t + 1]``.
  ``causal=False`` (seq2seq students): ``logits[:, t]`` scores ``labels[:, t]`` (decoder logits).
- Teacher top-k (``TopKBatch``) is laid out like ``labels``: row ``[b, t]`` is the teacher distribution for the
  token ``labels[b, t]``; ``ids[b, t, :]`` are student token ids, ``logprobs[b, t, :]`` the teacher logprobs
  (``-inf`` for empty slots), ``mask[b, t]`` says whether position ``t`` got an aligned teacher distribution.

Losses (``LossSpec``):

- ``sample``: NLL of the target tokens (the teacher's sampled text).
- ``distribution``: at aligned positions, KL(teacher || student) over the K teacher candidates plus one bucket
  for "everything else" (the teacher's missing mass ``1 - sum(p)`` against the student's mass outside the
  candidates), so the loss is a true KL and is ``>= 0``; with ``renormalize=True`` the teacher's top-k are
  renormalised to sum to 1 (the missing mass is dropped). At positions without an aligned distribution the
  target is a one-hot on the student token, i.e. the NLL (the paper's rule).
- ``mix:ALPHA``: ``ALPHA * distribution + (1 - ALPHA) * sample`` per token (``mix:0`` == ``sample``,
  ``mix:1`` == ``distribution``).

Temperature ``tau`` (``distribution`` only): the student's distribution is ``softmax(z / tau)``; the teacher's
kept candidates are re-tempered as ``softmax_k(logp / tau)`` scaled back to the teacher's kept mass (so that
``tau = 1`` is exactly the recorded distribution), and the KL is multiplied by ``tau ** 2`` (Hinton et al.) so
that gradient magnitudes do not depend on ``tau``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX", "LossSpec", "TopKBatch", "token_nll", "distribution_kl", "compute_loss",
           "count_tokens", "shift_causal", "batch_loss", "linear_cross_entropy", "chunked_head_loss", "chunk_rows"]


# --------------------------------------------------------------------------------------------- spec

_MIX = re.compile(r"^mix:([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass(frozen=True)
class LossSpec:
    """Which loss to train with: ``sample``, ``distribution`` or ``mix:ALPHA`` (ALPHA = weight of distribution)."""

    kind: str = "sample"  # "sample" | "distribution" | "mix"
    alpha: float = 0.0  # weight of the distribution loss (1.0 for "distribution", 0.0 for "sample")
    temperature: float = 1.0
    renormalize: bool = False

    @classmethod
    def parse(cls, text: "str | LossSpec", *, temperature: float = 1.0, renormalize: bool = False,
              where: str = "--loss") -> "LossSpec":
        if isinstance(text, LossSpec):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"{where}: expected 'sample', 'distribution' or 'mix:ALPHA', got {text!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"{where}: temperature must be a positive number, got {temperature!r}")
        t = text.strip().lower()
        if t == "sample":
            return cls("sample", 0.0, float(temperature), bool(renormalize))
        if t == "distribution":
            return cls("distribution", 1.0, float(temperature), bool(renormalize))
        m = _MIX.match(t)
        if m:
            a = float(m.group(1))
            if not 0.0 <= a <= 1.0:
                raise ConfigError(f"{where}: mix weight must be in [0, 1], got {text!r}")
            return cls("mix", a, float(temperature), bool(renormalize))
        raise ConfigError(f"{where}: expected 'sample', 'distribution' or 'mix:ALPHA' with ALPHA in [0, 1], "
                          f"got {text!r}")

    @property
    def needs_teacher_topk(self) -> bool:
        return self.alpha > 0.0

    def __str__(self) -> str:
        return f"mix:{self.alpha:g}" if self.kind == "mix" else self.kind


# --------------------------------------------------------------------------------------------- batches

@dataclass
class TopKBatch:
    """Teacher top-k laid out like ``labels`` (``[B, T]``): ids/logprobs ``[B, T, K]``, mask ``[B, T]``."""

    ids: Any  # torch.LongTensor [B, T, K]
    logprobs: Any  # torch.FloatTensor [B, T, K], -inf in empty slots
    mask: Any  # torch.BoolTensor [B, T]

    def to(self, device) -> "TopKBatch":
        return TopKBatch(self.ids.to(device), self.logprobs.to(device), self.mask.to(device))

    @classmethod
    def empty(cls, batch: int, length: int, k: int = 1) -> "TopKBatch":
        import torch

        return cls(torch.zeros(batch, length, k, dtype=torch.long),
                   torch.full((batch, length, k), float("-inf")),
                   torch.zeros(batch, length, dtype=torch.bool))


def shift_causal(logits, *label_like):
    """Drop the last logit and the first label position: ``logits[:, t]`` then scores ``label[:, t]``."""
    out = [logits[:, :-1]]
    out += [x[:, 1:] if x is not None else None for x in label_like]
    return tuple(out)


def count_tokens(labels, *, causal: bool) -> int:
    """Number of positions that a loss over ``labels`` covers (for normalising an accumulation window)."""
    lab = labels[:, 1:] if causal else labels
    return int((lab != IGNORE_INDEX).sum().item())


# --------------------------------------------------------------------------------------------- losses

def _nll_per_token(logits, labels):
    import torch.nn.functional as F

    v = logits.shape[-1]
    flat = F.cross_entropy(logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="none")
    return flat.view(labels.shape), labels != IGNORE_INDEX


def token_nll(logits, labels, *, causal: bool = False):
    """Summed NLL of the non-ignored labels and their count: ``(loss_sum, n_tokens)``."""
    if causal:
        logits, labels = shift_causal(logits, labels)
    per, valid = _nll_per_token(logits, labels)
    return (per * valid).sum(), int(valid.sum().item())


def _log1mexp(x):
    """log(1 - exp(x)) for x <= 0, numerically stable."""
    import torch

    x = torch.clamp(x, max=-1e-6)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


_NEG = -1.0e4  # a finite "minus infinity": keeps every gradient finite (an -inf inside logsumexp gives NaN)


def _kl_per_position(logits, ids, logprobs, *, temperature: float, renormalize: bool):
    """KL(teacher || student) per position over the K candidates + an 'other' bucket; ``[B, T]``."""
    import torch

    tau = float(temperature)
    z = logits.float()
    s_logp = torch.log_softmax(z / tau if tau != 1.0 else z, dim=-1)
    s_k = torch.gather(s_logp, -1, ids.clamp(min=0))  # [B, T, K] student logprobs of the teacher's candidates
    lp = logprobs.float()
    valid = torch.isfinite(lp) & (lp > _NEG)
    neg = torch.full_like(lp, _NEG)
    t_lp = torch.where(valid, lp, neg)
    kept = torch.logsumexp(t_lp, dim=-1, keepdim=True).clamp(max=0.0)  # log of the teacher's kept mass
    if tau != 1.0:
        # re-temper within the kept set and keep the kept mass (tau == 1 leaves the distribution unchanged)
        t_lp = torch.log_softmax(t_lp / tau, dim=-1) + (0.0 if renormalize else kept)
    elif renormalize:
        t_lp = t_lp - kept
    t_lp = torch.where(valid, t_lp.clamp(max=0.0), neg)
    p = torch.exp(t_lp) * valid
    s_in = torch.where(valid, s_k, torch.zeros_like(s_k))
    kl = (p * (t_lp - s_in)).sum(-1)
    if not renormalize:
        # the "other" bucket: teacher mass 1 - sum(p) against the student's mass outside the candidates
        p_rest = (1.0 - p.sum(-1)).clamp(min=0.0)  # teacher side carries no gradient
        s_rest = _log1mexp(torch.logsumexp(torch.where(valid, s_k, neg), dim=-1))
        rest = p_rest * (torch.log(p_rest.clamp(min=1e-30)) - s_rest)
        kl = kl + torch.where(p_rest > 1e-6, rest, torch.zeros_like(rest))
    if tau != 1.0:
        kl = kl * (tau * tau)
    return kl


def distribution_kl(logits, target_ids, target_logprobs, target_mask, *, temperature: float = 1.0,
                    renormalize: bool = False, causal: bool = False, labels=None):
    """Summed KL(teacher || student) over the masked positions and their count: ``(loss_sum, n_positions)``.

    ``labels`` (optional) further restricts the positions to non-ignored labels.
    """
    if causal:
        logits, target_ids, target_logprobs, target_mask, labels = shift_causal(
            logits, target_ids, target_logprobs, target_mask, labels)
    mask = target_mask.bool()
    if labels is not None:
        mask = mask & (labels != IGNORE_INDEX)
    kl = _kl_per_position(logits, target_ids, target_logprobs, temperature=temperature, renormalize=renormalize)
    return (kl * mask).sum(), int(mask.sum().item())


def compute_loss(spec: LossSpec | str, logits, labels, topk: TopKBatch | None = None, *, causal: bool):
    """The training loss of one micro-batch: ``(loss_sum, n_tokens)`` summed over the label tokens.

    - ``sample``: summed NLL.
    - ``distribution``: KL at positions with an aligned teacher distribution, NLL elsewhere (one-hot target).
    - ``mix:A``: ``A * distribution + (1 - A) * sample`` per token.

    ``n_tokens`` is the number of label tokens (the same for every spec), so that summed losses of different
    specs and micro-batches are normalised the same way. Divide by the window's total (see the module doc).
    """
    spec = LossSpec.parse(spec)
    if causal:
        logits, labels, ids, lps, mask = shift_causal(
            logits, labels, *((topk.ids, topk.logprobs, topk.mask) if topk is not None else (None, None, None)))
    else:
        ids, lps, mask = (topk.ids, topk.logprobs, topk.mask) if topk is not None else (None, None, None)
    nll, valid = _nll_per_token(logits, labels)
    n = int(valid.sum().item())
    if spec.alpha == 0.0 or mask is None:
        # no teacher distributions in this batch: the one-hot rule makes the distribution loss the NLL
        return (nll * valid).sum(), n
    aligned = mask.bool() & valid
    kl = _kl_per_position(logits, ids, lps, temperature=spec.temperature, renormalize=spec.renormalize)
    dist = (kl * aligned).sum() + (nll * (valid & ~aligned)).sum()
    if spec.alpha == 1.0:
        return dist, n
    return spec.alpha * dist + (1.0 - spec.alpha) * (nll * valid).sum(), n


def collate_topk(rows: list, length: int, *, pad_left: list[int] | None = None, k: int | None = None):
    """Build a ``TopKBatch`` ``[B, length, K]`` from per-example aligned targets.

    ``rows[b]`` is ``None`` (no teacher distribution) or ``(positions, ids, logprobs)``: ``positions`` are
    indices into row ``b`` of the batch's ``labels`` (already offset by the prompt and any left padding, or
    pass ``pad_left[b]`` to add it here), ``ids``/``logprobs`` arrays ``[n, k_b]`` (numpy or torch;
    fp16 logprobs are fine). Empty slots have logprob ``-inf``.
    """
    import numpy as np
    import torch

    kk = k or max([int(np.asarray(r[1]).shape[1]) for r in rows if r is not None and len(r[0])] or [1])
    b = len(rows)
    ids = torch.zeros(b, length, kk, dtype=torch.long)
    lps = torch.full((b, length, kk), float("-inf"), dtype=torch.float32)
    mask = torch.zeros(b, length, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r is None:
            continue
        pos = np.asarray(r[0], dtype=np.int64) + (pad_left[i] if pad_left else 0)
        if pos.size == 0:
            continue
        rid = np.asarray(r[1], dtype=np.int64)
        rlp = np.asarray(r[2], dtype=np.float32)
        keep = (pos >= 0) & (pos < length)
        pos, rid, rlp = pos[keep], rid[keep, :kk], rlp[keep, :kk]
        pt = torch.from_numpy(pos)
        ids[i, pt, : rid.shape[1]] = torch.from_numpy(rid)
        lps[i, pt, : rlp.shape[1]] = torch.from_numpy(rlp)
        mask[i, pt] = True
    return TopKBatch(ids, lps, mask)


# --------------------------------------------------------------------------------------------- a model's loss

def _fast_head_ok(model) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return False
    try:
        return model.get_decoder() is not None and model.get_output_embeddings() is not None
    except Exception:
        return False


LOGITS_BUDGET = 1 << 25  # logits elements per chunk (32M: 128 MB in fp32), so rows per chunk = budget // vocab


def chunk_rows(vocab: int, budget: int = LOGITS_BUDGET) -> int:
    """Rows of ``[rows, vocab]`` logits that one chunk of the loss builds (at least 1)."""
    return max(1, int(budget) // max(1, int(vocab)))


def _compute_dtype(t):
    """The dtype a matrix product on ``t`` runs in: autocast's where autocast is on, else ``t``'s own."""
    import torch

    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def _linear_ce_class():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of ``h @ weight.T (+ bias)`` against ``targets``, built ``rows`` rows at a time.

        The gradient is computed in the forward pass, chunk by chunk (softmax minus one-hot, then its products with
        the weight and the hidden states), and only ``[N, H]`` / ``[V, H]`` gradients are kept, so no ``[N, V]``
        tensor lives beyond one chunk and the softmax is taken once per position (the fused linear-cross-entropy
        of Liger and cut-cross-entropy, in plain torch). The matrix products run in autocast's dtype when autocast
        is on (else in the inputs' dtype); the softmax and the loss are fp32.
        """

        @staticmethod
        def forward(ctx, h, weight, bias, targets, rows: int):
            cdt = _compute_dtype(h)
            need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            need_b = bias is not None and ctx.needs_input_grad[2]
            with torch.autocast(h.device.type, enabled=False):
                w = weight.to(cdt)
                b = bias.to(cdt) if bias is not None else None
                loss = torch.zeros((), dtype=torch.float32, device=h.device)
                gh = torch.empty_like(h) if need_h else None
                gw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
                gb = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if need_b else None
                for s in range(0, h.shape[0], rows):
                    hc, y = h[s:s + rows].to(cdt), targets[s:s + rows]
                    z = hc @ w.T
                    if b is not None:
                        z = z + b
                    z = z.float()
                    lse = torch.logsumexp(z, dim=-1)
                    loss += (lse - z.gather(1, y[:, None]).squeeze(1)).sum()
                    if not (need_h or need_w or need_b):
                        continue
                    g = z.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    g[torch.arange(g.shape[0], device=g.device), y] -= 1.0
                    if need_b:
                        gb += g.sum(0)
                    g = g.to(cdt)
                    if need_h:
                        gh[s:s + rows] = (g @ w).to(h.dtype)
                    if need_w:
                        gw += (g.T @ hc).float()
            ctx.save_for_backward(*(t for t in (gh, gw, gb) if t is not None))
            ctx.has = (gh is not None, gw is not None, gb is not None)
            ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
            return loss

        @staticmethod
        def backward(ctx, grad_out):
            saved = iter(ctx.saved_tensors)
            grads = [next(saved) * grad_out if has else None for has in ctx.has]
            gh, gw, gb = (g.to(dt) if g is not None else None for g, dt in zip(grads, ctx.dtypes))
            return gh, gw, gb, None, None

    return LinearCrossEntropy


_LINEAR_CE = None


def linear_cross_entropy(h, weight, targets, bias=None, *, rows: int | None = None):
    """Summed NLL of ``targets`` under ``h @ weight.T + bias`` without a ``[N, vocab]`` logits tensor (see
    ``LinearCrossEntropy``). ``h``: ``[N, H]``, ``weight``: ``[V, H]``, ``targets``: ``[N]`` (all valid)."""
    global _LINEAR_CE
    if _LINEAR_CE is None:
        _LINEAR_CE = _linear_ce_class()
    return _LINEAR_CE.apply(h, weight, bias, targets, rows or chunk_rows(weight.shape[0]))


def chunked_head_loss(head, h, targets, spec: LossSpec, topk: TopKBatch | None, *, rows: int):
    """:func:`compute_loss` over ``head(h)`` chunk by chunk; each chunk's logits are recomputed in the backward
    pass (activation checkpointing), so no ``[N, vocab]`` tensor outlives one chunk. Any head module (a LoRA- or
    bitsandbytes-wrapped one too) and any loss spec. Returns the summed loss."""
    import torch
    from torch.utils.checkpoint import checkpoint

    def one(hc, y, *tk):
        sub = TopKBatch(tk[0][None], tk[1][None], tk[2][None]) if tk else None
        return compute_loss(spec, head(hc).float()[None], y[None], sub, causal=False)[0]

    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for s in range(0, h.shape[0], rows):
        args = [h[s:s + rows], targets[s:s + rows]]
        if topk is not None:
            args += [topk.ids[s:s + rows], topk.logprobs[s:s + rows], topk.mask[s:s + rows]]
        total = total + (checkpoint(one, *args, use_reentrant=False) if torch.is_grad_enabled() else one(*args))
    return total


def batch_loss(model, batch: dict, *, kind: str, loss_spec: Any = "sample"):
    """The loss of one micro-batch as ``(loss_sum, n_label_tokens)``: THE place where the training loss is made.

    ``model`` is the unwrapped transformers model (peft's base model for adapters). A decoder-only student runs
    its decoder, keeps the hidden states at the label positions only, and applies the output head to them in
    chunks (:func:`chunk_rows`): sample matching through the fused :func:`linear_cross_entropy` (a plain linear
    head), everything else through :func:`chunked_head_loss`. So no ``[batch, length, vocab]`` tensor exists, and
    no ``[labels, vocab]`` one beyond a chunk. Seq2seq students use full logits.
    """
    import torch

    spec = LossSpec.parse(loss_spec)
    labels = batch["labels"]
    if kind == "seq2seq":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False)
        return compute_loss(spec, out.logits, labels, batch.get("topk"), causal=False)
    if _fast_head_ok(model):
        decoder = model.get_decoder()
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).last_hidden_state
        tgt = labels[:, 1:]
        sel = tgt != IGNORE_INDEX
        h = hidden[:, :-1][sel]
        y = tgt[sel]
        head = model.get_output_embeddings()
        rows = chunk_rows(getattr(head, "out_features", None) or model.config.vocab_size)
        if spec.alpha == 0.0 and type(head) is torch.nn.Linear:
            return linear_cross_entropy(h, head.weight, y, head.bias, rows=rows), int(y.numel())
        # distribution matching (or a wrapped head) on the selected target positions, chunk by chunk
        tk = batch.get("topk")
        sub = None if tk is None else TopKBatch(tk.ids[:, 1:][sel], tk.logprobs[:, 1:][sel], tk.mask[:, 1:][sel])
        return chunked_head_loss(head, h, y, spec, sub, rows=rows), int(y.numel())
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return compute_loss(spec, out.logits, labels, batch.get("topk"), causal=True)
