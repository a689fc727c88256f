"""``hf`` teacher: a local transformers model (causal or seq2seq) sampled in batches.

The sampled tokens' strings (each token decoded on its own, as OpenAI-compatible servers report them) and the
top-k log-probabilities per generated token come from the model's raw logits (``output_logits``), i.e. the
teacher's distribution before temperature/top-p. Stop strings end a sample; the text is cut before the stop
string (the OpenAI convention) and the token list is cut with it. Chat prompts (lists of messages) go through
the tokenizer's chat template.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

from ...errors import ConfigError
from ...precision import resolve_precision
from ...records import Sample, TeacherRequest
from ...student import load_student
from ...teacher_forcing import ScoreRequest, ScoreResult, hf_score, merge_top
from .openai import derive_seed


class HFTeacher:
    """A local transformers model as teacher: batched sampling with per-token top-k logprobs."""

    name = "hf"

    def __init__(self, model: str = "smollm2-135m", temperature: float = 0.7, top_p: float | None = None,
                 max_tokens: int = 256, stop: list[str] | None = None, top_logprobs: int = 0, seed: int | None = 0,
                 batch_size: int = 8, device: str | None = None, precision: str = "auto"):
        if not model:
            raise ConfigError("teacher 'hf' needs --model (a preset, a local directory or a Hub id)")
        if batch_size < 1:
            raise ConfigError(f"teacher 'hf': batch_size must be >= 1, got {batch_size}")

        self.spec = model
        self.precision = resolve_precision(precision, device)
        self.student = load_student(model, dtype=self.precision.dtype, device=device)
        self.model, self.tok = self.student.model, self.student.tokenizer
        self.model.eval()
        self.temperature, self.top_p = float(temperature), top_p
        self.max_tokens, self.stop = int(max_tokens), list(stop or [])
        self.top_logprobs, self.seed, self.batch_size = int(top_logprobs), seed, int(batch_size)
        self.requests_sent = 0

    def params(self) -> dict[str, Any]:
        p = {"teacher": "hf", "model": self.spec, "base": self.student.fingerprint,
             "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
             "stop": self.stop, "top_logprobs": self.top_logprobs, "seed": self.seed}
        if self.precision.name != "fp32":  # samples differ by precision (an fp32 run keeps its fingerprint)
            p["precision"] = self.precision.name
        return p

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(self.params(), sort_keys=True, default=str).encode()).hexdigest()[:12]
        return f"hf:{self.spec}:{h}"

    def describe(self) -> dict[str, Any]:
        return {**self.params(), "batch_size": self.batch_size, "kind": self.student.kind,
                "precision": self.precision.record()}

    # -- scoring text the teacher did not write (lorasp score) ------------------------------------------------------
    def score_fingerprint(self, top_k: int) -> str:
        """Identifies the scores: the model (its weights' fingerprint), the precision and k."""
        p = {"scorer": "hf", "model": self.spec, "base": self.student.fingerprint, "precision": self.precision.name,
             "top_k": int(top_k)}
        return f"hf:{self.spec}:{hashlib.sha256(json.dumps(p, sort_keys=True, default=str).encode()).hexdigest()[:12]}"

    def score(self, requests: list[ScoreRequest], top_k: int, stop: Any = None) -> Iterator[ScoreResult]:
        """Teacher-forced top-k, ``batch_size`` samples per forward pass (similar lengths together), yielded per
        batch; no new batch starts once the ``threading.Event`` ``stop`` is set."""

        order = sorted(requests, key=lambda r: len(r.prompt) + len(r.text))
        for b in range(0, len(order), self.batch_size):
            if stop is not None and stop.is_set():
                return
            self.requests_sent += 1
            yield from hf_score(self.model, self.tok, self.student.kind, order[b:b + self.batch_size], top_k)

    def _text(self, prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, list):
            return self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return prompt

    def generate(self, requests: list[TeacherRequest]) -> list[list[Sample]]:
        items = [(r, r.first_index + i) for r in requests for i in range(r.n)]
        done: dict[tuple[str, int], Sample] = {}
        for b in range(0, len(items), self.batch_size):
            for s in self._batch(items[b:b + self.batch_size]):
                done[(s.problem_id, s.sample_index)] = s
        return [[done[(r.problem.id, r.first_index + i)] for i in range(r.n)] for r in requests]

    def _batch(self, items: list[tuple[TeacherRequest, int]]) -> list[Sample]:
        import torch

        self.requests_sent += 1
        texts = [self._text(r.prompt) for r, _ in items]
        enc = self.tok(texts, return_tensors="pt", padding=True).to(self.model.device)
        if self.seed is not None:
            torch.manual_seed(derive_seed(int(self.seed), items[0][0].problem.id, items[0][1]))
        sampling = self.temperature > 0
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=self.max_tokens, do_sample=sampling,
                                          return_dict_in_generate=True, output_logits=self.top_logprobs > 0,
                                          pad_token_id=self.tok.pad_token_id)
        if sampling:
            gen_kwargs["temperature"] = self.temperature
            gen_kwargs["top_k"] = 0
            if self.top_p is not None:
                gen_kwargs["top_p"] = self.top_p
        if self.stop:
            gen_kwargs["stop_strings"] = self.stop
            gen_kwargs["tokenizer"] = self.tok
        with torch.no_grad():
            out = self.model.generate(**enc, **gen_kwargs)
        seqs = out.sequences
        start = enc["input_ids"].shape[1] if self.student.kind == "causal" else 1
        gen = seqs[:, start:]
        eos = {self.tok.eos_token_id, self.tok.pad_token_id} - {None}
        logps = None
        if self.top_logprobs > 0:
            logps = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [batch, steps, vocab]
        prompt_lens = enc["attention_mask"].sum(-1).tolist()
        samples = []
        for row, (req, idx) in enumerate(items):
            ids = gen[row].tolist()
            finish = "length"
            n = len(ids)
            for j, t in enumerate(ids):
                if t in eos:
                    n, finish = j, "stop"
                    break
            ids = ids[:n]
            pieces = [self.tok.decode([t]) for t in ids]
            text = self.tok.decode(ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in self.stop if s and s in text), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                acc, keep = 0, 0
                while keep < len(pieces) and acc < len(text):
                    acc += len(pieces[keep])
                    keep += 1
                pieces, ids = pieces[:keep], ids[:keep]
            top = None
            if logps is not None:
                top = []
                for j in range(len(ids)):
                    # several ids can decode to one string (e.g. partial UTF-8 bytes -> "\ufffd"): their
                    # probabilities are summed, and the k most likely distinct strings are kept
                    d = merge_top(logps[row, j], self.top_logprobs, lambda i: self.tok.decode([i]))
                    d.setdefault(pieces[j], float(logps[row, j, ids[j]]))
                    top.append(d)
            samples.append(Sample(problem_id=req.problem.id, sample_index=idx, prompt_id=req.prompt_id, text=text,
                                  tokens=pieces, top_logprobs=top, finish_reason=finish,
                                  usage={"prompt_tokens": int(prompt_lens[row]), "completion_tokens": len(ids),
                                         "total_tokens": int(prompt_lens[row]) + len(ids)},
                                  teacher=self.fingerprint()))
        return samples
