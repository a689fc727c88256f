"""The four training formats of Fu et al. (2023) and their mixture.

- ``in_context_cot``: k exemplars drawn (seeded) from the training pool, never the question itself, each with
  its teacher CoT; then the question and the teacher CoT as the target;
- ``in_context_answer``: the same exemplars answer-only; the target is ``The answer is X.``;
- ``zero_shot_cot``: the question + the CoT trigger; the target is the teacher CoT;
- ``zero_shot_answer``: the question alone; the target is ``The answer is X.``.

Prompts and targets are built by ``lora_spec.prompts`` (``build_prompt`` / ``cot_target`` / ``answer_target``), the
same functions evaluation uses, so the student is trained on exactly the text it is later asked to continue.

Mixture weights (``in_context_cot=4,zero_shot_cot=2,...``) are relative: each correct teacher sample becomes one
training row, and the rows are split over the formats in proportion to the weights (largest remainder, over a
seeded permutation), so a weight of 0 switches a format off and the proportions are exact rather than sampled.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Mapping

from . import prompts
from .batching import over_budget
from .errors import ConfigError, DataError
from .records import FORMATS, Example, Problem, Sample

DEFAULT_MIXTURE = "zero_shot_cot=8,in_context_cot=1,zero_shot_answer=1"
PAPER_MIXTURE = "in_context_cot=4,zero_shot_cot=2,in_context_answer=1,zero_shot_answer=1"
_ALIASES = {"icl_cot": "in_context_cot", "icl_answer": "in_context_answer", "zs_cot": "zero_shot_cot",
            "zs_answer": "zero_shot_answer"}


def parse_mixture(spec: str | Mapping[str, float] | list[str] | None, where: str = "--formats") -> dict[str, float]:
    """``"in_context_cot=4,zero_shot_cot=2"`` (or a mapping, or a list of ``k=v``) -> weights of all four formats."""
    if spec is None or spec == "":
        spec = DEFAULT_MIXTURE
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        parts = spec if isinstance(spec, list) else [spec]
        items = []
        for part in parts:
            for kv in str(part).split(","):
                kv = kv.strip()
                if not kv:
                    continue
                if "=" not in kv:
                    if _ALIASES.get(kv, kv) in FORMATS:  # a bare format name means weight 1
                        items.append((kv, 1))
                        continue
                    raise ConfigError(f"{where}: expected FORMAT=WEIGHT, got {kv!r} "
                                      f"(formats: {', '.join(FORMATS)})")
                k, v = kv.split("=", 1)
                items.append((k.strip(), v.strip()))
    weights = {f: 0.0 for f in FORMATS}
    seen = set()
    for k, v in items:
        name = _ALIASES.get(k, k)
        if name not in FORMATS:
            close = difflib.get_close_matches(name, FORMATS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (formats: {', '.join(FORMATS)})"
            raise ConfigError(f"{where}: unknown format {k!r}{hint}")
        if name in seen:
            raise ConfigError(f"{where}: format {name!r} is given twice")
        seen.add(name)
        try:
            w = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: weight of {name!r} must be a number, got {v!r}") from None
        if not (w >= 0 and w < float("inf")):
            raise ConfigError(f"{where}: weight of {name!r} must be a finite number >= 0, got {v!r}")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise ConfigError(f"{where}: at least one format needs a weight > 0")
    return weights


def mixture_string(weights: Mapping[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in weights.items() if v > 0)


def allocate(n: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` rows over the formats in proportion to ``weights`` (largest remainder; ties in FORMATS order)."""
    total = sum(weights.values())
    exact = {f: n * weights.get(f, 0.0) / total for f in FORMATS}
    counts = {f: int(exact[f]) for f in FORMATS}
    rest = n - sum(counts.values())
    order = sorted(FORMATS, key=lambda f: (-(exact[f] - counts[f]), FORMATS.index(f)))
    for f in order[:rest]:
        counts[f] += 1
    return counts


@dataclass
class TrainingItem:
    """A correct teacher solution of one problem: the problem (gold answer) and the teacher's CoT text."""

    problem: Problem
    text: str
    sample: Sample | None = None


def items_from_run(problems: Mapping[str, Problem], samples: list[Sample],
                   first: int | None = None) -> list[TrainingItem]:
    """Pair correct samples with their problems (samples of unknown problems are an error naming them); ``first``:
    only those of the run's first N problems, in its file order (``lorasp fit --data RUN --first N``)."""
    keep = set(list(problems)[:first]) if first else None
    items = []
    for s in samples:
        if s.correct is False or not (s.text or "").strip():
            continue
        p = problems.get(s.problem_id)
        if p is None:
            raise DataError(f"sample of problem {s.problem_id!r} (index {s.sample_index}) has no problem record")
        if keep is None or s.problem_id in keep:
            items.append(TrainingItem(p, s.text, s))
    return items


