"""Run a teacher over a dataset: prompts, sampling, answer filtering, a resumable store, export and manifest.

``teach(cfg)`` is both the ``lorasp teach`` command and the Python API (``fit`` calls it in-process). The run
directory holds:

* ``store.sqlite``: the source of truth. Every sample is keyed by (teacher fingerprint, prompt_id, problem_id,
  sample_index) and committed as it arrives, so a rerun after a crash, Ctrl-C or ``kill -9`` asks only for what
  is missing. A different teacher or prompt in the same directory gets its own keys.
* ``problems.jsonl``: the problems asked (with gold answers), ``samples.jsonl``: the correct samples
  (``keep: all`` exports every sample, each marked ``correct``), ``manifest.json``: teacher, prompt, parameters,
  counts, first-sample and majority-vote accuracy, token usage and wall time.

``load_run(dir)`` reads a run back for ``fit``.

Over 500 lines: the run is one resumable loop over one store, and its parts (prompt specs, plugin creation, the
loop with its signal handling, the manifest, reading a run back) share the store's keys and the run directory's
layout; apart, each would import the others.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError

from . import __version__, registry
from ._stage import make_callable
from .answers import answers_match, judge, kind_for
from .config import FIRST_MEANS, RunConfig, describe_error, parse_kv
from .errors import ConfigError, DataError, LoraspError
from .outputs import TEACH_FORMAT, RunLock, check_output, interrupt_on_signals
from .paths import data_dir as find_data_dir
from .progress import Progress
from .records import Problem, Sample, TeacherRequest, read_jsonl, read_text, write_jsonl
from .store import SampleStore, request_usage

# ------------------------------------------------------------------------------------------------- config


class TeachConfig(RunConfig):
    """``lorasp teach``: sample chain-of-thought solutions from a teacher, keep the correct ones."""

    renamed: ClassVar[dict[str, tuple[str, str]]] = {"limit": ("first", FIRST_MEANS)}

    dataset: str = Field("arith", description="Dataset plugin (lorasp plugins --group datasets).")
    split: str = Field("train", description="Split of the dataset to teach on.")
    first: int | None = Field(None, ge=1, description="Only the first N problems of the split, in file order (a "
                                                      "rerun with a larger N asks only for the new ones).")
    dataset_opt: list[str] = Field(default_factory=list, description="Dataset plugin parameter KEY=VALUE.")
    data_dir: str | None = Field(None, description="Data directory (default: $LORASP_DATA_DIR).")
    teacher: str = Field("gold", description="Teacher plugin: openai, hf, file, gold, or a third-party one.")
    model: str | None = Field(None, description="Teacher model: served model name (openai) or preset/dir/id (hf).")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible server base URL (openai).")
    api: Literal["completions", "chat"] = Field("completions", description="Endpoint the openai teacher calls.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the API key.")
    prompt: str = Field("zero-shot-cot", description="Prompt: gsm8k-{complex,original,simple,random,mid}-8shot, "
                        "gsm8k-simple-4shot, gsm8k-direct-8shot, zero-shot-cot, zero-shot, or file:PATH.")
    samples: int = Field(4, ge=1, le=1000, description="Samples per problem.")
    temperature: float = Field(0.7, ge=0.0, le=5.0, description="Sampling temperature.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling top-p.")
    max_tokens: int = Field(256, ge=1, description="Most tokens per sample.")
    stop: list[str] = Field(default_factory=list, description="Stop string (default: the prompt's; \\n escapes ok).")
    top_logprobs: int = Field(0, ge=0, le=20, description="Record the teacher's top-k logprobs per token.")
    seed: int | None = Field(0, description="Sampling seed (each sample gets its own derived seed).")
    concurrency: int = Field(8, ge=1, le=512, description="Requests in flight (openai).")
    timeout: float = Field(600.0, gt=0, description="Seconds for one answer, a total deadline (connect, queueing "
                           "and every byte of the reply, even from a server that trickles), per attempt (openai).")
    max_retries: int = Field(6, ge=0, le=50, description="Retries on 429/5xx/timeouts (openai).")
    teacher_opt: list[str] = Field(default_factory=list, description="Teacher plugin parameter KEY=VALUE.")
    keep: Literal["correct", "all"] = Field("correct", description="Export only correct samples, or all (marked).")
    max_answer_chars: int = Field(1_000_000, ge=1, description="Longest teacher answer kept, in characters (far "
                                  "above any real chain of thought); a longer one is dropped as a failure and "
                                  "counted in the manifest (counts.too_long).")
    out: str | None = Field(None, description="Run directory (default: runs/teach/<dataset>-<split>).")
    progress: bool = Field(True, description="Show a progress bar on a terminal.")

    def resolved(self) -> "TeachConfig":
        return self if self.out else self.model_copy(update={"out": f"runs/teach/{self.dataset}-{self.split}"})


# ------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptSpec:
    name: str
    prefix: str  # exemplars (or empty), followed by the query template
    query: str  # template with {question}
    stop: tuple[str, ...]
    mode: str  # "cot" or "answer"

    def render(self, problem: Problem) -> str:
        return self.prefix + self.query.format(question=problem.question.strip())


# name -> (exemplar file under gsm8k_prompts/ or None, query template, default stops, mode)
_FEWSHOT_STOP = ("\n\n", "\nQuestion:")
PROMPTS: dict[str, tuple[str | None, str, tuple[str, ...], str]] = {
    "gsm8k-complex-8shot": ("prompt_complex.txt", "Question: {question}\nLet's think step by step\n", _FEWSHOT_STOP, "cot"),
    "gsm8k-original-8shot": ("prompt_original.txt", "Question: {question}\nLet's think step by step\n", _FEWSHOT_STOP, "cot"),
    "gsm8k-simple-8shot": ("prompt_simple.txt", "Question: {question}\nLet's think step by step\n", _FEWSHOT_STOP, "cot"),
    "gsm8k-random-8shot": ("prompt_random.txt", "Question: {question}\nLet's think step by step\n", _FEWSHOT_STOP, "cot"),
    "gsm8k-mid-8shot": ("prompt_mid.txt", "Question: {question}\nLet's think step by step\n", _FEWSHOT_STOP, "cot"),
    "gsm8k-simple-4shot": ("prompt_simple_4_cases.txt", "Q: {question}\nLet's think step by step\n", ("\n\n", "\nQ:"), "cot"),
    "gsm8k-direct-8shot": ("prompt_direct.txt", "Question: {question}\nThe answer is", ("\n",), "answer"),
    "zero-shot-cot": (None, "Question: {question}\nLet's think step by step\n", ("\n\n\n", "\nQuestion:"), "cot"),
    "zero-shot": (None, "Question: {question}\nThe answer is", ("\n",), "answer"),
}


def resolve_prompt(name: str, data_dir: str | os.PathLike | None = None) -> PromptSpec:
    """A prompt by name, or ``file:PATH`` (exemplars; a ``{question}`` placeholder makes it the whole template)."""

    if name.startswith("file:"):
        p = Path(name[5:]).expanduser()
        if not p.exists():
            raise ConfigError(f"--prompt: prompt file {p} not found")
        text = read_text(p, "a prompt file")
        if "{question}" in text:
            return PromptSpec(name, "", text, _FEWSHOT_STOP, "cot")
        return PromptSpec(name, text.rstrip("\n") + "\n\n", "Question: {question}\nLet's think step by step\n",
                          _FEWSHOT_STOP, "cot")
    if name not in PROMPTS:
        close = difflib.get_close_matches(name, list(PROMPTS), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"--prompt: unknown prompt {name!r}{hint} (known: {', '.join(PROMPTS)}, or file:PATH)")
    fname, query, stop, mode = PROMPTS[name]
    prefix = ""
    if fname:
        root = find_data_dir(data_dir)
        p = root / "gsm8k_prompts" / fname if root else None
        if p is None or not p.exists():
            raise DataError(f"--prompt {name}: needs gsm8k_prompts/{fname} under the data directory "
                            f"({root or 'unset'}); set --data-dir or LORASP_DATA_DIR")
        prefix = read_text(p, "exemplars").rstrip("\n") + "\n\n"
    return PromptSpec(name, prefix, query, stop, mode)


def prompt_id(prompt: str | list[dict[str, str]]) -> str:
    """The hash of the exact prompt text (chat prompts: of their canonical JSON)."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- plumbing


