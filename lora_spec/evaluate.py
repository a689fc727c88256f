"""``lorasp eval``: its config, plan, journal, writers (results.json, report.md, predictions/) and report, a command
over the evaluation engine (:mod:`lora_spec.eval_engine`: problems, prompts, generation, scoring).
``run_eval()`` returns the output directory, ``eval_result()`` also the results document."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from . import __version__, registry
from ._stage import make_callable
from .adapters.artifact import adapter_digest, load_adapter, read_adapter
from .calibration import device, lookup, record
from .config import RunConfig
from .errors import ConfigError, LoraspError
from .eval_engine import LIMIT_SEED, evaluate_tasks, task_problems
from .eval_journal import JOURNAL_DIR, EvalJournal, discard, journal_rows, task_file_name
from .outputs import RunLock, check_output, interrupt_on_signals
from .precision import PRECISION_HELP, PrecisionName, resolve_precision
from .prompts import DEFAULT_SYSTEM, artifact_prompting, check_mode, uses_chat
from .records import EvalTask, write_jsonl
from .stats import macro, wilson
from .student import load_student

# --------------------------------------------------------------------------------------------- lorasp eval


class EvalConfig(RunConfig):
    """``lorasp eval``: a student (+ optional adapter) on one or more eval suites."""

    model: Optional[str] = Field(None, description="student: preset, local directory or Hub id "
                                                   "(default: the adapter's base, else smollm2-135m)")
    adapter: Optional[str] = Field(None, description="adapter artifact directory to load onto the student")
    ignore_fingerprint: bool = Field(False, description="load an adapter onto a base with another fingerprint")
    quant: Optional[Literal["none", "nf4", "int8"]] = Field(None, description="quantize the student "
                                                            "(default: the adapter's, else none)")
    precision: PrecisionName = Field("auto", description=PRECISION_HELP)
    suite: list[str] = Field(default_factory=lambda: ["math"], description="eval suite (lorasp.evals plugin)")
    task: list[str] = Field(default_factory=list, description="only these tasks of the suites (e.g. gsm8k, "
                                                              "bbh/navigate)")
    mode: Optional[Literal["icl_cot", "zs_cot", "icl_answer", "zs_answer"]] = Field(
        None, description="prompt mode for every task (default: the adapter's main training format from its "
                          "lorasp.json; without an adapter, each suite's own, icl_cot)")
    limit: Optional[int] = Field(None, ge=1, description="a seeded random sample of N problems per task (--seed), "
                                                         "not the first N as in teach/fit: some sets are ordered "
                                                         "by difficulty")
    seed: int = Field(LIMIT_SEED, description="seed of the --limit sample (a fit's held-out set with the same "
                                              "size per dataset and seed has the same problems)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="generation budget (default: 256 for CoT "
                                                                  "modes, 32 for answer-only)")
    batch_size: int = Field(32, ge=1, description="rows in flight (continuous batching; seq2seq: batch size)")
    chat: Optional[bool] = Field(None, description="use the tokenizer's chat template (default: when it has one)")
    data_dir: Optional[str] = Field(None, description="directory in the layout of shared/data "
                                                      "(default: $LORASP_DATA_DIR)")
    out: Optional[str] = Field(None, description="output directory for results.json, report.md, predictions/ "
                                                 "(default: runs/eval/<adapter directory name, else model name>)")
    progress: bool = Field(True, description="show a progress bar on stderr")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (default: torch's choice; 1 is much "
                                                           "faster on an oversubscribed CPU)")
    overwrite: bool = Field(False, description="write over earlier eval results in --out")
    calculator: bool = Field(False, description="write the result of each equation a chain of thought writes "
                                                "('48 / 2 =') exactly instead of letting the model guess it "
                                                "(lora_spec.calculator; CoT modes only; not the paper's setting)")

    def resolved(self) -> "EvalConfig":
        return resolve_eval_defaults(self)[0]


def _suite_tasks(name: str, cfg: EvalConfig) -> list[EvalTask]:
    wanted = {"mode": cfg.mode, "limit": cfg.limit, "max_new_tokens": cfg.max_new_tokens}
    wanted = {k: v for k, v in wanted.items() if v is not None}
    passed = registry.offered_to("evals", name, wanted)  # the rest is set on each task below
    suite = registry.create("evals", name, **passed)
    tasks = list(suite.tasks())
    rest = {k: v for k, v in wanted.items() if k not in passed}
    if rest:
        tasks = [dataclasses.replace(t, **rest) for t in tasks]

    for t in tasks:
        check_mode(t.mode)
    return tasks


def resolve_eval_defaults(cfg: EvalConfig) -> tuple[EvalConfig, list[str]]:
    """Fill the defaults that depend on other fields: with an adapter, the prompt mode and chat template it was
    trained with (its ``lorasp.json``), so its score means what its training meant; the output directory.
    Returns the resolved config and one note per default taken from the adapter (for the user)."""

    upd: dict[str, Any] = {}
    notes: list[str] = []
    if cfg.adapter and Path(cfg.adapter).is_dir():
        pr = artifact_prompting(read_adapter(cfg.adapter))
        if cfg.mode is None and pr["mode"]:
            upd["mode"] = pr["mode"]
            notes.append(f"mode {pr['mode']} for every task: the adapter's main training format (--mode to change)")
        if cfg.chat is None and pr["chat"] is not None:
            upd["chat"] = pr["chat"]
    if not cfg.out:
        name = Path(cfg.adapter).resolve().name if cfg.adapter else (cfg.model or "smollm2-135m")
        upd["out"] = str(Path("runs") / "eval" / task_file_name(name.strip("/").replace("/", "_")))
    return (cfg.model_copy(update=upd) if upd else cfg), notes


def _plan_suites(cfg: EvalConfig) -> dict[str, list[EvalTask]]:
    """The tasks of every suite, filtered by ``--task``; everything that can fail fast does so here, before a
    model is loaded (unknown suite or task, missing data files)."""

    if not cfg.suite:
        raise ConfigError("--suite: at least one eval suite is required (e.g. math, bbh, arith)")

    # before any work: never into a file, a foreign directory or an input, nor over earlier results unasked
    check_output(cfg.out, "eval", overwrite=cfg.overwrite, inputs=[("--adapter", cfg.adapter),
                                                                  ("--model", cfg.model)])
    data_dir = cfg.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"--data-dir: {data_dir} is not a directory")
    suites: dict[str, list[EvalTask]] = {}
    for s in dict.fromkeys(cfg.suite):
        suites[s] = _suite_tasks(s, cfg)
    if cfg.task:
        names = {t.name for ts in suites.values() for t in ts}
        unknown = [t for t in cfg.task if t not in names]
        if unknown:
            raise ConfigError(f"--task: {unknown[0]!r} is not a task of suite(s) {', '.join(suites)} "
                              f"(tasks: {', '.join(sorted(names))})")
        suites = {s: [t for t in ts if t.name in cfg.task] for s, ts in suites.items()}
        suites = {s: ts for s, ts in suites.items() if ts}
    all_tasks = [t for ts in suites.values() for t in ts]
    dup = {t.name for t in all_tasks if sum(u.name == t.name for u in all_tasks) > 1}
    if dup:
        raise ConfigError(f"--suite: task {sorted(dup)[0]!r} appears in two suites; evaluate them separately")
    for t in all_tasks:
        task_problems(dataclasses.replace(t, limit=1), data_dir)  # files exist and parse (first record)
    return suites


def eval_plan(cfg: EvalConfig) -> dict[str, Any]:
    """What ``run_eval(cfg)`` would do, without loading a model (``lorasp eval --dry-run``): per task its mode,
    problems and generation budget; the output directory; the defaults taken from the adapter."""

    if cfg.adapter and not Path(cfg.adapter).is_dir():
        raise ConfigError(f"--adapter: {cfg.adapter} is not a directory")
    cfg, notes = resolve_eval_defaults(cfg)
    tasks = []
    for s, ts in _plan_suites(cfg).items():
        for t in ts:
            tasks.append({"suite": s, "task": t.name, "mode": t.mode, "problems": len(task_problems(t, cfg.data_dir)),
                          "max_new_tokens": t.max_new_tokens})

    kept = journal_rows(cfg.out)
    if kept and not cfg.overwrite:
        notes.append(f"continues the interrupted eval in {cfg.out}: {sum(kept.values())} predictions of "
                     f"{len(kept)} task(s) kept, if the model and settings are the same (--overwrite starts over)")

    model, quant = _model_and_quant(cfg)

    precision = resolve_precision(cfg.precision)
    cal = lookup(_calibration_key(model, quant, precision.name))
    left = {} if cfg.overwrite else kept  # a continued eval generates only what its journal lacks
    budget = sum(max(0, t["problems"] - left.get(task_file_name(t["task"]), 0)) * t["max_new_tokens"] for t in tasks)
    est = None
    if cal and isinstance(cal.get("tokens_per_second"), (int, float)) and cal["tokens_per_second"] > 0:
        est = {"max_seconds": round(budget / cal["tokens_per_second"], 1), "tokens_per_second":
               cal["tokens_per_second"], "measured": cal.get("measured"), "source": cal["source"]}
    return {"model": model, "adapter": cfg.adapter, "tasks": tasks, "problems": sum(t["problems"] for t in tasks),
            "max_new_tokens": budget, "estimate": est, "out": cfg.out, "notes": notes,
            "precision": precision.line()}


def _model_and_quant(cfg: EvalConfig) -> tuple[str, str]:
    """The model (by name) and quantization an eval runs: --model/--quant, else the adapter's recorded base and
    quant, else smollm2-135m unquantized."""
    m: dict = {}
    if cfg.adapter:
        m = read_adapter(cfg.adapter) or {}
    return (cfg.model or (m.get("base") or {}).get("name") or "smollm2-135m",
            cfg.quant or m.get("quant") or "none")


def _calibration_key(model: str, quant: str, precision: str) -> str:
    return f"eval|{model}|{quant}|{device()}|{precision}"


def _precision_record(cfg: EvalConfig, student) -> dict:
    """results.json's precision: what was asked for, what the weights computed in, and why."""

    p = resolve_precision(cfg.precision)
    return {**p.record(), "used": student.precision}