def build_examples(items: list[TrainingItem], weights: Mapping[str, float], tokenizer: Any = None, *,
                   n_shots: int = 4, seed: int = 0, chat: bool | None = None,
                   system: Any = None, max_length: int | None = None, kind: str = "causal") -> list[Example]:
    """One training row per item, spread over the formats by ``weights``; everything seeded by ``seed``.

    ``max_length`` (with a tokenizer): an in-context row longer than that many tokens drops whole exemplars, the
    first ones first, down to one, so that it stays a well-formed few-shot prompt instead of losing the start of its
    first exemplar to truncation; ``Example.n_shots`` says how many it kept. Rows that are still too long are cut by
    :func:`lora_spec.batching.encode_examples`."""

    if not items:
        raise DataError("no correct teacher samples to train on")
    counts = allocate(len(items), weights)
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    # exemplar pool: one exemplar Problem per distinct problem, its rationale a teacher CoT
    pool: dict[str, Problem] = {}
    for it in items:
        if it.problem.id not in pool:
            pool[it.problem.id] = Problem(it.problem.id, it.problem.question, it.problem.answer,
                                          rationale=prompts.strip_answer_sentence(it.text), meta=it.problem.meta)
    pool_ids = list(pool)
    needs_shots = counts["in_context_cot"] + counts["in_context_answer"] > 0
    if needs_shots:
        if n_shots < 1:
            raise ConfigError("--n-shots must be >= 1 when an in-context format has a weight > 0")
        if len(pool_ids) <= n_shots:
            raise DataError(f"in-context formats need more than {n_shots} distinct training problems for "
                            f"exemplars (the question itself is never one); have {len(pool_ids)}")
    kw: dict[str, Any] = {"chat": chat}
    if system is not None:
        kw["system"] = system or None
    assignment: list[str] = []
    for f in FORMATS:
        assignment += [f] * counts[f]
    out: list[Example | None] = [None] * len(items)
    for pos, idx in enumerate(order):
        fmt = assignment[pos]
        it = items[idx]
        mode = prompts.MODE_OF_FORMAT[fmt]
        exemplars = None
        if mode.startswith("icl_"):
            shots: list[Problem] = []
            while len(shots) < n_shots:
                cand = pool[pool_ids[rng.randrange(len(pool_ids))]]
                if cand.id != it.problem.id and all(cand.id != s.id for s in shots):
                    shots.append(cand)
            exemplars = shots
        prompt, target = prompts.build_example(it.problem, mode, tokenizer, rationale=it.text,
                                               answer=it.problem.answer, exemplars=exemplars, **kw)
        if exemplars and max_length and tokenizer is not None:
            while len(exemplars) > 1 and over_budget(tokenizer, kind, max_length, prompt, target):
                exemplars = exemplars[1:]
                prompt, target = prompts.build_example(it.problem, mode, tokenizer, rationale=it.text,
                                                       answer=it.problem.answer, exemplars=exemplars, **kw)
        s = it.sample
        out[idx] = Example(format=fmt, prompt=prompt, target=target, problem_id=it.problem.id,
                           teacher_tokens=s.tokens if s is not None else None,
                           teacher_top_logprobs=s.top_logprobs if s is not None else None,
                           n_shots=len(exemplars) if exemplars else None)
    return [e for e in out if e is not None]


def data_fingerprint(items: list[TrainingItem], weights: Mapping[str, float], **params: Any) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.problem.id, it.problem.answer, it.text], ensure_ascii=False).encode())
    h.update(json.dumps({"weights": dict(weights), **{k: str(v) for k, v in params.items()}},
                        sort_keys=True).encode())
    return h.hexdigest()[:16]


def fewer_shots(examples: list[Example], n_shots: int) -> dict[str, int]:
    """In-context rows that hold fewer than ``n_shots`` exemplars (fitted to the length budget), per format."""
    out: dict[str, int] = {}
    for e in examples:
        if e.n_shots is not None and e.n_shots < n_shots:
            out[e.format] = out.get(e.format, 0) + 1
    return out


def format_counts(examples: list[Example]) -> dict[str, int]:
    out = {f: 0 for f in FORMATS}
    for e in examples:
        out[e.format] = out.get(e.format, 0) + 1
    return out


__all__ = ["DEFAULT_MIXTURE", "PAPER_MIXTURE", "parse_mixture", "mixture_string", "allocate", "TrainingItem",
           "items_from_run", "build_examples", "data_fingerprint", "fewer_shots", "format_counts"]