def _unescape(s: str) -> str:
    return codecs.decode(s, "unicode_escape") if "\\" in s else s


def _make_dataset(cfg: TeachConfig):
    return registry.create("datasets", cfg.dataset, offered={"data_dir": cfg.data_dir},
                           **parse_kv(cfg.dataset_opt, "--dataset-opt"))


def _make_teacher(cfg: TeachConfig, stop: list[str]):
    offered = {"model": cfg.model, "base_url": cfg.base_url, "api": cfg.api, "api_key_env": cfg.api_key_env,
               "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "stop": stop,
               "top_logprobs": cfg.top_logprobs, "seed": cfg.seed, "concurrency": cfg.concurrency,
               "timeout": cfg.timeout, "max_retries": cfg.max_retries}
    return registry.create("teachers", cfg.teacher, offered=offered, **parse_kv(cfg.teacher_opt, "--teacher-opt"))


def _missing_ranges(have: set[int], n: int) -> list[tuple[int, int]]:
    """Contiguous (first, count) ranges of indices in range(n) that are not stored yet."""
    out: list[tuple[int, int]] = []
    for i in range(n):
        if i in have:
            continue
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


def _check_answer(sample: Sample, problem: Problem) -> None:
    """Teach's correctness filter: the sample's answer by lorasp's one scoring rule (:func:`lora_spec.answers.judge`),
    flexible (a teacher's CoT that never writes an answer sentence is still judged by its last number)."""

    sample.answer, sample.correct = judge(problem, sample.text, strict=False)