@dataclasses.dataclass
class EvalResult:
    """What an eval wrote: its output directory and the results.json document (what ``lorasp eval`` prints)."""

    out: "os.PathLike"
    doc: dict[str, Any]


def run_eval(cfg: EvalConfig) -> "os.PathLike":
    """Evaluate a student (+ adapter) on the configured suites; write results.json, report.md, predictions/ and
    return the output directory (:func:`eval_result` also returns the results document)."""
    return eval_result(cfg).out


def eval_result(cfg: EvalConfig) -> EvalResult:
    """:func:`run_eval`, returning the output directory and the results.json document it wrote. The steps in the
    order they run: defaults, plan, load, score (each prediction kept in the eval journal as it finishes, so a
    rerun after a crash continues), then the predictions and the results document."""

    if cfg.adapter and not Path(cfg.adapter).is_dir():
        raise ConfigError(f"--adapter: {cfg.adapter} is not a directory")
    cfg, notes = resolve_eval_defaults(cfg)
    for note in notes:
        print(f"eval: {note}", file=sys.stderr, flush=True)
    suites = _plan_suites(cfg)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)

    out = Path(cfg.out)
    with RunLock(out, "eval output directory"):
        if cfg.overwrite:
            discard(out)  # start over: an interrupted eval's predictions are not reused
        all_tasks = [t for ts in suites.values() for t in ts]
        for t in all_tasks:  # a journal of another mode or budget is refused before the model loads
            EvalJournal(out, {}).kept(t.name, t.mode, t.max_new_tokens)
        student, adapter_info = _load_eval_model(cfg)
        used = _precision_record(cfg, student)
        print(f"eval: precision {used['used']} ({used['reason']})", file=sys.stderr, flush=True)
        journal = EvalJournal(out, _journal_identity(cfg, student, adapter_info))
        for t in all_tasks:  # ... and one of another model, adapter or prompting before any generation
            journal.kept(t.name, t.mode, t.max_new_tokens)
        t0 = time.perf_counter()
        try:
            with interrupt_on_signals():  # Ctrl-C, SIGTERM: stop, keeping every finished prediction
                results = evaluate_tasks(student.model, student.tokenizer, all_tasks, kind=student.kind,
                                         batch_size=cfg.batch_size, data_dir=cfg.data_dir, progress=cfg.progress,
                                         chat=cfg.chat, seed=cfg.seed, journal=journal,
                                         calculator=cfg.calculator)
        except KeyboardInterrupt:
            journal.close()
            kept = sum(journal_rows(out).values())
            # --overwrite would discard the journal again: the continuation is the command without it
            how = ("rerun the command without --overwrite to continue (with it, the eval starts over)"
                   if cfg.overwrite else "rerun the same command to continue")
            raise LoraspError(f"interrupted: {kept} prediction{'s' if kept != 1 else ''} kept in {out / JOURNAL_DIR}; "
                              f"{how}", exit_code=130) from None
        finally:
            journal.close()
        wall = time.perf_counter() - t0
        doc = _write_results(cfg, out, student, adapter_info, notes, suites, results, wall)
        journal.remove()  # complete: results.json and predictions/ hold everything
    return EvalResult(out, doc)


