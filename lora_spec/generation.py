"""The one generator of lorasp: ``lorasp eval``, periodic eval in training, a fit's held-out selection,
``lorasp generate`` / ``AdapterSet.generate`` and ``lorasp merge``'s parity check all decode through
:func:`generate`.

``generate()`` sorts prompts by token length and decodes them with the KV cache, greedy by default, stopping
each row at EOS or at the first stop sequence. Decoder-only models get continuous batching (left padding; a
finished row leaves the batch at once and waiting prompts are prefilled and joined into it, so no compute goes to
finished rows) with prefix sharing (the prompt prefix every row shares is run once); encoder-decoders run
length-sorted batches through ``model.generate`` with a per-row stop criterion. Outputs come back in the input
order. ``adapter_names`` (one per prompt) is peft's mixed-adapter batch argument: each row runs with its own
adapter (``"__base__"``: none) in the same batch.

:func:`chat_wrap` is the chat/plain wrapping of a ready prompt text (``lorasp generate --mode raw``); prompts in
one of the four prompt modes are built by :func:`lora_spec.prompts.build_prompt`, the function training uses.
"""

from __future__ import annotations

import copy
import inspect
import time
from typing import Any, Sequence

from .batching import encode_prompts
from .calculator import Calculator, logits_processor
from .errors import ConfigError, ModelError
from .progress import Progress
from .student import learned_positions


def _stop_criteria(tokenizer: Any, stops: Sequence[str], prompt_len: int, window: int):
    import torch
    from transformers import StoppingCriteria

    class _StopOnStrings(StoppingCriteria):
        """Per-row: True once the row's generated tail contains a stop string."""

        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            tail = input_ids[:, max(prompt_len, input_ids.shape[1] - window):]
            texts = tokenizer.batch_decode(tail, skip_special_tokens=False)
            for i, t in enumerate(texts):
                if any(s in t for s in stops):
                    done[i] = True
            return done

    return _StopOnStrings()


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def _count_new_tokens(row: Sequence[int], stop_ids: set[int]) -> int:
    """Generated tokens up to and including the first EOS/pad (what the model really produced)."""
    n = 0
    for t in row:
        n += 1
        if t in stop_ids:
            break
    return n


def _progress(enabled: bool, description: str, total: int):
    """Generation progress (lora_spec.progress: a bar on a terminal, else a line every LORASP_PROGRESS_EVERY s)."""
    if not enabled:
        return None

    return Progress(description, total, columns=("tok/s",))


def _forward_kwargs(model: Any) -> tuple[dict, str]:
    """``logits_to_keep=1`` when the model's forward takes it (only the last position's logits are needed), and the
    name of its KV-cache argument (``cache`` in transformers >= 5.2x, ``past_key_values`` before)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return {}, "past_key_values"
    return ({"logits_to_keep": 1} if "logits_to_keep" in params else {}), (
        "cache" if "cache" in params else "past_key_values")


def _out_cache(out: Any) -> Any:
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def _mergeable(cache: Any) -> bool:
    """True when every layer of the KV cache is a plain growing layer (rows of different caches can be joined)."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return False
    from transformers.cache_utils import DynamicLayer

    # exact types: subclasses of DynamicLayer (sliding-window layers) drop old positions and cannot be joined
    plain = (DynamicLayer, _buffered_layer_class())
    return all(type(l) in plain and getattr(l, "is_initialized", False) for l in layers)


_BUFFERED: dict = {}


