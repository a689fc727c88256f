"""``fit``: specialize a student on teacher CoT with the four-format mixture (LoRA / DoRA / full, on nf4/int8/none).

``fit(cfg)`` is both ``lorasp fit`` and the Python API. The steps:

1. data: a teach run directory (``--data runs/teach/X``), or a dataset + teacher run in-process
   (``--dataset arith --teacher gold``; the teach run is written under ``<out>.teach``);
2. formats: the correct samples become training rows of the four formats (``lora_spec.formats``);
3. student: loaded (``lora_spec.student``), quantized, made trainable (``lora_spec.adapters.peft_setup``);
4. training: ``lora_spec.trainer.train`` (checkpoints in ``<out>.checkpoints``, resumable with ``--resume``);
5. artifact: the chosen checkpoint as a PEFT adapter (or a full model) + ``lorasp.json`` + model card at ``--out``.

With no data source at all (``lorasp fit`` alone) this is the embedded default: SmolLM2-135M-Instruct on
:data:`QUICKSTART_PROBLEMS` synthetic ``arith`` problems with the ``gold`` teacher, with before/after accuracy on
held-out ``arith`` test problems.

Layout: ``_fit`` calls the stages in order (``_start``, ``_load_data``, ``_student_and_rows``, ``_score_before``,
``_make_trainable``, ``_held_out_evaluation``, ``_train``, ``_manifest``, ``_write_artifact``); below them is how a fit
uses ``lora_spec.selection`` (when it evaluates, which rule applies, the manifest's ``selection`` block). The config
is ``lora_spec.fit_config``, the dry run ``lora_spec.fit_plan``, the before/after scores ``lora_spec.before_after``.
This module is a little over 500 lines because it is the one place where data, student, trainer, selection and
artifact meet; each stage is a short function.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from . import formats as F
from ._stage import make_callable
from .adapters.artifact import save_adapter, save_full, versions
from .adapters.peft_setup import MethodSpec, apply_method, count_params, parse_targets
from .artifact_files import read_manifest
from .batching import total_steps
from .before_after import before_after_tasks, fmt_scores, paired_before_after, score_tasks, strip_predictions
from .checkpoints import previous_checkpoints_kept, set_aside_previous
from .config import parse_kv
from .errors import ConfigError, DataError, LoraspError, one_line
from .fit_config import QUICKSTART_PROBLEMS, FitConfig, is_quickstart, resolve_defaults, resolve_eval_every
from .formats import items_from_run
from .losses import LossSpec
from .outputs import RunLock, check_output
from .precision import resolve_precision
from .prompts import DEFAULT_SYSTEM, main_mode, uses_chat
from .selection import ALPHA, SETS, as_rule
from .stats import fmt_acc, fmt_paired
from .student import hub_id, learned_positions, load_student
from .trainer import TrainArgs, dist_state, train


@dataclass
class FitResult:
    out: Path
    manifest: dict
    model: Any = None
    tokenizer: Any = None
    kind: str = "causal"
    before: dict | None = None
    after: dict | None = None
    history: list[dict] = field(default_factory=list)


def _load_items(cfg: FitConfig, out: Path, log: Callable[[str], None]):
    from .teach import load_run, teach

    if cfg.data:
        run_dir = Path(cfg.data)
        problems, samples = load_run(run_dir)
        source = {"kind": "teach_run", "path": str(run_dir)}
        try:
            m = json.loads((run_dir / "manifest.json").read_text())
            source["dataset"] = m.get("dataset") if isinstance(m.get("dataset"), str) else \
                (m.get("dataset") or {}).get("name")
            source["teacher"] = (m.get("teacher") or {}).get("name") if isinstance(m.get("teacher"), dict) \
                else m.get("teacher")
        except (OSError, json.JSONDecodeError):
            pass
    else:
        run_dir = out.with_name(out.name + ".teach")
        log(f"teaching: dataset {cfg.dataset} ({cfg.split}"
            f"{f', first {cfg.first}' if cfg.first else ''}) with teacher {cfg.teacher} -> {run_dir}")
        teach(dataset=cfg.dataset, split=cfg.split, first=cfg.first, dataset_opt=list(cfg.dataset_opt),
              data_dir=cfg.data_dir, teacher=cfg.teacher, teacher_opt=list(cfg.teacher_opt), samples=cfg.samples,
              out=str(run_dir), progress=False)
        problems, samples = load_run(run_dir)
        source = {"kind": "dataset", "dataset": cfg.dataset, "split": cfg.split, "teacher": cfg.teacher,
                  "teach_run": str(run_dir), "dataset_opt": list(cfg.dataset_opt)}
    items = items_from_run(problems, samples, first=cfg.first if cfg.data else None)  # --dataset: teach took them
    if not items:
        raise DataError(f"{run_dir}: no correct teacher samples to train on")
    return items, source


def fit(cfg: FitConfig | None = None, *, evaluator: Callable | None = None, log: Callable[[str], None] | None = None,
        **overrides: Any) -> FitResult:
    """Run (or resume) a fit; returns the artifact directory, its manifest and the trained model.

    Before anything is loaded, ``--out`` (and its ``.checkpoints`` / ``.teach`` siblings) are checked against the
    output policy (``lora_spec.outputs``), and the checkpoint directory is locked for this process.
    """

    cfg = _make_cfg(cfg, overrides)
    quickstart = is_quickstart(cfg)  # (before the defaults fill in its dataset)
    res = resolve_defaults(cfg)
    parsed = _cheap_checks(res)  # a bad flag is reported before any file is written or torch is imported
    inputs = [("--data", res.data), ("--student", res.student)]
    out = check_output(res.out, "fit", overwrite=res.overwrite, inputs=inputs)
    ckpt_dir = out.with_name(out.name + ".checkpoints")
    check_output(ckpt_dir, "checkpoints", flag="--out (its checkpoint directory)", inputs=inputs)
    if not res.data:
        check_output(out.with_name(out.name + ".teach"), "teach", flag="--out (its teach run directory)",
                     inputs=inputs)
    if Path(res.out).name in ("", ".", "..") or Path(res.out).is_symlink():  # a symlink: its target
        res = res.model_copy(update={"out": str(out)})
    if int(os.environ.get("RANK", "0") or 0) != 0:  # DDP: the main process holds the lock
        return _fit(res, quickstart, *parsed, evaluator=evaluator, log=log)

    # an earlier fit's checkpoints are removed only once this one has written its first (lora_spec.checkpoints)
    with RunLock(ckpt_dir, "fit checkpoint directory"), previous_checkpoints_kept(ckpt_dir, out):
        return _fit(res, quickstart, *parsed, evaluator=evaluator, log=log)


def _cheap_checks(cfg: FitConfig) -> tuple[dict, Any]:
    """The checks of the resolved config that need no torch; returns what they parsed: ``(format mixture, loss
    spec)``."""

    weights = F.parse_mixture(cfg.formats)
    loss_spec = LossSpec.parse(cfg.loss, temperature=cfg.loss_temperature, renormalize=cfg.loss_renormalize)
    parse_targets(cfg.targets)
    if cfg.data and not Path(cfg.data).is_dir():
        raise DataError(f"--data {cfg.data}: teach run directory not found")
    return weights, loss_spec


def _make_cfg(cfg: FitConfig | None, overrides: dict) -> FitConfig:
    if cfg is None:
        try:
            return FitConfig(**overrides)
        except Exception as exc:
            raise ConfigError(f"fit: {one_line(exc)[:300]}") from None
    return cfg.model_copy(update=overrides) if overrides else cfg


@dataclass
class _Run:
    """What the stages of one fit share: the resolved config, what was parsed from it, the process, the outputs."""

    cfg: FitConfig
    quickstart: bool
    weights: dict  # the format mixture
    loss_spec: Any  # losses.LossSpec
    state: Any  # accelerate's process state
    log: Callable[[str], None]
    out: Path
    ckpt_dir: Path
    t_start: float
    precision: Any = None  # lora_spec.precision.Precision: what this fit computes in, and why

    @property
    def main(self) -> bool:
        return self.state.is_main_process

    def resuming(self) -> bool:
        return bool(self.cfg.resume and any(self.ckpt_dir.glob("step-*")))


def _fit(cfg: FitConfig, quickstart: bool, weights: dict, loss_spec: Any, *, evaluator: Callable | None = None,
         log: Callable[[str], None] | None = None) -> FitResult:
    """One fit of a resolved and checked config (:func:`fit`), stage by stage (each stage is a function below, in
    this order)."""
    run = _start(cfg, quickstart, weights, loss_spec, log)
    items, source = _load_data(run)
    student, examples, data_fp, counts = _student_and_rows(run, items)
    tasks = before_after_tasks(run.cfg, source)
    before = _score_before(run, student, tasks)
    model, spec = _make_trainable(run, student)
    evaluator, eval_every = _held_out_evaluation(run, evaluator, source, items, student.kind, len(examples))
    res = _train(run, model, student, examples, data_fp, evaluator, eval_every)
    after = None
    if tasks and run.main:
        after = score_tasks(model, student.tokenizer, student.kind, tasks, run.cfg)
        run.log(f"after:  {fmt_scores(after)}")
    manifest = _manifest(run, student=student, spec=spec, counts=counts, source=source, items=items,
                         n_examples=len(examples), data_fp=data_fp, evaluator=evaluator, eval_every=eval_every,
                         res=res, before=before, after=after, examples=examples)
    if run.main:
        _write_artifact(run, model, student, manifest, evaluator, before, after)
    run.state.wait_for_everyone()
    return FitResult(out=run.out, manifest=manifest, model=model, tokenizer=student.tokenizer, kind=student.kind,
                     before=before, after=after, history=res.history)


def _start(cfg: FitConfig, quickstart: bool, weights: dict, loss_spec: Any,
           log: Callable[[str], None] | None) -> _Run:
    """Torch threads, the process state, the log, and the checkpoint directory of an earlier fit."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    state = dist_state()
    main = state.is_main_process

    precision = resolve_precision(cfg.precision, str(state.device))
    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if log is None:
        def log(msg: str) -> None:
            if main:
                click.echo(msg, err=True)
    out = Path(cfg.out)
    ckpt_dir = out.with_name(out.name + ".checkpoints")
    if not cfg.resume and any(ckpt_dir.glob("step-*")):
        if _finished(out, ckpt_dir):
            # the earlier fit finished and its artifact is at --out: a fresh run starts over (the artifact is
            # replaced atomically only when this run finishes)
            if main:  # set aside, removed once this fit writes its first checkpoint (put back if it fails first)
                set_aside_previous(ckpt_dir)
            state.wait_for_everyone()
        else:
            raise ConfigError(f"{ckpt_dir} holds checkpoints of an unfinished fit: pass --resume to continue it, "
                              f"or choose another --out")
    return _Run(cfg, quickstart, weights, loss_spec, state, log, out, ckpt_dir, time.time(), precision)


