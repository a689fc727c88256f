"""Teacher forcing: a model's top-k log-probabilities at every token of a text it did not write.

``lorasp score`` asks a scorer (the ``hf`` or ``openai`` teacher) for these; this module holds what both share:

* :class:`ScoreRequest` / :class:`ScoreResult`, what a scorer is given and returns for one sample;
* :func:`text_tokens`, which cuts a scorer's tokenization of ``prompt + text`` (token strings, character offsets,
  top-k per token) down to the tokens of ``text``. Pieces are slices of the text, so they spell it exactly. A
  token that straddles the prompt/text boundary keeps only its part inside the text, with an empty top-k (the
  scorer's distribution there is over whole tokens that start in the prompt). A tokenization that ends before the
  text does (a server that truncated the input to its context) is an error for that sample, never a silent cut;
* :func:`hf_score`, the ``hf`` scorer's batched forward pass.

The top-k of a position is the distribution the scorer predicted *for* that token (OpenAI's convention, used by
the sampled ``top_logprobs`` too), keyed by token strings; several token ids that decode to one string are
summed, as the ``hf`` teacher does when it samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

Key = tuple[str, str, str, int]  # (teacher fingerprint, prompt_id, problem_id, sample_index)


@dataclass
class ScoreRequest:
    """Score ``text`` given ``prompt`` (teacher forcing); ``key`` names the sample in the run's store."""

    key: Key
    prompt: str
    text: str


@dataclass
class ScoreResult:
    """One sample's scores: a piece and a top-k per token of the text, or ``error`` (nothing stored)."""

    key: Key
    tokens: list[str] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    request_id: str | None = None


class SpanError(ValueError):
    """The scorer's tokens do not cover the text (one sample's failure, recorded and retried)."""


def text_tokens(full: str, start: int, offsets: Sequence[int], tops: Sequence[dict[str, float] | None],
                tokens: Sequence[str] | None = None) -> tuple[list[str], list[dict[str, float]]]:
    """The pieces and top-k of ``full[start:]`` from a tokenization of ``full``.

    ``offsets[i]`` is where token ``i`` starts in ``full`` (characters); a token ends where the next one starts,
    the last one at ``offsets[-1] + len(tokens[-1])`` (or the end of ``full`` when ``tokens`` is not given).
    Tokens at or past ``len(full)`` (a server that generated one) are ignored.
    """
    n = len(full)
    if len(offsets) != len(tops) or (tokens is not None and len(tokens) != len(offsets)):
        raise SpanError(f"{len(offsets)} token offsets but {len(tops)} top-k entries")
    keep = [i for i, o in enumerate(offsets) if o < n]
    if not keep:
        raise SpanError("the scorer returned no tokens for the text")
    offs = [int(offsets[i]) for i in keep]
    if any(b < a for a, b in zip(offs, offs[1:])) or offs[0] < 0:
        raise SpanError("the scorer's token offsets are not in order")
    last = keep[-1]
    end_last = n if tokens is None else offs[-1] + len(tokens[last])
    if end_last < n:
        raise SpanError(f"the scorer's tokens end at character {end_last} of {n} (prompt and text): the input was "
                        f"cut, e.g. to the server's context size")
    ends = offs[1:] + [n]
    pieces: list[str] = []
    out_tops: list[dict[str, float]] = []
    for j, i in enumerate(keep):
        a, b = offs[j], ends[j]
        if b <= start or b == a:
            continue  # a prompt token (or an empty one)
        top = tops[i]
        if a < start:  # straddles the boundary: its text part has no distribution of its own
            a, top = start, None
        pieces.append(full[a:b])
        out_tops.append({str(k): float(v) for k, v in (top or {}).items()})
    if "".join(pieces) != full[start:]:
        raise SpanError("the scorer's tokens do not spell the text")
    return pieces, out_tops


# ------------------------------------------------------------------------------------------------- hf


def merge_top(logp_row: Any, k: int, decode) -> dict[str, float]:
    """The k most likely distinct strings of one position (ids that decode alike summed)."""
    import numpy as np

    vals, idxs = logp_row.topk(min(k + 8, logp_row.shape[-1]))
    d: dict[str, float] = {}
    for v, i in zip(vals.tolist(), idxs.tolist()):
        key = decode(int(i))
        d[key] = float(np.logaddexp(d[key], v)) if key in d else float(v)
    return dict(sorted(d.items(), key=lambda kv: -kv[1])[:k])