def _buffered_layer_class() -> type:
    """transformers' ``DynamicLayer`` with head room: its keys and values are views of larger buffers, so a decode
    step writes its one new position in place. ``DynamicLayer.update`` concatenates, copying the layer's whole cache
    at every step; with 32 rows of an 8-shot prompt (~1,100 positions) that is ~1.6 GB of copying per SmolLM2 step.
    Built on first use (transformers is imported lazily)."""
    if "cls" not in _BUFFERED:
        import torch
        from transformers.cache_utils import DynamicLayer

        class _BufferedLayer(DynamicLayer):
            def set_kv(self, keys: Any, values: Any, room: int) -> None:
                """Hold ``keys``/``values`` ([batch, heads, length, dim]) with ``room`` free positions after them."""
                n = keys.shape[-2]
                kb = keys.new_empty((*keys.shape[:2], n + room, keys.shape[-1]))
                vb = values.new_empty((*values.shape[:2], n + room, values.shape[-1]))
                kb[:, :, :n] = keys
                vb[:, :, :n] = values
                self._kb, self._vb, self._n = kb, vb, n
                self.keys, self.values = kb[:, :, :n], vb[:, :, :n]

            def update(self, key_states, value_states, *args, **kwargs):
                k = key_states.shape[-2]
                if self._n + k > self._kb.shape[-2]:  # out of room: grow by a quarter at least (amortized)
                    self.set_kv(self.keys, self.values, max(k, 64, self._n // 4))
                self._kb[:, :, self._n:self._n + k] = key_states
                self._vb[:, :, self._n:self._n + k] = value_states
                self._n += k
                self.keys, self.values = self._kb[:, :, :self._n], self._vb[:, :, :self._n]
                return self.keys, self.values

            def batch_select_indices(self, indices: torch.Tensor) -> None:
                self._kb, self._vb = self._kb[indices, ...], self._vb[indices, ...]
                self.keys, self.values = self._kb[:, :, :self._n], self._vb[:, :, :self._n]

            def drop_left(self, n: int) -> None:
                """Forget the first ``n`` positions (padding in every row): a view, no copy."""
                self._kb, self._vb, self._n = self._kb[:, :, n:], self._vb[:, :, n:], self._n - n
                self.keys, self.values = self._kb[:, :, :self._n], self._vb[:, :, :self._n]

        _BUFFERED["cls"] = _BufferedLayer
    return _BUFFERED["cls"]


def _buffer_cache(cache: Any, room: int) -> None:
    """Turn every plain layer of ``cache`` into a buffered one with ``room`` free positions (see above)."""
    cls = _buffered_layer_class()
    for layer in cache.layers:
        if type(layer) is not cls:  # a plain DynamicLayer (callers check _mergeable first)
            layer.__class__ = cls
        layer.set_kv(layer.keys, layer.values, room)


def _set_layer(layer: Any, keys: Any, values: Any, room: int) -> None:
    if type(layer) is _buffered_layer_class():
        layer.set_kv(keys, values, room)
    else:
        layer.keys, layer.values = keys, values


def _pad_left(t: Any, n: int, dim: int) -> Any:
    import torch

    if n <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class _Rows:
    """The decode state of the rows in flight: KV cache, attention mask, next positions, last logits. ``room``:
    free positions kept after the cache of a buffered layer (the token budget of a row)."""

    def __init__(self, cache, attn, pos, logits, ids, room: int = 0):
        self.cache, self.attn, self.pos, self.logits, self.ids = cache, attn, pos, logits, ids
        self.room = room

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: Any) -> None:
        self.cache.batch_select_indices(keep)
        self.attn, self.pos, self.logits = self.attn[keep], self.pos[keep], self.logits[keep]
        self.ids = [self.ids[k] for k in keep.tolist()]
        self.trim()

    def trim(self) -> None:
        """Drop left columns that are padding in every remaining row (less attention work per step)."""
        if not _mergeable(self.cache):
            return
        n = int(self.attn.long().cumsum(1).eq(0).all(0).sum())
        if n > 0:
            self.attn = self.attn[:, n:]
            buffered = _buffered_layer_class()
            for layer in self.cache.layers:
                if type(layer) is buffered:
                    layer.drop_left(n)
                else:
                    layer.keys, layer.values = layer.keys[:, :, n:], layer.values[:, :, n:]

    def join(self, other: "_Rows") -> None:
        """Append ``other``'s rows, left-padding the narrower cache (padding is masked, so results are unchanged)."""
        import torch

        a, b = self.attn.shape[1], other.attn.shape[1]
        width = max(a, b)
        for l1, l2 in zip(self.cache.layers, other.cache.layers):
            _set_layer(l1, torch.cat([_pad_left(l1.keys, width - a, 2), _pad_left(l2.keys, width - b, 2)], 0),
                       torch.cat([_pad_left(l1.values, width - a, 2), _pad_left(l2.values, width - b, 2)], 0),
                       max(self.room, other.room))
        self.attn = torch.cat([_pad_left(self.attn, width - a, 1), _pad_left(other.attn, width - b, 1)], 0)
        self.pos = torch.cat([self.pos, other.pos])
        self.logits = torch.cat([self.logits, other.logits])
        self.ids = self.ids + other.ids


def _pick(logits: Any, do_sample: bool, temperature: float, top_p: float) -> Any:
    import torch

    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_p < 1.0:
        srt, idx = logits.sort(-1, descending=True)
        probs = srt.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        srt = srt.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, srt)
    return torch.multinomial(logits.softmax(-1), 1).squeeze(-1)