class _Progress:
    """Samples/s, running accuracy and failures (lora_spec.progress: a bar on a terminal, else a line every
    LORASP_PROGRESS_EVERY seconds)."""

    def __init__(self, total: int, done: int, enabled: bool, label: str):
        self.t0 = time.time()
        self.new = 0
        self.correct = 0
        self.received = 0
        self.failed = 0
        self.p = Progress(label, total, completed=done, enabled=enabled,
                          columns=("samples/s", "correct", "failed"))

    def update(self, stored: int, correct: int, failed: int) -> None:
        self.new += stored
        self.received += stored
        self.correct += correct
        self.failed += failed
        el = max(time.time() - self.t0, 1e-6)
        acc = f"{self.correct / self.received:.1%}" if self.received else "-"
        self.p.update(advance=stored + failed, correct=acc, failed=str(self.failed),
                      **{"samples/s": f"{self.new / el:.2f}"})

    def close(self) -> None:
        self.p.close()


# ------------------------------------------------------------------------------------------------- teach


def plan(cfg: TeachConfig) -> dict[str, Any]:
    """What ``teach(cfg)`` would do, without asking the teacher anything (``lorasp teach --dry-run``)."""
    cfg = cfg.resolved()
    spec = resolve_prompt(cfg.prompt, cfg.data_dir)
    factory = registry.resolve("teachers", cfg.teacher)  # an unknown teacher fails here
    cap = getattr(factory, "max_samples", None)  # a class attribute (gold: one reference per problem)
    samples = min(cfg.samples, cap) if isinstance(cap, int) else cfg.samples
    n = sum(1 for _ in _make_dataset(cfg).load(cfg.split, limit=cfg.first))
    out = Path(cfg.out)
    return {"dataset": cfg.dataset, "split": cfg.split, "problems": n, "first": cfg.first, "teacher": cfg.teacher,
            "model": cfg.model, "prompt": spec.name, "samples": samples, "requested": n * samples,
            "out": str(out), "resumes": (out / "store.sqlite").exists()}


@dataclasses.dataclass
class TeachResult:
    """What a teach run wrote: its directory and its manifest.json document (what ``lorasp teach`` prints)."""

    out: Path
    manifest: dict[str, Any]


def teach(cfg: TeachConfig | None = None, **overrides: Any) -> Path:
    """Run (or resume) a teach run; returns the run directory. ``teach(dataset="arith", teacher="gold", out=...)``."""
    return teach_result(cfg, **overrides).out