def _journal_identity(cfg: EvalConfig, student, adapter_info: dict | None) -> dict:
    """What the predictions of an eval depend on besides the prompt text and the generation budget (both checked
    per task): a cut eval is continued only under the same identity."""

    ident = {"model": (student.fingerprint or {}).get("id"), "quant": student.quant, "kind": student.kind,
             "adapter": (adapter_info or {}).get("digest"),
             "chat": uses_chat(student.tokenizer, cfg.chat) if student.kind == "causal" else False,
             "calculator": cfg.calculator}
    if student.precision != "fp32":  # greedy answers can change with the precision (fp32 journals keep matching)
        ident["precision"] = student.precision
    return ident


def _write_results(cfg: EvalConfig, out, student, adapter_info: dict | None, notes: list[str],
                   suites: dict[str, list], results: dict[str, dict], wall: float) -> dict:
    """predictions/, results.json (atomically) and report.md; records the measured tokens/s for --dry-run."""

    gen = sum(r["generated_tokens"] for r in results.values())
    if gen and wall > 0:  # for --dry-run estimates (lora_spec.calibration)
        record(_calibration_key(*_model_and_quant(cfg), student.precision), tokens_per_second=round(gen / wall, 1),
               batch_size=cfg.batch_size)
    tasks_json = _write_predictions(out, results)
    doc = _results_doc(cfg, student, adapter_info, notes, wall, _suite_summary(suites, tasks_json), tasks_json)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    os.replace(tmp, out / "results.json")
    (out / "report.md").write_text(render_report(doc))
    return doc


