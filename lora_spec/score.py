"""``lorasp score``: a teacher's top-k log-probabilities at every token of text it did not write.

Distribution matching needs the teacher's token distribution along each training text. A teach run whose teacher
sampled with ``--top-logprobs`` has it; a run of the ``file`` or ``gold`` teacher, or of a server that returns no
log-probabilities, does not. ``score(run, cfg)`` asks a scorer (the ``hf`` teacher: a local transformers model;
the ``openai`` teacher: a served model that echoes prompt log-probabilities, such as vLLM or llama-cpp-python) for
its top-k at every token of every kept sample, given the sample's prompt (teacher forcing).

The scores go into the run's ``store.sqlite`` (table ``scores``) the moment each arrives, under the rules of a teach
run: one process per run (the run lock), Ctrl-C or ``kill -9`` lose nothing stored, and a rerun asks only for the
samples not scored yet. Then ``samples.jsonl`` is exported again with the scorer's tokens and top-k in place of the
sampling teacher's (those stay in the store), and ``manifest.json`` gains a ``scores`` section (scorer, k, how many
samples carry scores). ``fit --loss distribution|mix:A`` then trains on the run as on a sampled one, through the
same tokenizer alignment when the scorer's vocabulary is not the student's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from . import registry
from .config import RunConfig, describe_error, parse_kv
from .errors import ConfigError, DataError, LoraspError
from .outputs import TEACH_FORMAT, RunLock, interrupt_on_signals
from .progress import Progress
from .records import Problem, Sample, read_jsonl, write_jsonl
from .store import SampleStore, text_sha256
from .teach import PromptSpec, load_run, prompt_id, resolve_prompt
from .teacher_forcing import ScoreRequest


class ScoreConfig(RunConfig):
    """``lorasp score``: a scorer's top-k log-probabilities at every token of a teach run's kept samples."""

    teacher: str = Field("hf", description="Scorer: the hf or openai teacher (or a third-party teacher with a "
                                           "score method).")
    model: str | None = Field(None, description="Scorer model: preset/dir/id (hf) or served model name (openai).")
    top_logprobs: int = Field(5, ge=1, le=20, description="k: the scorer's k most likely tokens kept per position.")
    prompt: str | None = Field(None, description="Prompt the text is scored after (default: the teach run's own "
                                                 "prompt); same names as lorasp teach --prompt.")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible server base URL (openai).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the API key (openai).")
    concurrency: int = Field(8, ge=1, le=512, description="Requests in flight (openai).")
    timeout: float = Field(600.0, gt=0, description="Seconds for one answer, a total deadline per attempt (openai).")
    max_retries: int = Field(6, ge=0, le=50, description="Retries on 429/5xx/timeouts (openai).")
    teacher_opt: list[str] = Field(default_factory=list, description="Scorer parameter KEY=VALUE (hf: batch_size=, "
                                   "precision=, device=; openai: score_api=echo|prompt_logprobs, extra_body=).")
    data_dir: str | None = Field(None, description="Data directory for the prompt's exemplars (default: "
                                                   "$LORASP_DATA_DIR).")
    progress: bool = Field(True, description="Show a progress bar on a terminal.")


def _manifest(run: Path) -> dict[str, Any]:
    path = run / "manifest.json"
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{run}: not a teach run directory (no manifest.json; run 'lorasp teach --out {run}')") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    if not isinstance(m, dict) or m.get("format") != TEACH_FORMAT:
        raise DataError(f"{path}: not a lorasp teach run (format {m.get('format') if isinstance(m, dict) else m!r}, "
                        f"expected {TEACH_FORMAT!r})")
    if not (run / "store.sqlite").exists():
        raise DataError(f"{run}: the teach run has no store.sqlite (its sample store); scores are kept there")
    return m


def _score_prompt(cfg: ScoreConfig, manifest: dict) -> PromptSpec:
    name = cfg.prompt or (manifest.get("prompt") or {}).get("name")
    if not name:
        raise DataError("the teach run's manifest names no prompt; pass --prompt")
    return resolve_prompt(name, cfg.data_dir)


def _requests(cfg: ScoreConfig, manifest: dict, spec: PromptSpec, problems: dict[str, Problem],
              samples: list[Sample]) -> list[ScoreRequest]:
    """One request per kept sample: the prompt it is scored after (the run's own, checked to be the prompt the
    sample was asked with, or ``--prompt``) and its text."""
    chat = (manifest.get("prompt") or {}).get("api") == "chat"
    out = []
    for s in samples:
        p = problems[s.problem_id]
        text = spec.render(p)
        if cfg.prompt is None:
            asked = prompt_id([{"role": "user", "content": text}] if chat else text)
            if asked != p.meta.get("prompt_id", asked):
                raise DataError(f"problem {p.id}: the run's prompt {spec.name!r} no longer renders the prompt its "
                                f"samples were asked with (its exemplar file changed?); pass --prompt")
        out.append(ScoreRequest((s.teacher, s.prompt_id, s.problem_id, s.sample_index), text, s.text))
    return out


def _make_scorer(cfg: ScoreConfig) -> Any:
    offered = {"model": cfg.model, "base_url": cfg.base_url, "api_key_env": cfg.api_key_env,
               "concurrency": cfg.concurrency, "timeout": cfg.timeout, "max_retries": cfg.max_retries}
    scorer = registry.create("teachers", cfg.teacher, offered=offered, **parse_kv(cfg.teacher_opt, "--teacher-opt"))
    if not (callable(getattr(scorer, "score", None)) and callable(getattr(scorer, "score_fingerprint", None))):
        if callable(getattr(scorer, "close", None)):
            scorer.close()
        raise ConfigError(f"--teacher {cfg.teacher}: this teacher cannot score text it did not write (it has no "
                          f"score method); scorers: hf (a local model), openai (a served model)")
    return scorer


def scorer_key(scorer: Any, k: int, spec: PromptSpec) -> str:
    """The scores' key in the store: the scorer's own fingerprint and the prompt the text is scored after."""
    tpl = hashlib.sha256((spec.prefix + spec.query).encode()).hexdigest()[:8]
    return f"{scorer.score_fingerprint(k)}/prompt-{tpl}"


def score_plan(run: str | os.PathLike, cfg: ScoreConfig) -> dict[str, Any]:
    """What ``score`` would do, without loading or asking the scorer (``lorasp score --dry-run``)."""
    d = Path(run)
    manifest = _manifest(d)
    spec = _score_prompt(cfg, manifest)
    registry.resolve("teachers", cfg.teacher)  # an unknown scorer fails here
    _problems, samples = load_run(d)
    scored = (manifest.get("scores") or {})
    return {"run": str(d), "samples": len(samples), "teacher": cfg.teacher, "model": cfg.model,
            "top_logprobs": cfg.top_logprobs, "prompt": spec.name,
            "scored_before": scored.get("scored", 0) if scored.get("model") == cfg.model else 0}


def score(run: str | os.PathLike, cfg: ScoreConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Score a teach run's kept samples (or continue scoring them); returns the manifest's ``scores`` section."""
    try:
        cfg = ScoreConfig(**{**(cfg.model_dump() if cfg is not None else {}), **overrides})
    except ValidationError as exc:  # -> one line naming the field
        raise ConfigError("score " + describe_error(exc.errors()[0], {})) from None
    d = Path(run)
    manifest = _manifest(d)
    spec = _score_prompt(cfg, manifest)
    problems, samples = load_run(d)
    if not samples:
        raise DataError(f"{d}: the teach run has no kept samples to score (samples.jsonl is empty)")
    requests = _requests(cfg, manifest, spec, problems, samples)
    with contextlib.ExitStack() as stack:
        # one process per run: teach and score both write its store and its exported files
        stack.enter_context(RunLock(d, "teach run"))
        scorer = _make_scorer(cfg)
        stack.callback(lambda: scorer.close() if callable(getattr(scorer, "close", None)) else None)
        key = scorer_key(scorer, cfg.top_logprobs, spec)
        store = stack.enter_context(SampleStore(d / "store.sqlite"))
        return _score_run(d, cfg, spec, scorer, key, store, requests)