def teach_result(cfg: TeachConfig | None = None, **overrides: Any) -> TeachResult:
    """:func:`teach`, returning the run directory and the manifest it wrote."""
    if cfg is None or overrides:
        data = {**(cfg.model_dump() if cfg is not None else {}), **overrides}
        try:
            cfg = TeachConfig(**data)
        except ValidationError as exc:  # -> one line naming the field
            raise ConfigError("teach " + describe_error(exc.errors()[0], {})) from None

    out = Path(cfg.out or f"runs/teach/{cfg.dataset}-{cfg.split}")
    # an existing teach run is resumed; anything else that is there is never written into (a symlinked --out: its
    # target is the run)
    res = check_output(out, "teach", inputs=[(f"--teacher-opt {kv.split('=', 1)[0]}", f) for kv in cfg.teacher_opt
                                       if "=" in kv for f in kv.split("=", 1)[1].split(",")]
                 + [("--prompt", cfg.prompt[5:] if cfg.prompt.startswith("file:") else None),
                    ("--data-dir", cfg.data_dir)])
    if out.is_symlink():
        out = res

    with contextlib.ExitStack() as stack:  # holds the run lock, taken once the cheap checks passed
        return _teach(cfg, out, stack, RunLock)


def _same_run(out: Path, cfg: TeachConfig, n_problems: int) -> None:
    """A rerun into an existing run directory continues that run: another dataset, split or dataset parameters
    are refused (the run's exported files would silently become another data set's), and a smaller ``--first``
    says in one line that the export is a subset and where the rest is."""
    try:
        m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        ds = m["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a new run (or one stopped before its first manifest)
    now = {"name": cfg.dataset, "split": cfg.split, "params": parse_kv(cfg.dataset_opt, "--dataset-opt")}
    for key, flag in (("name", "--dataset"), ("split", "--split"), ("params", "--dataset-opt")):
        if key in ds and ds[key] != now[key]:
            raise ConfigError(f"{flag} {now[key]!r}: the teach run in {out} is of {flag} {ds[key]!r} "
                              f"({out / 'manifest.json'}); a run holds one data set: choose another --out")
    before = ds.get("problems")
    if isinstance(before, int) and n_problems < before:
        which = f"--first {cfg.first}" if cfg.first else "the data set"
        print(f"note: {which}: exporting {n_problems} of the {before} problems this run holds; the "
              f"samples of the other {before - n_problems} stay in {out / 'store.sqlite'} (rerun with --first "
              f"{before} or more to export them again)", file=sys.stderr, flush=True)


def _load_problems(cfg: TeachConfig) -> list[Problem]:
    """The dataset's problems (the first ``--first`` of the split), refused when empty or when an id repeats."""
    problems = list(_make_dataset(cfg).load(cfg.split, limit=cfg.first))
    if not problems:
        raise DataError(f"dataset {cfg.dataset!r} split {cfg.split!r} has no problems")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise DataError(f"dataset {cfg.dataset!r} yields problem id {dup!r} twice")
    return problems


def _samples_to_ask(cfg: TeachConfig, teacher: Any) -> int:
    """``--samples``, capped (with a note) by a teacher that holds fewer outputs per problem (the file teacher)."""
    cap = getattr(teacher, "max_samples", None)
    if isinstance(cap, int) and 0 < cap < cfg.samples:
        src = getattr(teacher, "source", cfg.teacher)
        print(f"note: --samples {cfg.samples}: teacher {cfg.teacher!r} ({src}) holds at most {cap} output"
              f"{'s' if cap > 1 else ''} per problem; asking for {cap}", file=sys.stderr, flush=True)
        return cap
    return cfg.samples


def _pending(store: SampleStore, fp: str, problems: list[Problem], prompts: dict, n_samples: int):
    """The requests for every sample not in the store yet (contiguous index ranges per problem), and how many
    samples the store already holds: a rerun asks only for what is missing."""
    requests: list[TeacherRequest] = []
    already = 0
    for p in problems:
        prompt, pid = prompts[p.id]
        have = {i for i in store.stored_indices(fp, pid, p.id) if i < n_samples}
        already += len(have)
        for first, n in _missing_ranges(have, n_samples):
            requests.append(TeacherRequest(problem=p, prompt=prompt, prompt_id=pid, n=n, first_index=first))
    return requests, already


def _ask(teacher: Any, requests: list[TeacherRequest], consume, stop_event: threading.Event, name: str) -> None:
    """Send the requests; every answer goes to ``consume`` as it arrives (a streaming teacher: request by request;
    else batch by batch)."""
    if not requests:
        return
    if callable(getattr(teacher, "stream", None)):
        for res in teacher.stream(requests, stop_event):
            consume(res.samples, res.request_id)
        return
    bs = max(1, int(getattr(teacher, "batch_size", 16) or 16))
    for b in range(0, len(requests), bs):
        chunk = requests[b:b + bs]
        for req, row in zip(chunk, teacher.generate(chunk)):
            if len(row) != req.n:
                raise LoraspError(f"teacher {name!r} returned {len(row)} samples for a request of {req.n} "
                                  f"(problem {req.problem.id})")
            consume(row, None)


def _teach(cfg: TeachConfig, out: Path, stack, lock_cls) -> TeachResult:
    """One teach run from top to bottom: plan, lock, store, ask (each answer stored as it arrives), manifest.
    ``consume`` shares the store and the counters that the manifest reports.

    Over 80 lines: ``consume`` is a closure over the store, the run id and the counters that the signal handling
    around ``_ask`` and the manifest read afterwards; split apart, they would travel as one mutable bundle."""
    t0 = time.time()
    spec = resolve_prompt(cfg.prompt, cfg.data_dir)
    stop = [_unescape(s) for s in cfg.stop] if cfg.stop else list(spec.stop)
    problems = _load_problems(cfg)
    teacher = _make_teacher(cfg, stop)
    n_samples = _samples_to_ask(cfg, teacher)
    final_missing = bool(getattr(teacher, "missing_is_final", False))
    fp = teacher.fingerprint()
    chat = cfg.api == "chat" and cfg.teacher == "openai"
    prompts: dict[str, tuple[str | list[dict[str, str]], str]] = {}
    for p in problems:
        prompt: str | list[dict[str, str]] = [{"role": "user", "content": spec.render(p)}] if chat else spec.render(p)
        prompts[p.id] = (prompt, prompt_id(prompt))

    # a second process on the same run would pay for every sample again: one process per run directory
    stack.enter_context(lock_cls(out, "teach run"))
    _same_run(out, cfg, len(problems))
    write_jsonl(out / "problems.jsonl", (Problem(p.id, p.question, p.answer, p.rationale,
                                                 {**p.meta, "prompt_id": prompts[p.id][1]}) for p in problems))
    store = SampleStore(out / "store.sqlite")
    run = store.start_run(fp)
    by_id = {p.id: p for p in problems}
    requests, already = _pending(store, fp, problems, prompts, n_samples)

    total = len(problems) * n_samples
    progress = _Progress(total, already, cfg.progress, f"teach {cfg.teacher}")
    stop_event = threading.Event()
    stored_now = failed_now = too_long_now = 0
    unavailable: dict[tuple[str, str, int], str] = {}  # key -> why (a teacher whose missing outputs are final)
    status = "complete"
    fatal: BaseException | None = None
    sent_before = getattr(teacher, "requests_sent", 0)

    def consume(samples: list[Sample], request_id: str | None) -> None:
        nonlocal stored_now, failed_now, too_long_now
        ok = bad = good = 0
        for s in samples:
            s.teacher = fp
            if not s.error and len(s.text or "") > cfg.max_answer_chars:  # dropped (a rerun asks again)
                s.error = (f"answer of {len(s.text):,} characters is over --max-answer-chars "
                           f"{cfg.max_answer_chars:,}; dropped")
                s.text = ""
                too_long_now += 1
            if s.error and final_missing:
                unavailable[(s.prompt_id, s.problem_id, s.sample_index)] = s.error
                continue
            if s.error:
                store.put_failure(s, run)
                bad += 1
                continue
            _check_answer(s, by_id[s.problem_id])
            store.put(s, request_id)
            ok += 1
            good += int(bool(s.correct))
        stored_now += ok
        failed_now += bad
        progress.update(ok, good, bad)

    try:
        with interrupt_on_signals():
            _ask(teacher, requests, consume, stop_event, cfg.teacher)
    except KeyboardInterrupt:
        stop_event.set()
        status = "interrupted"
    except LoraspError:
        stop_event.set()
        status = "failed"
        fatal = sys.exc_info()[1]
    finally:
        progress.close()
        if callable(getattr(teacher, "close", None)):
            teacher.close()
    sent = getattr(teacher, "requests_sent", None)
    this_run = {"requests_sent": None if sent is None else sent - sent_before, "samples_stored": stored_now,
                "failed": failed_now, "too_long": too_long_now, "resumed_from_store": already,
                "wall_time_s": round(time.time() - t0, 3)}
    manifest = _finish(out, cfg, store, run, fp, teacher, spec, stop, problems, prompts, n_samples, this_run,
                       status, unavailable)
    store.close()
    c = manifest["counts"]
    if status == "complete" and c["unavailable"] and not c["received"]:
        raise DataError(f"{getattr(teacher, 'source', cfg.teacher)}: no teacher output for any of the {c['problems']} "
                        f"problems of {cfg.dataset} {cfg.split} (e.g. {next(iter(unavailable.values()))}); check "
                        f"the dataset/split and the field mapping (--teacher-opt question_field=, id_field=)")
    if status == "failed" and fatal is not None:
        raise fatal
    if status == "interrupted":
        raise LoraspError(f"interrupted: {manifest['counts']['received']}/{manifest['counts']['requested']} samples "
                          f"are stored in {out}; rerun the same command to resume", exit_code=130)
    return TeachResult(out, manifest)


def _finish(out: Path, cfg: TeachConfig, store: SampleStore, run: int, fp: str, teacher: Any, spec: PromptSpec,
            stop: list[str], problems: list[Problem], prompts: dict, n_samples: int, this_run: dict,
            status: str, unavailable: dict | None = None) -> dict:
    keys = {(prompts[p.id][1], p.id, i) for p in problems for i in range(n_samples)}
    samples = [s for s in store.samples(fp) if (s.prompt_id, s.problem_id, s.sample_index) in keys]
    got = {(s.prompt_id, s.problem_id, s.sample_index) for s in samples}
    gone = (set(unavailable or {}) & keys) - got  # not in the teacher's source: never asked again, not failed
    failed_keys = (store.failed_keys(fp, run) & keys) - got - gone
    per_problem: dict[str, list[Sample]] = {}
    for s in samples:
        per_problem.setdefault(s.problem_id, []).append(s)
    first_ok = vote_ok = any_ok = 0
    for p in problems:
        ss = sorted(per_problem.get(p.id, []), key=lambda s: s.sample_index)
        if ss and ss[0].sample_index == 0 and ss[0].correct:
            first_ok += 1
        answers = [s.answer for s in ss if s.answer is not None]
        if answers:
            counts = Counter(answers)
            best = max(counts.values())
            winner = next(a for a in answers if counts[a] == best)  # ties: the earliest sample's answer

            vote_ok += int(answers_match(winner, p.answer, kind_for(p)))
        any_ok += int(any(s.correct for s in ss))
    correct = sum(1 for s in samples if s.correct)
    export = samples if cfg.keep == "all" else [s for s in samples if s.correct]
    scores = store.get_meta("scores")  # a scored run (lorasp score) exports its scorer's top-k
    with_top = store.apply_scores(export) if scores else sum(1 for s in samples if s.top_logprobs)
    write_jsonl(out / "samples.jsonl", export)
    if status == "complete" and len(samples) + len(gone) < len(keys):
        status = "incomplete"
    store.end_run(run, requests=this_run["requests_sent"] or 0, stored=this_run["samples_stored"],
                  failed=this_run["failed"], status=status)
    runs = store.runs(fp)
    total_wall = this_run["wall_time_s"] + sum((r["ended"] or r["started"]) - r["started"] for r in runs
                                               if r["id"] != run)
    describe = teacher.describe() if callable(getattr(teacher, "describe", None)) else {}
    n = len(problems)
    errors = store.last_errors(fp, run) if failed_keys else []
    manifest = {
        "format": TEACH_FORMAT,  # the marker: lorasp wrote this run directory (lora_spec.outputs)
        "lorasp_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": status,
        "dataset": {"name": cfg.dataset, "split": cfg.split, "first": cfg.first,
                    "params": parse_kv(cfg.dataset_opt, "--dataset-opt"), "problems": n},
        "teacher": {"name": cfg.teacher, "fingerprint": fp, "params": describe},
        "prompt": {"name": spec.name, "mode": spec.mode, "stop": stop, "api": cfg.api,
                   "template_sha256": hashlib.sha256((spec.prefix + spec.query).encode()).hexdigest()[:16],
                   "example": next(iter(prompts.values()))[0] if n else None},
        "parameters": {"samples": n_samples, "samples_asked": cfg.samples, "temperature": cfg.temperature,
                       "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "top_logprobs": cfg.top_logprobs,
                       "seed": cfg.seed, "keep": cfg.keep},
        "counts": {"problems": n, "requested": len(keys), "received": len(samples), "failed": len(failed_keys),
                   "unavailable": len(gone), "too_long": this_run.get("too_long", 0),
                   "correct": correct, "exported": len(export),
                   "problems_with_correct_sample": any_ok},
        "accuracy": {"first_sample": round(first_ok / n, 4) if n else None,
                     "majority_vote": round(vote_ok / n, 4) if n else None,
                     "any_correct": round(any_ok / n, 4) if n else None,
                     "per_sample": round(correct / len(samples), 4) if samples else None},
        "usage": request_usage(store, fp, keys),
        "with_top_logprobs": with_top,
        "this_run": this_run,
        "wall_time_s": this_run["wall_time_s"],
        "wall_time_total_s": round(total_wall, 3),
        "runs": len(runs),
        "failure_examples": errors,
        "unavailable_example": next((unavailable[k] for k in sorted(gone)), None),
        "files": {"store": "store.sqlite", "problems": "problems.jsonl", "samples": "samples.jsonl"},
    }
    if scores:
        manifest["scores"] = scores
    tmp = out / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / "manifest.json")
    return manifest