def _load_eval_model(cfg: EvalConfig):
    """The model to evaluate (``--adapter`` on its base, else ``--model``) and the adapter's identity, or None."""

    dtype = resolve_precision(cfg.precision).dtype
    if not cfg.adapter:
        return load_student(cfg.model or "smollm2-135m", cfg.quant or "none", dtype=dtype), None

    student = load_adapter(cfg.adapter, cfg.model, quant=cfg.quant, ignore_fingerprint=cfg.ignore_fingerprint,
                           dtype=dtype)
    manifest = read_adapter(cfg.adapter) or {}
    return student, {"path": str(Path(cfg.adapter).resolve()), "digest": adapter_digest(cfg.adapter),
                     "kind": manifest.get("kind"), "method": manifest.get("method"),
                     "base_fingerprint": (manifest.get("base") or {}).get("fingerprint")}


def _write_predictions(out, results: dict[str, dict]) -> dict[str, dict]:
    """Every prediction to ``predictions/<task>.jsonl``; returns the per-task rows of results.json."""
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    # an --overwrite of other tasks: the earlier run's prediction files go, so predictions/ matches results.json
    keep = {task_file_name(name) for name in results}
    try:  # only files the earlier results.json names: a file of the user's in predictions/ is never removed
        earlier = {Path(str(t.get("predictions_file", ""))).stem for t in
                   json.loads((out / "results.json").read_text(encoding="utf-8")).get("tasks", {}).values()}
    except (OSError, ValueError, AttributeError):
        earlier = set()
    for old in (out / "predictions").glob("*.jsonl"):
        if old.stem not in keep and old.stem in earlier:
            old.unlink()
    tasks_json: dict[str, dict] = {}
    for name, r in results.items():
        pf = f"predictions/{task_file_name(name)}.jsonl"
        write_jsonl(out / pf, r["predictions"])
        row = {k: v for k, v in r.items() if k != "predictions"}
        row["tokens_per_s"] = r["generated_tokens"] / r["seconds"] if r["seconds"] else None
        row["predictions_file"] = pf
        tasks_json[name] = row
    return tasks_json