def _score_run(d: Path, cfg: ScoreConfig, spec: PromptSpec, scorer: Any, key: str, store: SampleStore,
           requests: list[ScoreRequest]) -> dict[str, Any]:
    """Ask for the samples not scored yet, store each answer as it arrives, then export and write the manifest."""

    t0 = time.time()
    have = store.score_index(key)
    todo = [r for r in requests if r.key not in have or have[r.key][0] != text_sha256(r.text)]
    run_id = store.start_run(f"score:{key}")
    progress = Progress(f"score {cfg.teacher}", len(requests), completed=len(requests) - len(todo),
                        enabled=cfg.progress, columns=("samples/s", "failed"))
    stop = threading.Event()
    counts = {"scored": 0, "failed": 0}
    status, fatal = "complete", None
    sent_before = getattr(scorer, "requests_sent", 0)
    texts = {r.key: r.text for r in todo}
    try:
        with interrupt_on_signals():
            for res in (scorer.score(todo, cfg.top_logprobs, stop) if todo else ()):
                if res.error:
                    store.put_score_failure(key, res.key, res.error, run_id)
                    counts["failed"] += 1
                else:
                    store.put_score(key, res.key, texts[res.key], res.tokens or [], res.top_logprobs or [],
                                    res.usage, res.request_id)
                    counts["scored"] += 1
                el = max(time.time() - t0, 1e-6)
                progress.update(advance=1, failed=str(counts["failed"]),
                                **{"samples/s": f"{(counts['scored'] + counts['failed']) / el:.2f}"})
    except KeyboardInterrupt:
        stop.set()
        status = "interrupted"
    except LoraspError:
        stop.set()
        status, fatal = "failed", sys.exc_info()[1]
    finally:
        progress.close()
    sent = getattr(scorer, "requests_sent", None)
    this_run = {"requests_sent": None if sent is None else sent - sent_before, "scored": counts["scored"],
                "failed": counts["failed"], "resumed_from_store": len(requests) - len(todo),
                "wall_time_s": round(time.time() - t0, 3)}
    section = _finish(d, cfg, spec, scorer, key, store, requests, run_id, status, this_run)
    if fatal is not None:
        raise fatal
    if status == "interrupted":
        raise LoraspError(f"interrupted: {section['scored']}/{section['samples']} samples are scored in "
                          f"{d / 'store.sqlite'}; rerun the same command to resume", exit_code=130)
    return section