BUFFER_KV = True  # decode into over-allocated KV buffers (False: transformers' concatenating cache; benchmarks)
MIN_SHARED_PREFIX = 8  # tokens: a shorter common prompt prefix is not worth a separate forward pass


def _common_prefix(token_ids: list[list[int]]) -> int:
    """Length of the longest token prefix that every prompt shares, leaving each at least one token of its own."""
    if not token_ids:
        return 0
    first = token_ids[0]
    n = min(len(x) for x in token_ids) - 1
    for ids in token_ids[1:]:
        k = 0
        while k < n and ids[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return max(n, 0)


def _decode_causal(model: Any, tokenizer: Any, token_ids: list[list[int]], order: list[int], *, batch_size: int,
                   max_new_tokens: int, eos: set[int], stops: Sequence[str], window: int, do_sample: bool,
                   temperature: float, top_p: float, on_done: Any, pad_id: int, share_prefix: bool = True,
                   stats: dict | None = None, adapter_names: Sequence[str] | None = None,
                   budgets: Sequence[int] | None = None, calculator: Any = None) -> None:
    """Decode ``token_ids`` (prompts, in ``order``) with :class:`_CausalDecoder`; ``on_done(i, ids)`` receives each
    prompt's generated ids as it finishes; ``stats`` gets the decoder's counters (see there)."""
    dec = _CausalDecoder(model, tokenizer, token_ids, batch_size=batch_size, max_new_tokens=max_new_tokens, eos=eos,
                         stops=stops, window=window, do_sample=do_sample, temperature=temperature, top_p=top_p,
                         on_done=on_done, pad_id=pad_id, adapter_names=adapter_names, budgets=budgets,
                         calculator=calculator)
    dec.run(order, share_prefix=share_prefix)
    if stats is not None:
        stats.update(joins=dec.joins, steps=dec.steps, shared_prefix=dec.shared, prefill_tokens=dec.prefill_tokens)


class _CausalDecoder:
    """Continuous batching for decoder-only models: greedy (or sampled) decoding of every prompt with at most
    ``batch_size`` rows in flight. The stages, one method each, in the order :meth:`run` calls them:

    1. :meth:`prefill_prefix`: the token prefix that all prompts share (a system message, few-shot exemplars) is run
       once; each later prefill copies its KV cache and runs only the prompts' own suffixes (left-padded between
       the prefix and the suffix; padding is masked and positions skip it, so the result is unchanged).
    2. :meth:`admit`: waiting prompts are prefilled (:meth:`prefill`) and joined into the running batch when a
       quarter of it is free (or when they are the last ones). After a prefill, each layer's keys and values move
       into buffers with room for the token budget (:class:`_BufferedLayer <_buffered_layer_class>`), so a decode
       step writes one position in place instead of concatenating (copying) the whole cache.
    3. :meth:`step`: one token for every row in flight; a finished row (EOS, stop string or token budget) is handed
       to ``on_done(i, ids)`` (its generated ids, up to and including EOS) and leaves the batch at once, so no
       compute is spent on finished rows.

    Counters after :meth:`run`: ``joins`` (prefills merged into a running batch), ``steps`` (decode forward
    passes), ``shared`` (prefix tokens) and ``prefill_tokens`` (prompt tokens run through the model).
    ``adapter_names[i]``: prompt ``i``'s peft adapter (a mixed-adapter batch; the prefix is shared only when every
    row has the same adapter)."""

    def __init__(self, model: Any, tokenizer: Any, token_ids: list[list[int]], *, batch_size: int,
                 max_new_tokens: int, eos: set[int], stops: Sequence[str], window: int, do_sample: bool,
                 temperature: float, top_p: float, on_done: Any, pad_id: int,
                 adapter_names: Sequence[str] | None = None, budgets: Sequence[int] | None = None,
                 calculator: Any = None):
        self.model, self.tokenizer, self.token_ids = model, tokenizer, token_ids
        self.batch_size, self.max_new_tokens, self.eos, self.stops, self.window = (batch_size, max_new_tokens, eos,
                                                                                   stops, window)
        self.sampling = (do_sample, temperature, top_p)
        self.on_done, self.pad_id, self.adapter_names = on_done, pad_id, adapter_names
        # each prompt's token budget (row_budgets): max_new_tokens, or less where a learned position table ends first
        self.budget = list(budgets) if budgets is not None else [max_new_tokens] * len(token_ids)
        self.device = next(model.parameters()).device
        self.calculator = calculator  # lora_spec.calculator.Calculator: equation results written, not sampled
        self.extra, self.cache_kw = _forward_kwargs(model)
        self.gen: dict[int, list[int]] = {}  # the tokens generated so far, per prompt in flight
        self.rows: _Rows | None = None       # the batch in flight
        self.joinable: bool | None = None    # learned from the first KV cache: sliding-window layers cannot join
        self.shared, self.prefix_cache = 0, None
        self.joins = self.steps = self.prefill_tokens = 0

    def run(self, order: list[int], share_prefix: bool = True) -> None:
        import torch

        one_adapter = self.adapter_names is None or len(set(self.adapter_names)) == 1
        with torch.inference_mode():
            if share_prefix and one_adapter and len(order) > 1:
                self.prefill_prefix(order)
            queue = list(order)
            while queue or self.rows is not None:
                queue = self.admit(queue)
                self.step()

    # -- 1. the shared prefix
    def prefill_prefix(self, order: list[int]) -> None:
        import torch

        shared = _common_prefix([self.token_ids[i] for i in order])
        if shared < MIN_SHARED_PREFIX:
            return
        ids = torch.tensor([self.token_ids[order[0]][:shared]], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **self.extra,
                         **self._names(order[:1]))
        self.prefill_tokens += shared
        cache = _out_cache(out)
        if _mergeable(cache):  # sliding-window layers: keep every prompt whole
            self.shared, self.prefix_cache = shared, cache

    # -- 2. prefill waiting prompts and join them into the batch
    def admit(self, queue: list[int]) -> list[int]:
        """Prefill the next waiting prompts when there is room for them; returns the prompts still waiting."""
        rows = self.rows
        free = self.batch_size - (len(rows) if rows is not None else 0)
        # join waiting prompts into a running batch only when its cache can be joined; else whole batches
        if not queue or not (rows is None or (self.joinable and (free >= max(1, self.batch_size // 4)
                                                                 or len(queue) <= free))):
            return queue
        take = queue[:free]
        new = self.prefill(take)
        for i in take:
            self.gen[i] = []
        if self.joinable is None:
            self.joinable = _mergeable(new.cache)
        if rows is None:
            self.rows = new
        else:
            rows.join(new)
            self.joins += 1
        return queue[free:]

    def prefill(self, idx: list[int]) -> _Rows:
        import torch

        ids, attn = self._padded([self.token_ids[i][self.shared:] for i in idx])
        self.prefill_tokens += int(attn.sum())
        pos = attn.long().cumsum(-1) - 1 + self.shared
        kw = dict(self.extra)
        if self.prefix_cache is not None:
            cache = copy.deepcopy(self.prefix_cache)
            cache.batch_repeat_interleave(len(idx))
            attn = torch.cat([attn.new_ones(len(idx), self.shared), attn], 1)
            kw[self.cache_kw] = cache
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos.clamp(min=0), use_cache=True, **kw,
                         **self._names(idx))
        cache, room = _out_cache(out), 0
        if BUFFER_KV and _mergeable(cache):  # decode steps then write in place instead of copying the cache
            room = self.max_new_tokens
            _buffer_cache(cache, room)
        return _Rows(cache, attn, pos[:, -1] + 1, out.logits[:, -1, :], list(idx), room)

    # -- 3. one decode step
    def step(self) -> None:
        """Pick every row's next token, hand finished rows to ``on_done`` and drop them, and run the rest one
        position further."""
        import torch

        rows = self.rows
        if self.calculator is not None:
            self.calculator.apply(rows.logits, [self.gen[i] for i in rows.ids])
        nxt = _pick(rows.logits, *self.sampling)
        finished = [j for j, (i, t) in enumerate(zip(rows.ids, nxt.tolist())) if self._extend(i, t)]
        if finished:
            for j in finished:
                i = rows.ids[j]
                self.on_done(i, self.gen.pop(i))
            if len(finished) == len(rows):
                self.rows = None
                return
            gone = set(finished)
            keep = torch.tensor([j for j in range(len(rows)) if j not in gone], device=self.device)
            rows.select(keep)
            nxt = nxt[keep]
        rows.attn = torch.cat([rows.attn, rows.attn.new_ones(len(rows), 1)], 1)
        out = self.model(input_ids=nxt[:, None], attention_mask=rows.attn, position_ids=rows.pos[:, None],
                         use_cache=True, **{self.cache_kw: rows.cache}, **self.extra, **self._names(rows.ids))
        rows.cache = _out_cache(out)
        rows.logits = out.logits[:, -1, :]
        rows.pos = rows.pos + 1
        self.steps += 1

    def _extend(self, i: int, t: int) -> bool:
        """Append token ``t`` to prompt ``i``'s generated ids; True when the row is finished."""
        g = self.gen[i]
        g.append(t)
        return (t in self.eos or len(g) >= self.budget[i]
                or bool(self.stops and any(s in self.tokenizer.decode(g[-self.window:]) for s in self.stops)))

    def _names(self, idx: Sequence[int]) -> dict:
        """peft's per-row adapter argument for the rows ``idx`` (nothing without a mixed batch)."""
        return {} if self.adapter_names is None else {"adapter_names": [self.adapter_names[i] for i in idx]}

    def _padded(self, seqs: list[list[int]]) -> tuple[Any, Any]:
        import torch

        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            if s:
                ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
                attn[r, width - len(s):] = 1
        return ids.to(self.device), attn.to(self.device)


def _ids_until_stop(ids: Sequence[int], stop_ids: set[int]) -> list[int]:
    """Generated ids up to (not including) the first EOS/pad: what ``return_ids=True`` gives back."""
    out = []
    for t in ids:
        if int(t) in stop_ids:
            break
        out.append(int(t))
    return out


def _decode_seq2seq(model: Any, tokenizer: Any, prompts: Sequence[str], order: list[int], *, batch_size: int,
                    max_new_tokens: int, eos_list: list[int], stops: Sequence[str], window: int, do_sample: bool,
                    temperature: float, top_p: float, add_special: bool, on_done: Any,
                    adapter_names: Sequence[str] | None = None, calculator: Any = None) -> int:
    """Encoder-decoders: length-sorted batches through ``model.generate`` with a per-row stop criterion;
    ``on_done(i, ids)`` gets each prompt's generated ids (decoder start token dropped). Returns the batch count."""
    import torch

    device = next(model.parameters()).device
    n_batches = 0
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=add_special).to(device)
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
                                          pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_list or None)
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if stops:
            from transformers import StoppingCriteriaList

            gen_kwargs["stopping_criteria"] = StoppingCriteriaList([_stop_criteria(tokenizer, stops, 1, window)])
        if calculator is not None:
            from transformers import LogitsProcessorList

            gen_kwargs["logits_processor"] = LogitsProcessorList([logits_processor(calculator)])
        if adapter_names is not None:
            gen_kwargs["adapter_names"] = [adapter_names[i] for i in idx]
        with torch.inference_mode():
            out = model.generate(**enc, **gen_kwargs)
        for j, i in enumerate(idx):
            on_done(i, out[j, 1:].tolist())
        n_batches += 1
    return n_batches


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's end-of-sequence ids (its generation config's, else the tokenizer's)."""
    cfg = getattr(model, "generation_config", None)
    eos_ids = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if eos_ids is None:
        eos_ids = tokenizer.eos_token_id
    return [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])


