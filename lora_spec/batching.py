"""Training rows as tokens: encoding (prompt masked out of the labels), the seeded batch order of every epoch,
token-budget passes, collation into padded tensors, and the step arithmetic (how many optimizer steps a run has).

Everything here is a pure function of its arguments: the data order of epoch ``e`` depends only on ``(seed, e)``,
which is what makes a resumed run see exactly the batches of an uninterrupted one (``lora_spec.trainer``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, DataError
from .losses import collate_topk
from .records import Example

IGNORE = -100


# --------------------------------------------------------------------------------------------- tokenization

@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # causal: same length as input_ids (IGNORE on the prompt); seq2seq: the decoder targets
    n_target: int
    topk: Any = None  # distribution matching: (positions in labels, ids, logprobs), see align.attach_topk
    truncated: bool = False  # cut to max_length by encode_examples

    @property
    def length(self) -> int:
        return len(self.input_ids) + (len(self.labels) if self.labels is not self.input_ids else 0)


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Prompt token ids, the one rule of training and generation: the tokenizer's special tokens are added (the
    BOS of Llama-style tokenizers, the EOS of T5's), except a second BOS when the text already starts with the BOS
    token (a chat template that writes it, as Llama 3's does)."""
    ids = [list(x) for x in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    bos, bos_text = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "bos_token", None)
    if bos is not None and bos_text:
        for i, t in enumerate(texts):
            if t.startswith(bos_text) and len(ids[i]) > 1 and ids[i][0] == bos and ids[i][1] == bos:
                ids[i] = ids[i][1:]
    return ids


def over_budget(tokenizer, kind: str, max_length: int, prompt: str, target: str) -> bool:
    """Whether :func:`encode_examples` would cut this row (its own rule, applied to the one row)."""
    return encode_examples([Example("", prompt, target)], tokenizer, kind, max_length)[1] > 0


CHARS_PER_TOKEN = 64  # more characters than any one token of a real tokenizer covers


def encode_examples(examples: list[Example], tokenizer, kind: str, max_length: int) -> tuple[list[Encoded], int]:
    """Tokenize prompt and target separately (the prompt with :func:`encode_prompts`, as generation does; the target
    followed by EOS)
    and mask the prompt out of the labels. Over-long rows lose prompt tokens from the left (the question's end
    and the whole target stay); returns ``(encoded, n_truncated)``."""
    if not examples:
        raise DataError("no training examples (is the teach run empty, or were all samples wrong?)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the student's tokenizer has no EOS token; training targets need one")
    # a text far longer than max_length tokens is cut in characters first (the prompt keeps its end, the target its
    # start, as the token cut below does): a 50 MB teacher answer is never tokenized whole. No token spans
    # CHARS_PER_TOKEN characters, so the cut never reaches the tokens that are kept.
    cap = max(1, max_length) * CHARS_PER_TOKEN
    prompts = encode_prompts(tokenizer, [e.prompt if len(e.prompt) <= cap else e.prompt[-cap:] for e in examples])
    target_texts = [e.target if len(e.target) <= cap else e.target[:cap] for e in examples]
    if kind == "seq2seq":
        targets = tokenizer(target_texts, add_special_tokens=True)["input_ids"]
    else:
        targets = tokenizer(target_texts, add_special_tokens=False)["input_ids"]
    out: list[Encoded] = []
    truncated = 0
    for p, t in zip(prompts, targets):
        p, t = list(p), list(t)
        if kind == "seq2seq":
            if not t or t[-1] != eos:
                t = t + [eos]
            cut = len(p) > max_length or len(t) > max_length
            if len(p) > max_length:
                p = p[-max_length:]
            if len(t) > max_length:
                t = t[:max_length - 1] + [eos]
            truncated += cut
            out.append(Encoded(p, t, len(t), truncated=cut))
            continue
        t = t + [eos]
        cut = len(p) + len(t) > max_length
        if cut:
            truncated += 1
            keep_t = min(len(t), max_length - 1)
            t = t[:keep_t]
            p = p[-(max_length - keep_t):] if max_length - keep_t > 0 else []
        ids = p + t
        labels = [IGNORE] * len(p) + t
        out.append(Encoded(ids, labels, len(t), truncated=cut))
    return out, truncated


# --------------------------------------------------------------------------------------------- batching

def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  megabatch: int = 64) -> list[list[int]]:
    """The micro-batches of one epoch, a pure function of its arguments.

    Length grouping: shuffle, cut into mega-batches of ``megabatch`` micro-batches, sort each by length, cut into
    micro-batches, shuffle the batch order. Padding waste stays small and the order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group_by_length:
        mb = batch_size * megabatch
        chunks = [sorted(idx[i:i + mb], key=lambda j: -lengths[j]) for i in range(0, len(idx), mb)]
        idx = [j for c in chunks for j in c]
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def split_by_tokens(rows: list[Encoded], budget: int, kind: str = "causal") -> list[list[Encoded]]:
    """Cut one batch into passes of at most ``budget`` padded tokens (rows x longest row, encoder + decoder tokens
    for seq2seq; a row longer than the budget goes alone).

    Activation memory grows with the tokens of one forward pass, not with the batch: the trainer runs the passes
    of a batch one after another and divides the summed loss by the batch's label-token count, so the update is
    that of the whole batch (to float rounding). ``budget`` 0: the batch in one pass."""
    if budget <= 0 or len(rows) <= 1:
        return [rows]

    def size(r: Encoded) -> int:
        return len(r.input_ids) + (len(r.labels) if kind == "seq2seq" else 0)

    rows = sorted(rows, key=lambda r: -size(r))  # longest first: a pass's padded size is rows x its first row
    out: list[list[Encoded]] = []
    for r in rows:
        if out and (len(out[-1]) + 1) * size(out[-1][0]) <= budget:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def collate(rows: list[Encoded], pad_id: int, kind: str):
    """Right-padded tensors: ``input_ids``, ``attention_mask``, ``labels`` (+ ``n_tokens``, non-padding)."""
    import torch

    n = len(rows)
    L = max(len(r.input_ids) for r in rows)
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    if kind == "seq2seq":
        T = max(len(r.labels) for r in rows)
        labels = torch.full((n, T), IGNORE, dtype=torch.long)
    else:
        labels = torch.full((n, L), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r.input_ids)] = torch.tensor(r.input_ids)
        mask[i, :len(r.input_ids)] = 1
        labels[i, :len(r.labels)] = torch.tensor(r.labels)
    tokens = int(mask.sum()) + (sum(len(r.labels) for r in rows) if kind == "seq2seq" else 0)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "n_tokens": tokens}
    if any(r.topk is not None for r in rows):
        out["topk"] = collate_topk([r.topk for r in rows], labels.shape[1])
    return out


# --------------------------------------------------------------------------------------------- step arithmetic

def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int = 1, world: int = 1) -> int:
    """Optimizer steps in one pass over ``n_examples`` rows (the last incomplete step of an epoch is dropped)."""
    return (n_examples // max(1, batch_size)) // max(1, grad_accum * world)


def total_steps(n_examples: int, batch_size: int, grad_accum: int = 1, world: int = 1, epochs: float = 1.0,
                max_steps: int | None = None) -> int:
    """The optimizer steps a run has: ``max_steps`` when given, else ``ceil(epochs x steps per epoch)``. The one
    place of this arithmetic: the trainer, a fit's held-out schedule and ``fit --dry-run`` all call it."""
    if max_steps:
        return int(max_steps)
    return max(1, int(math.ceil(epochs * max(1, steps_per_epoch(n_examples, batch_size, grad_accum, world)))))