# ------------------------------------------------------------------------------------------------- reading


def load_run(path: str | os.PathLike, *, include_incorrect: bool = False) -> tuple[dict[str, Problem], list[Sample]]:
    """A teach run directory -> (problems by id, samples). Correct samples only unless ``include_incorrect``.

    With ``include_incorrect`` the samples come from ``store.sqlite`` (every stored sample of the run's teacher
    and prompts), since ``samples.jsonl`` may hold only the correct ones.
    """
    d = Path(path)
    if not d.is_dir():
        raise DataError(f"{d}: teach run directory not found")
    for name in ("problems.jsonl", "samples.jsonl", "manifest.json"):
        if not (d / name).exists():
            raise DataError(f"{d}: not a teach run directory (no {name}; run 'lorasp teach --out {d}')")
    problems = {p.id: p for p in read_jsonl(d / "problems.jsonl", Problem)}
    try:
        manifest = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{d / 'manifest.json'}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if include_incorrect and manifest.get("parameters", {}).get("keep") != "all" and (d / "store.sqlite").exists():
        fp = manifest.get("teacher", {}).get("fingerprint")
        n = int(manifest.get("parameters", {}).get("samples", 0))
        with SampleStore(d / "store.sqlite") as st:
            samples = [s for s in st.samples(fp) if s.problem_id in problems and s.sample_index < n
                       and s.prompt_id == problems[s.problem_id].meta.get("prompt_id", s.prompt_id)]
    else:
        samples = read_jsonl(d / "samples.jsonl", Sample)
        if not include_incorrect:
            samples = [s for s in samples if s.correct]
    for i, s in enumerate(samples, 1):
        if s.problem_id not in problems:
            raise DataError(f"{d / 'samples.jsonl'}:{i}: problem_id {s.problem_id!r} is not in problems.jsonl")
    return problems, samples


make_callable(__name__, "teach")  # lora_spec.teach(...) calls teach