def _load_data(run: _Run) -> tuple[list, dict]:
    """The correct teacher samples and where they came from (teach runs on the main process only; the others wait
    and read the result)."""
    cfg, out = run.cfg, run.out
    if run.main:
        items, source = _load_items(cfg, out, run.log)
    run.state.wait_for_everyone()
    if not run.main:
        items, source = _load_items(cfg.model_copy(update={"data": cfg.data or str(out.with_name(out.name + ".teach"))}),
                                    out, lambda m: None)
        source = dict(source)
    if run.loss_spec.needs_teacher_topk and not any(it.sample is not None and it.sample.top_logprobs for it in items):
        raise DataError(f"--loss {run.loss_spec} needs the teacher's top-k logprobs, but none of the {len(items)} "
                        "training samples has them: teach with --top-logprobs K (a teacher that reports logprobs)")
    return items, source


def _student_and_rows(run: _Run, items: list):
    """The student (seeded: the adapter init is part of the run's determinism) and the training rows of the four
    formats: ``(student, examples, data fingerprint, rows per format)``."""
    import torch

    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    # full fine-tuning keeps fp32 master weights (autocast computes in the reduced dtype); LoRA/DoRA hold the
    # frozen base in the precision's dtype once (lora_spec.precision)
    dtype = torch.float32 if cfg.method == "full" else run.precision.dtype
    student = load_student(cfg.student, cfg.quant, dtype=dtype,
                           double_quant=cfg.double_quant,
                           device=str(run.state.device) if cfg.quant != "none" else None)

    limit = learned_positions(student.model)
    if limit is not None and cfg.max_length > limit:
        raise ConfigError(f"--max-length {cfg.max_length}: the student {cfg.student} has {limit} learned positions; "
                          f"a longer training row cannot run through it (use --max-length {limit} or less)")
    examples = F.build_examples(items, run.weights, student.tokenizer, n_shots=cfg.n_shots, seed=cfg.seed,
                                chat=False if student.kind == "seq2seq" else cfg.chat, max_length=cfg.max_length,
                                kind=student.kind)
    fewer = F.fewer_shots(examples, cfg.n_shots)
    # rows fitted to max_length are other rows: the fingerprint says so (and unchanged data keep theirs)
    fitted = {"fitted_to": cfg.max_length} if fewer else {}
    data_fp = F.data_fingerprint(items, run.weights, n_shots=cfg.n_shots, seed=cfg.seed, chat=cfg.chat,
                                 student=student.fingerprint.get("tokenizer"), **fitted)
    counts = F.format_counts(examples)
    run.log(f"data: {len(items)} correct samples of {len({it.problem.id for it in items})} problems -> "
            + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    if fewer:
        run.log(f"data: {sum(fewer.values()):,} in-context rows hold fewer than {cfg.n_shots} exemplars (whole "
                f"exemplars dropped to fit --max-length {cfg.max_length}): "
                + ", ".join(f"{k} {v:,}" for k, v in fewer.items()))
    return student, examples, data_fp, counts


def _score_before(run: _Run, student, tasks: list) -> dict | None:
    """The base model on the before/after test problems (not again when resuming)."""
    if tasks and run.main and not run.resuming():
        before = score_tasks(student.model, student.tokenizer, student.kind, tasks, run.cfg)
        run.log(f"before: {fmt_scores(before)}")
        return before
    return None


def _make_trainable(run: _Run, student):
    """LoRA / DoRA / full on the student: ``(model, MethodSpec)``."""
    import torch

    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    spec = MethodSpec(method=cfg.method, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                      targets=parse_targets(cfg.targets), gradient_checkpointing=cfg.gradient_checkpointing)
    model = apply_method(student, spec)
    params = count_params(model)
    run.log(f"student: {student.name} ({student.kind}, quant {student.quant}), method {cfg.method}: "
            f"{params['trainable']:,} of {params['total']:,} parameters train; precision {run.precision.line()}")
    return model, spec


def _held_out_evaluation(run: _Run, evaluator: Callable | None, source: dict, items: list, kind: str,
                         n_examples: int) -> tuple[Any, int]:
    """``(evaluator, eval_every)``: the caller's evaluator, or the held-out sets of the config (see
    :func:`setup_fit_evaluation`), whose predictions are journaled beside the checkpoints (they survive a cut)."""
    from .selection import PREDICTIONS_FILE

    eval_every = run.cfg.eval_every or 0
    if evaluator is None:  # held-out sets from the config (lora_spec.selection)
        evaluator, eval_every = setup_fit_evaluation(run.cfg, quickstart=run.quickstart, source=source, items=items,
                                                     kind=kind, n_examples=n_examples,
                                                     world=run.state.num_processes, log=run.log)
        if evaluator is not None and run.main:  # predictions survive a cut: journaled beside the checkpoints
            if run.resuming():
                evaluator.check_resumed(run.ckpt_dir)
            evaluator.keep_journal(run.ckpt_dir / PREDICTIONS_FILE, resume=run.resuming())
    return evaluator, eval_every


def _train(run: _Run, model, student, examples: list, data_fp: str, evaluator: Any, eval_every: int):
    """``trainer.train`` with the config's settings, selection rule and pruning; records the step time."""
    from .selection import prune_checkpoints, select_checkpoint

    cfg = run.cfg

    def select(checkpoints: list[dict]) -> dict:
        return select_checkpoint(checkpoints, effective_rule(cfg, evaluator), cfg.prefer_earliest)

    def prune(checkpoints: list[dict]) -> None:
        prune_checkpoints(checkpoints, cfg.keep_checkpoints, effective_rule(cfg, evaluator),
                          prefer_earliest=cfg.prefer_earliest)

    # the loop's settings are the config's, by name; only these three are stated differently in the config
    args = TrainArgs.of(cfg, eval_every=eval_every, loss=run.loss_spec, mixed_precision=run.precision.mixed_precision)
    res = train(model, student.tokenizer, examples, kind=student.kind, args=args, ckpt_dir=run.ckpt_dir,
                evaluator=evaluator, select=select, prune=prune, resume=cfg.resume, data_fingerprint=data_fp)
    if run.main:  # the trainer's seconds and steps are both totals over resumes
        from .fit_plan import record_calibration

        record_calibration(cfg, res.steps, res.train_seconds, res.tokens_per_second, run.precision.name)
    run.log(f"trained {res.steps} steps in {res.train_seconds:.0f}s ({res.tokens_per_second:,.0f} tokens/s), "
            f"final loss {_final_loss(res):.4f}" + (f", resumed from step {res.resumed_from}" if res.resumed_from else ""))
    return res


def _final_loss(res) -> float:
    return res.history[-1]["loss"] if res.history else float("nan")


def _manifest(run: _Run, *, student, spec, counts: dict, source: dict, items: list, n_examples: int, data_fp: str,
              evaluator: Any, eval_every: int, res, before: dict | None, after: dict | None,
              examples: list | None = None) -> dict[str, Any]:
    """``lorasp.json``: base, method, formats, prompting, loss, data, selection, checkpoints, training, before/after."""

    cfg, loss_spec, weights = run.cfg, run.loss_spec, run.weights
    manifest: dict[str, Any] = {
        "kind": "full" if cfg.method == "full" else "adapter",
        "base": {"name": student.name, "path": str(student.path), "kind": student.kind,
                 "fingerprint": dict(student.fingerprint), "hub_id": hub_id(student.name)},
        "quant": cfg.quant, "method": cfg.method, "precision": run.precision.record(),
        "peft": spec.peft_params() if cfg.method != "full" else None,
        "formats": weights, "format_counts": counts, "n_shots": cfg.n_shots,
        "chat": bool(student.kind == "causal" and uses_chat(student.tokenizer, cfg.chat)),
        "prompting": _prompting(weights, student, cfg),
        "loss": str(loss_spec),
        "distribution": None if res.align is None else {
            "temperature": loss_spec.temperature, "renormalize": loss_spec.renormalize, **res.align},
        "data": {**source, "fingerprint": data_fp, "n_examples": n_examples, "n_problems":
                 len({it.problem.id for it in items}), "truncated": res.truncated,
                 # in-context rows that dropped whole exemplars to fit max_length, per format
                 "fewer_shots": F.fewer_shots(examples or [], cfg.n_shots)},
        "selection": selection_manifest(cfg, evaluator, eval_every, res.chosen, res.train_seconds, res.eval_seconds),
        "checkpoints": res.checkpoints,
        "train": {"steps": res.steps, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                  "grad_accum": cfg.grad_accum, "world_size": res.world_size, "schedule": cfg.schedule,
                  "warmup": cfg.warmup, "max_length": cfg.max_length, "seed": cfg.seed,
                  "train_seconds": round(res.train_seconds, 2), "eval_seconds": round(res.eval_seconds, 2),
                  "tokens": res.tokens, "tokens_per_second": round(res.tokens_per_second, 1),
                  "final_loss": _final_loss(res), "loss_history": [round(h["loss"], 6) for h in res.history],
                  "resumed_from": res.resumed_from, "checkpoint_dir": str(run.ckpt_dir.resolve()),
                  "wall_seconds": round(time.time() - run.t_start, 1)},
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
    }
    if before is not None or after is not None:
        manifest["before_after"] = {"before": strip_predictions(before), "after": strip_predictions(after)}
        ba = paired_before_after(before, after)
        if ba is not None:
            manifest["before_after"]["paired"] = ba
    return manifest


def _write_artifact(run: _Run, model, student, manifest: dict, evaluator: Any, before: dict | None,
                    after: dict | None) -> None:
    """The artifact at ``--out`` (main process) with its report, curves and held-out predictions."""

    from . import selection as sel
    from .report import render_files

    cfg, out, log = run.cfg, run.out, run.log
    scratch = tempfile.TemporaryDirectory(prefix="lorasp-report-")
    report_files = render_files(manifest, out.name, scratch.name)  # report.md + curves.png
    preds = sel.write_predictions(evaluator, Path(scratch.name) / sel.PREDICTIONS_FILE)
    if preds is not None:
        report_files[sel.PREDICTIONS_FILE] = preds
    if cfg.method == "full":
        _save_full(model, student, out, manifest, extra_files=report_files)
    else:
        save_adapter(model, out, manifest, extra_files=report_files)
    scratch.cleanup()
    if report_files:
        log(f"specialization report: {out / 'report.md'}, {out / 'curves.png'}")
    log(f"wrote {out}")
    if run.quickstart and before is not None and after is not None:
        kb, ka, n = (sum(r["correct"] for r in before.values()), sum(r["correct"] for r in after.values()),
                     sum(r["n"] for r in before.values()))
        ba = manifest["before_after"].get("paired")
        log(f"held-out arith test accuracy: {fmt_acc(kb, n)} before -> {fmt_acc(ka, n)} after"
            + (f"; paired change {fmt_paired(ba)}" if ba else "") + " (95% intervals)")


def _prompting(weights: dict, student, cfg: FitConfig) -> dict:
    """How the training rows were prompted (what ``generate``, ``eval`` and ``merge`` reproduce): the main CoT
    format, the chat template and the system message that ``formats.build_examples`` put in every prompt."""

    chat = bool(student.kind == "causal" and uses_chat(student.tokenizer, cfg.chat))
    return {"mode": main_mode(weights), "chat": chat, "system": DEFAULT_SYSTEM if chat else None,
            "n_shots": cfg.n_shots}


# --------------------------------------------------------------------------------------------- held-out evaluation
# How a fit uses lora_spec.selection: when it evaluates, which rule it applies, what lorasp.json records.

def setup_fit_evaluation(cfg: Any, *, quickstart: bool, source: dict, items: list, kind: str, n_examples: int,
                         world: int = 1, log: Callable[[str], None] | None = None) -> tuple[Any, int]:
    """For ``fit``: ``(evaluator or None, eval_every)``. No evaluator when ``eval_every`` resolves to 0 or every
    held-out set is off; then the last checkpoint is exported."""
    total = total_steps(n_examples, cfg.batch_size, cfg.grad_accum, world, cfg.epochs, cfg.max_steps)
    every = resolve_eval_every(cfg, quickstart=quickstart, total=total)
    if every <= 0 or not any(getattr(cfg, s).enabled for s in SETS):
        return None, 0  # an explicit --select-by that needs scores was already refused by the config
    from .selection import HeldOutEvaluator

    # the training dataset's parameters, parsed exactly as teach parsed them (in_dist "auto" = its dev split)
    params = parse_kv(getattr(cfg, "dataset_opt", []) or [], "--dataset-opt") if source.get("kind") == "dataset" \
        else {}
    ev = HeldOutEvaluator(cfg, train_dataset=source.get("dataset"), train_params=params,
                          exclude_ids={getattr(getattr(it, "problem", None), "id", None) for it in items} - {None},
                          kind=kind, chat=getattr(cfg, "chat", None), data_dir=getattr(cfg, "data_dir", None),
                          batch_size=cfg.eval_batch_size, progress=False, log=log)
    if not ev.sets:
        return None, 0
    if log:
        desc = "; ".join(f"{n} {sum(len(v) for v in st.problems.values())} ({', '.join(st.problems)})"
                         for n, st in ev.sets.items())
        log(f"held-out evaluation at step 0, every {every} steps and at the end: {desc}; "
            f"select by {cfg.select_by}")
    return ev, every


def effective_rule(cfg: Any, evaluator: Any) -> str:
    """The rule a fit applies: ``--select-by`` when there are held-out scores; without them an explicit ``loss`` or
    ``last`` still applies (neither needs scores), and anything else falls back to ``last``. The *default* rule
    falls back to the first scored set when the set it names was skipped for want of data."""
    if evaluator is not None:
        r = as_rule(cfg.select_by)
        sets = getattr(evaluator, "sets", None)
        if "select_by" not in cfg.model_fields_set and r.kind == "score" and sets is not None:
            mode = {s: getattr(getattr(v, "config", None), "score", "both") for s, v in sets.items()}
            scored = [s for s in SETS if s in sets and mode[s] != "loss"]
            if not all(k.split("/")[0] in scored for k, _w in r.weights):
                # the default rule names a set that was skipped (its data is not here) or scores only its loss:
                # use the first set with an accuracy, else the first reference loss
                lossy = [f"{s}_loss" for s in SETS if s in sets and mode[s] != "accuracy"]
                return next(iter(scored + lossy), "last")
        return cfg.select_by
    if "select_by" in cfg.model_fields_set and as_rule(cfg.select_by).kind in ("loss", "last"):
        return cfg.select_by
    return "last"


def selection_manifest(cfg: Any, evaluator: Any, eval_every: int, chosen: dict | None,
                       train_seconds: float | None = None, eval_seconds: float | None = None) -> dict:
    """The ``selection`` block of ``lorasp.json``."""
    rule = effective_rule(cfg, evaluator)
    out: dict[str, Any] = {"rule": rule, "description": as_rule(rule).describe(),
                           "chosen_step": (chosen or {}).get("step"), "eval_every": eval_every,
                           "keep_checkpoints": cfg.keep_checkpoints}
    r = as_rule(rule)
    if getattr(cfg, "prefer_earliest", False) and r.kind == "score" and len(r.weights) == 1:
        out["prefer_earliest"] = True
        out["description"] = (f"the earliest checkpoint not significantly worse than the one with the highest "
                              f"{r.weights[0][0]} accuracy (paired exact McNemar test, p >= {ALPHA:g})")
    if evaluator is not None and hasattr(evaluator, "describe"):
        out["sets"] = evaluator.describe()
        if getattr(evaluator, "warnings", None):
            out["warnings"] = list(evaluator.warnings)
    if train_seconds is not None:
        out["train_seconds"] = round(float(train_seconds), 2)
    if eval_seconds is not None:
        out["eval_seconds"] = round(float(eval_seconds), 2)
    return out


def _finished(out: Path, ckpt_dir: Path) -> bool:
    """Whether the checkpoints in ``ckpt_dir`` are those of the finished artifact at ``out`` (its manifest, read
    by the artifact reader, records them)."""

    try:
        m = read_manifest(out)
    except (OSError, LoraspError):
        return False
    rec = Path(str((m.get("train") or {}).get("checkpoint_dir", "")))
    if rec.resolve() == ckpt_dir.resolve():
        return True
    # the project folder was moved or copied: the recorded absolute path is elsewhere. The checkpoints are this
    # artifact's when the directory has its name and every checkpoint in it is one the artifact recorded (step and
    # loss, a fingerprint no other fit shares)
    if rec.name != ckpt_dir.name:
        return False
    recorded = {(c.get("step"), c.get("loss")) for c in m.get("checkpoints") or [] if isinstance(c, dict)}
    steps = sorted(ckpt_dir.glob("step-*"))
    try:
        return bool(steps) and all((j.get("step"), j.get("loss")) in recorded for j in
                                   (json.loads((d / "checkpoint.json").read_text()) for d in steps))
    except (OSError, ValueError, AttributeError):
        return False


def _save_full(model, student, out: Path, manifest: dict, extra_files=None) -> None:
    """A full fine-tune's artifact, through the one artifact writer."""

    save_full(model, student.tokenizer, out, manifest, extra_files=extra_files)


__all__ = ["FitConfig", "FitResult", "fit", "resolve_defaults", "QUICKSTART_PROBLEMS", "setup_fit_evaluation",
           "effective_rule", "selection_manifest"]


make_callable(__name__, "fit")  # lora_spec.fit(...) calls fit