def hf_score(model: Any, tok: Any, kind: str, batch: list[ScoreRequest], k: int) -> list[ScoreResult]:
    """Teacher-forced top-k of a local transformers model for a batch of requests (one forward pass).

    Causal models read ``prompt + text`` tokenized as one string (as a server does), left-padded with explicit
    position ids, and the head runs only at the text's positions. Seq2seq models read the prompt in the encoder
    and the text as the decoder's labels.
    """
    import torch

    cache: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in cache:
            cache[i] = tok.decode([i])
        return cache[i]

    if kind == "seq2seq":
        return _hf_score_seq2seq(model, tok, batch, k, decode)
    rows = []
    for r in batch:
        full = r.prompt + r.text
        enc = tok(full, add_special_tokens=True, return_offsets_mapping=True)
        ids, spans = list(enc["input_ids"]), list(enc["offset_mapping"])
        while len(ids) > 1 and tuple(spans[-1]) == (0, 0):  # a special token the tokenizer appends (an EOS)
            ids.pop()
            spans.pop()
        # special tokens in front (a BOS) have (0, 0) offsets: they belong to the prompt
        offs = [a for a, _b in spans]
        first_text = next((j for j, (_a, b) in enumerate(spans) if b > len(r.prompt)), len(ids))
        rows.append((ids, offs, first_text))
    width = max(len(ids) for ids, _, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, (ids, _, _) in enumerate(rows):
        input_ids[b, width - len(ids):] = torch.tensor(ids)
        mask[b, width - len(ids):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(len(ids) - max(ft, 1) for ids, _, ft in rows) + 1  # positions that predict a text token
    dev = next(model.parameters()).device
    with torch.no_grad():
        out = model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                    logits_to_keep=keep)
        logp = out.logits.float().log_softmax(-1)  # [batch, keep, vocab]: position t predicts token t+1
    results = []
    for b, (r, (ids, offs, ft)) in enumerate(zip(batch, rows)):
        tops: list[dict[str, float] | None] = []
        for j in range(len(ids)):
            if j == 0 or j < ft:
                tops.append(None)  # the first token has no prediction; prompt tokens are not asked for
                continue
            p = logp[b, keep - 1 - (len(ids) - j)]  # the position before token j (right-aligned)
            d = merge_top(p, k, decode)
            d.setdefault(decode(ids[j]), float(p[ids[j]]))
            tops.append(d)
        full = r.prompt + r.text
        try:
            pieces, top = text_tokens(full, len(r.prompt), offs, tops)
        except SpanError as exc:
            results.append(ScoreResult(r.key, error=str(exc)))
            continue
        results.append(ScoreResult(r.key, pieces, top, usage={"prompt_tokens": len(ids), "completion_tokens": 0,
                                                               "total_tokens": len(ids)}))
    return results


def _hf_score_seq2seq(model: Any, tok: Any, batch: list[ScoreRequest], k: int, decode) -> list[ScoreResult]:
    import torch

    enc = tok([r.prompt for r in batch], return_tensors="pt", padding=True)
    tgt = [tok(r.text, add_special_tokens=False)["input_ids"] for r in batch]
    width = max(1, max(len(t) for t in tgt))
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for b, t in enumerate(tgt):
        labels[b, :len(t)] = torch.tensor(t, dtype=torch.long)
    dev = next(model.parameters()).device
    with torch.no_grad():
        out = model(**{k_: v.to(dev) for k_, v in enc.items()}, labels=labels.to(dev))
        logp = out.logits.float().log_softmax(-1)
    results = []
    for b, (r, t) in enumerate(zip(batch, tgt)):
        pieces, top = [], []
        for j, i in enumerate(t):
            pieces.append(decode(i))
            d = merge_top(logp[b, j], k, decode)
            d.setdefault(pieces[-1], float(logp[b, j, i]))
            top.append(d)
        results.append(ScoreResult(r.key, pieces, top, usage={"prompt_tokens": int(enc["attention_mask"][b].sum()),
                                                              "completion_tokens": 0,
                                                              "total_tokens": int(enc["attention_mask"][b].sum())}))
    return results