def _suite_summary(suites: dict[str, list], tasks_json: dict[str, dict]) -> dict[str, dict]:
    """Per suite: macro and micro accuracy with their 95% intervals, and the flexible macro accuracy."""

    summary = {}
    for s, ts in suites.items():
        rows = [tasks_json[t.name] for t in ts]
        n = sum(r["n"] for r in rows)
        k = sum(r["correct"] for r in rows)
        _m, mlo, mhi = macro([r["correct"] for r in rows], [r["n"] for r in rows]) if rows else (0.0, 0.0, 1.0)
        summary[s] = {"tasks": [t.name for t in ts], "n": n,
                      "macro_accuracy": sum(r["accuracy"] for r in rows) / len(rows) if rows else 0.0,
                      "macro_ci": [mlo, mhi],
                      "micro_accuracy": k / n if n else 0.0, "micro_ci": list(wilson(k, n)),
                      "flexible_macro_accuracy":
                          sum(r["flexible_accuracy"] for r in rows) / len(rows) if rows else 0.0}
    return summary


def _results_doc(cfg: EvalConfig, student, adapter_info: dict | None, notes: list[str], wall: float,
                 summary: dict, tasks_json: dict) -> dict:
    """results.json: what was evaluated (model, adapter, prompting, scoring, sampling), and the scores."""

    chat_used = uses_chat(student.tokenizer, cfg.chat) if student.kind == "causal" else False
    return {
        "lorasp_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["lorasp"] + sys.argv[1:]) if sys.argv and "lorasp" in sys.argv[0] else None,
        "model": {"name": student.name, "path": student.path, "kind": student.kind, "quant": student.quant,
                  "fingerprint": student.fingerprint, "precision": _precision_record(cfg, student)},
        "adapter": adapter_info,
        "prompting": {"chat_template": chat_used, "system": DEFAULT_SYSTEM if chat_used else None,
                      "greedy": True, "mode": cfg.mode or "suite default", "calculator": cfg.calculator,
                      "mode_from": "adapter" if notes and cfg.mode else ("--mode" if cfg.mode else "suite")},
        "scoring": {"accuracy": "strict: the answer stated in an answer sentence ('The answer is X')",
                    "flexible_accuracy": "flexible: else the last number (option, word) of the output"},
        "limit": cfg.limit, "limit_seed": cfg.seed,
        "intervals": INTERVALS,
        "config": cfg.model_dump(mode="json"),
        "wall_seconds": wall,
        "suites": summary,
        "tasks": tasks_json,
    }