def _fit_positions(limit: int | None, kind: str, lengths: list[int], max_new_tokens: int) -> int:
    """Against a learned position table of ``limit`` positions (:func:`lora_spec.student.learned_positions`): a
    prompt that does not fit is an error; a seq2seq decoder's budget is capped by it (a causal row's is, per row, in
    :class:`_CausalDecoder`)."""
    if limit is None:
        return max_new_tokens
    long = [n for n in lengths if n >= limit + (kind == "seq2seq")]  # an encoder reads all its positions
    if long:
        raise ModelError(f"{len(long)} of {len(lengths)} prompts do not fit the model's {limit} learned positions, its "
                         f"whole context (the longest: {max(lengths)} tokens, prompt {lengths.index(max(lengths)) + 1});"
                         f" shorter prompts (fewer in-context exemplars, a zero-shot mode) or a model with a longer "
                         f"context are needed")
    return min(max_new_tokens, limit - 1) if kind == "seq2seq" else max_new_tokens  # the decoder's start token


def row_budgets(limit: int | None, kind: str, lengths: list[int], max_new_tokens: int) -> list[int]:
    """Each prompt's token budget: ``max_new_tokens`` (already capped by :func:`_fit_positions`), or, for a causal
    model with a learned position table of ``limit`` positions, what the table leaves after the prompt."""
    if limit is None or kind != "causal":
        return [max_new_tokens] * len(lengths)
    return [min(max_new_tokens, limit - n) for n in lengths]


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, kind: str = "causal", max_new_tokens: int = 256,
             stop: Sequence[str] | None = None, batch_size: int = 16, progress: bool = True,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             stats: dict | None = None, description: str = "generating", share_prefix: bool = True,
             adapter_names: Sequence[str] | None = None, add_special_tokens: bool | None = None,
             strip: bool = True, return_ids: bool = False, on_output: Any = None, calculator: bool = False) -> list:
    """Generate a completion for each prompt (greedy by default); outputs in input order, stop strings cut off.

    ``kind``: ``causal`` (decoder-only: continuous batching with left padding, see :func:`_decode_causal`) or
    ``seq2seq`` (encoder-decoder: length-sorted batches through ``model.generate``). ``stats`` (optional dict)
    receives ``generated_tokens``, ``seconds`` and ``batches``. ``adapter_names``: one peft adapter name per
    prompt (a mixed-adapter batch). ``add_special_tokens``: None (default) tokenizes the prompts exactly as
    training does (``batching.encode_prompts``: special tokens added, no second BOS); True/False force it. ``strip``: strip whitespace off each
    completion. ``return_ids``: the generated token ids up to EOS instead of texts (stop strings not applied).
    ``on_output(i, output, n_tokens, budget)``: called as each prompt finishes (the eval journal keeps it at once);
    ``budget`` is that prompt's token budget (``max_new_tokens``, or less where a learned position table ends first).
    ``calculator``: the result of each equation the model writes (``48 / 2 =``) is written by
    :mod:`lora_spec.calculator`, not sampled; ``stats["calculator_calls"]`` counts them.

    Over 80 lines: the one entry point of every generation in lorasp; its body is the setup both decoders share
    (prompt encoding, budgets, stop ids, the ``finish`` callback that decodes, cuts, counts and reports each output)
    and the dispatch to the causal or seq2seq decoder, which do the work.
    """
    if kind not in ("causal", "seq2seq"):
        raise ConfigError(f"unknown model kind {kind!r} (expected causal or seq2seq)")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if adapter_names is not None and len(adapter_names) != len(prompts):
        raise ConfigError(f"{len(adapter_names)} adapter names for {len(prompts)} prompts")
    stops = [] if return_ids else [s for s in (stop or []) if s]
    t0 = time.perf_counter()
    outputs: list = [[] if return_ids else ""] * len(prompts)
    total_tokens = 0
    n_batches = 0
    if not prompts:
        if stats is not None:
            stats.update(generated_tokens=0, seconds=0.0, batches=0)
        return outputs

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left" if kind == "causal" else "right"
    if add_special_tokens is None:  # as training tokenized the prompts (lora_spec.batching.encode_prompts)
        add_special, token_ids = True, encode_prompts(tokenizer, list(prompts))
    else:
        add_special = add_special_tokens
        token_ids = tokenizer(list(prompts), add_special_tokens=add_special)["input_ids"]
    lengths = [len(ids) for ids in token_ids]
    limit = learned_positions(model)
    max_new_tokens = _fit_positions(limit, kind, lengths, max_new_tokens)
    budgets = row_budgets(limit, kind, lengths, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    eos_list = _eos_ids(model, tokenizer)
    stop_ids = set(eos_list) | ({tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else set())
    window = 4 + max((len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in stops), default=0) * 2
    was_training = getattr(model, "training", False)
    model.eval()
    prog = _progress(progress, description, len(prompts))

    def finish(i: int, ids: list[int], n_tokens: int) -> None:
        nonlocal total_tokens
        if return_ids:
            outputs[i] = _ids_until_stop(ids, stop_ids)
        else:
            text = tokenizer.decode(ids, skip_special_tokens=True)
            text = cut_at_stop(text, stops) if stops else text
            outputs[i] = text.strip() if strip else text
        total_tokens += n_tokens
        if on_output is not None:
            on_output(i, outputs[i], n_tokens, budgets[i])
        if prog is not None:
            el = time.perf_counter() - t0
            prog.update(advance=1, **{"tok/s": f"{total_tokens / max(el, 1e-9):.0f}"})

    calc = None
    if calculator:
        calc = Calculator(tokenizer)
    common = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, stops=stops, window=window,
                  do_sample=do_sample, temperature=temperature, top_p=top_p, adapter_names=adapter_names,
                  calculator=calc)
    try:
        if kind == "causal":
            _decode_causal(model, tokenizer, token_ids, order, eos=set(eos_list), stats=stats,
                           pad_id=tokenizer.pad_token_id, share_prefix=share_prefix, budgets=budgets,
                           on_done=lambda i, g: finish(i, g, len(g)), **common)
            n_batches = -(-len(prompts) // batch_size)
        else:
            n_batches = _decode_seq2seq(model, tokenizer, prompts, order, eos_list=eos_list, add_special=add_special,
                                        on_done=lambda i, g: finish(i, g, _count_new_tokens(g, stop_ids)),
                                        **common)
    finally:
        if prog is not None:
            prog.close()
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    if stats is not None:
        stats.update(generated_tokens=total_tokens, seconds=time.perf_counter() - t0, batches=n_batches,
                     **({"calculator_calls": calc.calls} if calc is not None else {}))
    return outputs


def chat_wrap(tokenizer: Any, text: str, *, chat: bool, system: str | None) -> str:
    """``text`` as the user turn of the tokenizer's chat template (after ``system`` as the system message, when
    given), ready for the assistant's answer; ``chat=False``: ``text`` unchanged. The wrapping of a prompt given
    as is (``lorasp generate --mode raw --chat``); the four prompt modes build theirs with
    :func:`lora_spec.prompts.build_prompt`, as training did."""
    if not chat:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--chat: this tokenizer has no chat template")
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