def _finish(d: Path, cfg: ScoreConfig, spec: PromptSpec, scorer: Any, key: str, store: SampleStore,
            requests: list[ScoreRequest], run_id: int, status: str, this_run: dict) -> dict[str, Any]:
    """Export samples.jsonl with the scores, and record the ``scores`` section in manifest.json and the store."""
    have = store.score_index(key)
    ok = {r.key for r in requests if r.key in have and have[r.key][0] == text_sha256(r.text)}
    failures = store.score_failures(key, run_id)
    failed = {k: e for k, e in failures.items() if k not in ok}
    if status == "complete" and len(ok) < len(requests):
        status = "incomplete"
    store.end_run(run_id, requests=this_run["requests_sent"] or 0, stored=this_run["scored"],
                  failed=this_run["failed"], status=status)
    runs = store.runs(f"score:{key}")
    usage: dict[str, int] = {}
    for k in ok:
        for name, v in have[k][2].items():
            if isinstance(v, int):
                usage[name] = usage.get(name, 0) + v
    describe = scorer.describe() if callable(getattr(scorer, "describe", None)) else {}
    section = {
        "status": status, "scorer": cfg.teacher, "model": cfg.model, "fingerprint": key,
        "params": {k: v for k, v in describe.items() if k not in ("temperature", "top_p", "max_tokens", "stop",
                                                                    "seed", "top_logprobs")},
        "top_logprobs": cfg.top_logprobs, "prompt": spec.name, "samples": len(requests), "scored": len(ok),
        "failed": len(failed), "tokens_scored": sum(have[k][1] for k in ok), "usage": usage,
        "failure_examples": sorted(set(failed.values()))[:3], "this_run": this_run,
        "wall_time_total_s": round(sum((r["ended"] or r["started"]) - r["started"] for r in runs), 3),
        "runs": len(runs),
    }
    store.set_meta("scores", section)
    export = read_jsonl(d / "samples.jsonl", Sample)
    n_top = store.apply_scores(export)
    write_jsonl(d / "samples.jsonl", export)
    m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    m["scores"] = section
    m["with_top_logprobs"] = n_top
    tmp = d / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(m, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, d / "manifest.json")
    return section