INTERVALS = ("95% intervals: Wilson score interval per task and for micro averages; macro averages: the pooled "
             "Wilson interval when the tasks have equal n, else the MOVER combination of the per-task Wilson "
             "intervals (lora_spec.stats)")


def ci_text(ci: Any) -> str:
    """``[3.4, 13.7]`` from a [lo, hi] of fractions (results.json written before intervals: ``–``)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return "–"
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def render_report(doc: dict) -> str:
    """A short markdown report of a results.json document."""
    m, a = doc["model"], doc.get("adapter")
    lines = [f"# lorasp eval: {m['name']}" + (f" + adapter {a['path']}" if a else ""), "",
             f"- model: `{m['name']}` ({m['kind']}, quant {m['quant']}), fingerprint `{m['fingerprint'].get('id')}`",
             f"- adapter: `{a['path']}` (digest `{a['digest']}`)" if a else "- adapter: none",
             f"- prompting: {'chat template' if doc['prompting']['chat_template'] else 'plain text'}, greedy"
             + (f"; limit {doc['limit']} per task (seeded sample, seed {doc['limit_seed']})" if doc["limit"] else ""),
             *([f"- calculator: on (`--calculator`: the result of each equation in a chain of thought is written "
                f"exactly, not by the model; {sum(t.get('calculator_calls', 0) for t in doc['tasks'].values())} "
                f"results written; not the paper's setting)"] if doc["prompting"].get("calculator") else []),
             f"- wall time: {doc['wall_seconds']:.1f}s; created {doc['created']}", ""]
    for s, summ in doc["suites"].items():
        flex = summ.get("flexible_macro_accuracy")
        lines += [f"## {s}: macro accuracy {summ['macro_accuracy']:.1%} {ci_text(summ.get('macro_ci'))} "
                  f"({summ['n']} problems; micro {summ['micro_accuracy']:.1%} {ci_text(summ.get('micro_ci'))})"
                  + (f"; flexible {flex:.1%}" if flex is not None else ""), "",
                  "| task | mode | n | correct | accuracy (strict) | 95% CI | flexible | tokens/s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        budget, arith = [], []
        for t in summ["tasks"]:
            r = doc["tasks"][t]
            tps = f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else "-"
            fa = f"{r['flexible_accuracy']:.1%}" if r.get("flexible_accuracy") is not None else "-"
            lines.append(f"| {t} | {r['mode']} | {r['n']} | {r['correct']} | {r['accuracy']:.1%} | "
                         f"{ci_text(r.get('ci'))} | {fa} | {tps} |")
            if r.get("at_budget"):
                budget.append(f"{t} {r['at_budget']} of {r['n']}")
            eq = r.get("equations") or {}
            if eq.get("checked"):
                arith.append(f"{t} {eq['wrong']} of {eq['checked']} ({eq['wrong'] / eq['checked']:.0%})")
        lines.append("")
        if budget:
            lines += ["Outputs that used the whole token budget (cut short or looping; `tokens` and `at_budget` in "
                      "the predictions): " + ", ".join(budget) + ".", ""]
        if arith:
            lines += ["Equations in the chains of thought (`a op b = c`, plain arithmetic) that state a wrong result "
                      "(many: the model computes wrongly, whatever its reasoning): " + ", ".join(arith) + ".", ""]
    lines.append(doc.get("intervals") or INTERVALS)
    lines.append("")
    lines.append("Accuracy is strict: an answer counts only when the output states it in an answer sentence "
                 "(\"The answer is X\", lm-eval's strict-match). Flexible also takes the last number (option, word) "
                 "of an output that never states one (flexible-extract), which can credit a lucky number.")
    lines.append("")
    lines.append("Every prediction (output, extracted answer, gold, correct; strict and flexible) is in "
                 "`predictions/<task>.jsonl`.")
    return "\n".join(lines) + "\n"


make_callable(__name__, "run_eval")  # lora_spec.evaluate(...) calls run_eval
