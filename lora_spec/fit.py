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
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from .config import RunConfig, parse_kv
from .errors import ConfigError, DataError, one_line
from .selection import SelectionOptions

QUICKSTART_PROBLEMS = 512
QUICKSTART_HELD_OUT = 50  # arith test problems scored before and after on the quickstart


class FitConfig(RunConfig, SelectionOptions):
    """``lorasp fit``: tune a student on teacher chain-of-thought with the four-format mixture."""

    student: str = Field("smollm2-135m", description="Student: preset (lorasp models), local directory or Hub id.")
    data: str | None = Field(None, description="Teach run directory (lorasp teach --out DIR) to train on.")
    dataset: str | None = Field(None, description="Dataset plugin to teach in-process when --data is not given "
                                                  "(default: arith, the embedded quickstart).")
    dataset_opt: list[str] = Field(default_factory=list, description="Dataset plugin parameter KEY=VALUE.")
    split: str = Field("train", description="Split to train on (with --dataset).")
    teacher: str = Field("gold", description="Teacher plugin for --dataset (gold: the reference rationales).")
    teacher_opt: list[str] = Field(default_factory=list, description="Teacher plugin parameter KEY=VALUE.")
    samples: int = Field(1, ge=1, le=64, description="Teacher samples per problem (with --dataset).")
    limit: int | None = Field(None, ge=1, description="Train on the first N problems, in file order "
                                                      f"(quickstart default: {QUICKSTART_PROBLEMS}).")
    data_dir: str | None = Field(None, description="Data directory (default: $LORASP_DATA_DIR).")
    quant: Literal["nf4", "int8", "none"] = Field("none", description="Quantize the frozen base (bitsandbytes).")
    double_quant: bool = Field(True, description="nf4 double quantization.")
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Compute dtype of the base (auto: bf16 on GPU, fp32 on CPU).")
    method: Literal["lora", "dora", "full"] = Field("lora", description="lora, dora, or full fine-tuning.")
    rank: int = Field(16, ge=1, le=4096, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    targets: str = Field("all-linear", description="LoRA target modules: all-linear or e.g. q_proj,v_proj.")
    formats: str = Field("zero_shot_cot=8,in_context_cot=1,zero_shot_answer=1",
                         description="Format mixture weights, e.g. in_context_cot=4,zero_shot_cot=2,"
                                     "in_context_answer=1,zero_shot_answer=1.")
    n_shots: int = Field(2, ge=1, le=16, description="Exemplars in the in-context formats.")
    chat: bool | None = Field(None, description="Use the tokenizer's chat template (default: when it has one).")
    loss: str = Field("sample", description="sample | distribution | mix:ALPHA (ALPHA = weight of the "
                      "distribution loss; distribution needs a teach run with --top-logprobs).")
    loss_temperature: float = Field(1.0, gt=0, description="Distribution matching: softmax temperature of the KL.")
    loss_renormalize: bool = Field(False, description="Distribution matching: renormalise the teacher's top-k "
                                   "to sum to 1 (default: its missing mass is one 'other' bucket).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows.")
    max_steps: int | None = Field(None, ge=1, description="Stop after N optimizer steps (overrides --epochs).")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (default: 1e-3 lora/dora, 2e-5 full).")
    batch_size: int = Field(8, ge=1, le=65536, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    max_length: int = Field(512, ge=8, le=131072, description="Longest training row in tokens.")
    warmup: float = Field(0.05, ge=0, description="Warmup: a fraction of the steps (< 1) or a number of steps.")
    schedule: Literal["cosine", "constant", "linear"] = Field("cosine", description="Learning-rate schedule.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: off).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    micro_batch_tokens: int = Field(1024, ge=0, le=16_777_216,
                                    description="Padded tokens per forward/backward pass: a batch runs in passes "
                                                "of at most this many tokens (same update, less memory; "
                                                "0: the whole batch in one pass).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice; 1 is much "
                                                        "faster on an oversubscribed CPU).")
    group_by_length: bool = Field(True, description="Batch rows of similar length together.")
    seed: int = Field(0, description="Seed of the data order, the formats, exemplars and the adapter init.")
    save_every: int = Field(50, ge=0, description="Write a checkpoint every N steps (0: only evaluations and end).")
    resume: bool = Field(False, description="Continue from the last checkpoint in <out>.checkpoints.")
    out: str | None = Field(None, description="Artifact directory (default: adapters/<dataset>-<method>).")
    before_after: int | None = Field(None, ge=0, description="Held-out test problems of the training dataset "
                                                             "scored before and after (0: off; quickstart: 50).")
    tracker: str = Field("auto", description="accelerate tracker: auto (tensorboard if installed), none, ...")
    progress: bool = Field(True, description="Progress bars on a terminal.")
    overwrite: bool = Field(False, description="Replace an earlier fit's artifact at --out (only a lorasp "
                                               "adapter/full artifact; removed once the new one is complete).")

    def resolved(self) -> "FitConfig":
        return resolve_defaults(self)


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


def _is_quickstart(cfg: FitConfig) -> bool:
    return cfg.data is None and cfg.dataset is None


def resolve_defaults(cfg: FitConfig) -> FitConfig:
    """Fill the defaults that depend on other fields (quickstart, lr by method, out)."""
    upd: dict[str, Any] = {}
    if cfg.data is None and cfg.dataset is None:
        upd["dataset"] = "arith"
        if cfg.limit is None:
            upd["limit"] = QUICKSTART_PROBLEMS
        if cfg.before_after is None:
            upd["before_after"] = QUICKSTART_HELD_OUT
        from .selection import quickstart_sets

        injected = quickstart_sets(cfg)  # small and fast; real runs get the larger default sets
        upd.update(injected)
        if "select_by" not in cfg.model_fields_set and cfg.in_dist.enabled:
            # the quickstart teaches one skill and reports it on held-out arith test problems: export the
            # checkpoint that is best on that skill's dev split (OOD and BBH are still scored and reported);
            # with --in-dist none the ordinary default rule (and its fallback to a scored set) applies
            upd["select_by"] = "in_dist"
    if cfg.lr is None:
        upd["lr"] = 2e-5 if cfg.method == "full" else 1e-3
    if cfg.out is None:
        src = Path(cfg.data).name if cfg.data else (cfg.dataset or "arith")
        upd["out"] = f"adapters/{src}-{cfg.method}" + (f"-{cfg.quant}" if cfg.quant != "none" else "")
    if cfg.before_after is None and "before_after" not in upd:
        upd["before_after"] = 0
    if cfg.method == "full" and cfg.quant != "none":
        raise ConfigError(f"--method full trains every weight and cannot train a {cfg.quant}-quantized base; "
                          "use --quant none, or --method lora/dora for QLoRA")
    if not upd:
        return cfg
    new = cfg.model_copy(update=upd)
    if cfg.data is None and cfg.dataset is None:
        # the quickstart's sets are still defaults (not the user's): a default set whose data is missing is skipped
        new.model_fields_set.difference_update(injected)
    return new


def _load_items(cfg: FitConfig, out: Path, log: Callable[[str], None]):
    from .formats import items_from_run
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
            f"{f', first {cfg.limit}' if cfg.limit else ''}) with teacher {cfg.teacher} -> {run_dir}")
        teach(dataset=cfg.dataset, split=cfg.split, limit=cfg.limit, dataset_opt=list(cfg.dataset_opt),
              data_dir=cfg.data_dir, teacher=cfg.teacher, teacher_opt=list(cfg.teacher_opt), samples=cfg.samples,
              out=str(run_dir), progress=False)
        problems, samples = load_run(run_dir)
        source = {"kind": "dataset", "dataset": cfg.dataset, "split": cfg.split, "teacher": cfg.teacher,
                  "teach_run": str(run_dir), "dataset_opt": list(cfg.dataset_opt)}
    items = items_from_run(problems, samples)
    if cfg.data and cfg.limit:
        keep = set(list(problems)[:cfg.limit])
        items = [it for it in items if it.problem.id in keep]
    if not items:
        raise DataError(f"{run_dir}: no correct teacher samples to train on")
    return items, source


def _before_after_tasks(cfg: FitConfig, source: dict):
    from .records import EvalTask

    ds = source.get("dataset")
    if not cfg.before_after or not ds:
        return []
    params = parse_kv(cfg.dataset_opt, "--dataset-opt") if source.get("kind") == "dataset" else {}
    return [EvalTask(name=f"{ds}:test", dataset=ds, split="test", dataset_params=params, mode="zs_cot",
                     limit=cfg.before_after, max_new_tokens=128)]


def _compute_dtype(name: str):
    import torch

    return {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def fit(cfg: FitConfig | None = None, *, evaluator: Callable | None = None, log: Callable[[str], None] | None = None,
        **overrides: Any) -> FitResult:
    """Run (or resume) a fit; returns the artifact directory, its manifest and the trained model.

    Before anything is loaded, ``--out`` (and its ``.checkpoints`` / ``.teach`` siblings) are checked against the
    output policy (``lora_spec.outputs``), and the checkpoint directory is locked for this process.
    """
    import os

    from .outputs import RunLock, check_output

    cfg = _make_cfg(cfg, overrides)
    res = resolve_defaults(cfg)
    _cheap_checks(res)  # a bad flag is reported before any file is written or torch is imported
    inputs = [("--data", res.data), ("--student", res.student)]
    out = check_output(res.out, "fit", overwrite=res.overwrite, inputs=inputs)
    ckpt_dir = out.with_name(out.name + ".checkpoints")
    check_output(ckpt_dir, "checkpoints", flag="--out (its checkpoint directory)", inputs=inputs)
    if not res.data:
        check_output(out.with_name(out.name + ".teach"), "teach", flag="--out (its teach run directory)",
                     inputs=inputs)
    if Path(res.out).name in ("", ".", ".."):
        cfg = cfg.model_copy(update={"out": str(out)})
    if int(os.environ.get("RANK", "0") or 0) != 0:  # DDP: the main process holds the lock
        return _fit(cfg, evaluator=evaluator, log=log)
    with RunLock(ckpt_dir, "fit checkpoint directory"):
        return _fit(cfg, evaluator=evaluator, log=log)


def _cheap_checks(cfg: FitConfig) -> None:
    from . import formats as F
    from .adapters.peft_setup import parse_targets
    from .losses import LossSpec

    F.parse_mixture(cfg.formats)
    LossSpec.parse(cfg.loss, temperature=cfg.loss_temperature, renormalize=cfg.loss_renormalize)
    parse_targets(cfg.targets)
    if cfg.data and not Path(cfg.data).is_dir():
        raise DataError(f"--data {cfg.data}: teach run directory not found")


def _make_cfg(cfg: FitConfig | None, overrides: dict) -> FitConfig:
    if cfg is None:
        try:
            return FitConfig(**overrides)
        except Exception as exc:
            raise ConfigError(f"fit: {one_line(exc)[:300]}") from None
    return cfg.model_copy(update=overrides) if overrides else cfg


def _fit(cfg: FitConfig, *, evaluator: Callable | None = None, log: Callable[[str], None] | None = None) -> FitResult:
    from . import formats as F

    quickstart = _is_quickstart(cfg)
    cfg = resolve_defaults(cfg)
    # cheap checks first: a bad flag is reported before torch is even imported
    weights = F.parse_mixture(cfg.formats)
    from .losses import LossSpec
    from .prompts import uses_chat

    loss_spec = LossSpec.parse(cfg.loss, temperature=cfg.loss_temperature, renormalize=cfg.loss_renormalize)
    from .adapters.peft_setup import parse_targets

    parse_targets(cfg.targets)

    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from .adapters.artifact import atomic_dir, versions, write_manifest
    from .adapters.peft_setup import MethodSpec, apply_method, count_params
    from .student import hub_id, load_student
    from .trainer import TrainArgs, dist_state, train

    state = dist_state()
    main = state.is_main_process
    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if log is None:
        def log(msg: str) -> None:
            if main:
                import click

                click.echo(msg, err=True)
    out = Path(cfg.out)
    ckpt_dir = out.with_name(out.name + ".checkpoints")
    if not cfg.resume and any(ckpt_dir.glob("step-*")):
        if _finished(out, ckpt_dir):
            # the earlier fit finished and its artifact is at --out: a fresh run starts over (the artifact is
            # replaced atomically only when this run finishes)
            if main:
                import shutil

                for d in ckpt_dir.glob("step-*"):
                    shutil.rmtree(d, ignore_errors=True)
            state.wait_for_everyone()
        else:
            raise ConfigError(f"{ckpt_dir} holds checkpoints of an unfinished fit: pass --resume to continue it, "
                              f"or choose another --out")
    t_start = time.time()

    # 1-2. data and formats (teach runs on the main process only; the others wait and read the result)
    if main:
        items, source = _load_items(cfg, out, log)
    state.wait_for_everyone()
    if not main:
        items, source = _load_items(cfg.model_copy(update={"data": cfg.data or str(out.with_name(out.name + ".teach"))}),
                                    out, lambda m: None)
        source = dict(source)
    if loss_spec.needs_teacher_topk and not any(it.sample is not None and it.sample.top_logprobs for it in items):
        raise DataError(f"--loss {loss_spec} needs the teacher's top-k logprobs, but none of the {len(items)} "
                        "training samples has them: teach with --top-logprobs K (a teacher that reports logprobs)")

    # 3. student (seeded: the adapter init is part of the run's determinism)
    torch.manual_seed(cfg.seed)
    student = load_student(cfg.student, cfg.quant, dtype=_compute_dtype(cfg.compute_dtype),
                           double_quant=cfg.double_quant,
                           device=str(state.device) if cfg.quant != "none" else None)
    examples = F.build_examples(items, weights, student.tokenizer, n_shots=cfg.n_shots, seed=cfg.seed,
                                chat=False if student.kind == "seq2seq" else cfg.chat)
    data_fp = F.data_fingerprint(items, weights, n_shots=cfg.n_shots, seed=cfg.seed, chat=cfg.chat,
                                 student=student.fingerprint.get("tokenizer"))
    counts = F.format_counts(examples)
    log(f"data: {len(items)} correct samples of {len({it.problem.id for it in items})} problems -> "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if v))

    tasks = _before_after_tasks(cfg, source)
    before = after = None
    if tasks and main and not (cfg.resume and any(ckpt_dir.glob("step-*"))):
        before = _score(student.model, student.tokenizer, student.kind, tasks, cfg)
        log(f"before: {_fmt_scores(before)}")

    torch.manual_seed(cfg.seed)
    spec = MethodSpec(method=cfg.method, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                      targets=parse_targets(cfg.targets), gradient_checkpointing=cfg.gradient_checkpointing)
    model = apply_method(student, spec)
    params = count_params(model)
    log(f"student: {student.name} ({student.kind}, quant {student.quant}), method {cfg.method}: "
        f"{params['trainable']:,} of {params['total']:,} parameters train")

    # 4. train
    from . import selection as sel

    eval_every = cfg.eval_every or 0
    if evaluator is None:  # held-out sets from the config (lora_spec.selection)
        evaluator, eval_every = sel.setup_fit_evaluation(cfg, quickstart=quickstart, source=source, items=items,
                                                         kind=student.kind, n_examples=len(examples),
                                                         world=state.num_processes, log=log)
        if evaluator is not None and main:  # predictions survive a cut: journaled beside the checkpoints
            evaluator.keep_journal(ckpt_dir / sel.PREDICTIONS_FILE,
                                   resume=bool(cfg.resume and any(ckpt_dir.glob("step-*"))))

    def select(checkpoints: list[dict]) -> dict:
        return sel.select_checkpoint(checkpoints, sel.effective_rule(cfg, evaluator), cfg.prefer_earliest)

    def prune(checkpoints: list[dict]) -> None:
        sel.prune_checkpoints(checkpoints, cfg.keep_checkpoints, sel.effective_rule(cfg, evaluator),
                              prefer_earliest=cfg.prefer_earliest)

    # the loop's settings are the config's, by name; only these three are stated differently in the config
    args = TrainArgs.of(cfg, eval_every=eval_every, loss=loss_spec,
                        mixed_precision={"auto": "auto", "fp32": "no"}.get(cfg.compute_dtype, cfg.compute_dtype))
    res = train(model, student.tokenizer, examples, kind=student.kind, args=args, ckpt_dir=ckpt_dir,
                evaluator=evaluator, select=select, prune=prune, resume=cfg.resume, data_fingerprint=data_fp)
    last = res.history[-1]["loss"] if res.history else float("nan")
    if main:  # the trainer's seconds and steps are both totals over resumes
        record_calibration(cfg, res.steps, res.train_seconds, res.tokens_per_second)
    log(f"trained {res.steps} steps in {res.train_seconds:.0f}s ({res.tokens_per_second:,.0f} tokens/s), "
        f"final loss {last:.4f}" + (f", resumed from step {res.resumed_from}" if res.resumed_from else ""))

    if tasks and main:
        after = _score(model, student.tokenizer, student.kind, tasks, cfg)
        log(f"after:  {_fmt_scores(after)}")

    # 5. artifact
    manifest: dict[str, Any] = {
        "kind": "full" if cfg.method == "full" else "adapter",
        "base": {"name": student.name, "path": str(student.path), "kind": student.kind,
                 "fingerprint": dict(student.fingerprint), "hub_id": hub_id(student.name)},
        "quant": cfg.quant, "method": cfg.method,
        "peft": spec.peft_params() if cfg.method != "full" else None,
        "formats": weights, "format_counts": counts, "n_shots": cfg.n_shots,
        "chat": bool(student.kind == "causal" and uses_chat(student.tokenizer, cfg.chat)),
        "prompting": _prompting(weights, student, cfg),
        "loss": str(loss_spec),
        "distribution": None if res.align is None else {
            "temperature": loss_spec.temperature, "renormalize": loss_spec.renormalize, **res.align},
        "data": {**source, "fingerprint": data_fp, "n_examples": len(examples), "n_problems":
                 len({it.problem.id for it in items}), "truncated": res.truncated},
        "selection": sel.selection_manifest(cfg, evaluator, eval_every, res.chosen, res.train_seconds,
                                            res.eval_seconds),
        "checkpoints": res.checkpoints,
        "train": {"steps": res.steps, "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                  "grad_accum": cfg.grad_accum, "world_size": res.world_size, "schedule": cfg.schedule,
                  "warmup": cfg.warmup, "max_length": cfg.max_length, "seed": cfg.seed,
                  "train_seconds": round(res.train_seconds, 2), "eval_seconds": round(res.eval_seconds, 2),
                  "tokens": res.tokens, "tokens_per_second": round(res.tokens_per_second, 1),
                  "final_loss": last, "loss_history": [round(h["loss"], 6) for h in res.history],
                  "resumed_from": res.resumed_from, "checkpoint_dir": str(ckpt_dir.resolve()),
                  "wall_seconds": round(time.time() - t_start, 1)},
        "config": cfg.model_dump(mode="json"),
        "versions": versions(),
    }
    if before is not None or after is not None:
        manifest["before_after"] = {"before": _strip(before), "after": _strip(after)}
        ba = _paired_before_after(before, after)
        if ba is not None:
            manifest["before_after"]["paired"] = ba
    if main:
        import tempfile

        from .report import render_files

        scratch = tempfile.TemporaryDirectory(prefix="lorasp-report-")
        report_files = render_files(manifest, out.name, scratch.name)  # report.md + curves.png
        preds = sel.write_predictions(evaluator, Path(scratch.name) / sel.PREDICTIONS_FILE)
        if preds is not None:
            report_files[sel.PREDICTIONS_FILE] = preds
        if cfg.method == "full":
            _save_full(model, student, out, manifest, atomic_dir, write_manifest, extra_files=report_files)
        else:
            from .adapters.swap import save_adapter

            save_adapter(model, out, manifest, extra_files=report_files)
        scratch.cleanup()
        if report_files:
            log(f"specialization report: {out / 'report.md'}, {out / 'curves.png'}")
        log(f"wrote {out}")
        if quickstart and before is not None and after is not None:
            from .stats import fmt_acc, fmt_paired

            kb, ka, n = (sum(r["correct"] for r in before.values()), sum(r["correct"] for r in after.values()),
                         sum(r["n"] for r in before.values()))
            ba = manifest["before_after"].get("paired")
            log(f"held-out arith test accuracy: {fmt_acc(kb, n)} before -> {fmt_acc(ka, n)} after"
                + (f"; paired change {fmt_paired(ba)}" if ba else "") + " (95% intervals)")
    state.wait_for_everyone()
    return FitResult(out=out, manifest=manifest, model=model, tokenizer=student.tokenizer, kind=student.kind,
                     before=before, after=after, history=res.history)


def _prompting(weights: dict, student, cfg: FitConfig) -> dict:
    """How the training rows were prompted (what ``generate``, ``eval`` and ``merge`` reproduce): the main CoT
    format, the chat template and the system message that ``formats.build_examples`` put in every prompt."""
    from .prompts import DEFAULT_SYSTEM, main_mode, uses_chat

    chat = bool(student.kind == "causal" and uses_chat(student.tokenizer, cfg.chat))
    return {"mode": main_mode(weights), "chat": chat, "system": DEFAULT_SYSTEM if chat else None,
            "n_shots": cfg.n_shots}


# --------------------------------------------------------------------------------------------- dry run

def _calibration_key(student: str, quant: str, method: str, batch_size: int, grad_accum: int) -> str:
    from .calibration import device

    return f"fit|{student}|{quant}|{method}|{device()}|batch={batch_size}x{grad_accum}"


def record_calibration(cfg: "FitConfig", steps: int, train_seconds: float, tokens_per_second: float) -> None:
    """Store this fit's measured seconds per optimizer step (for ``--dry-run`` estimates); never fails a fit."""
    from .calibration import record

    if steps > 0 and train_seconds > 0:
        record(_calibration_key(cfg.student, cfg.quant, cfg.method, cfg.batch_size, cfg.grad_accum),
               seconds_per_step=round(train_seconds / steps, 3), tokens_per_second=round(tokens_per_second, 1),
               steps=steps)


def plan(cfg: "FitConfig") -> dict[str, Any]:
    """What ``fit(cfg)`` would do, without loading a model or training (``lorasp fit --dry-run``): training rows
    per format, optimizer steps, held-out evaluations, output paths and a time estimate from the seconds per step
    of an earlier fit with the same student, quant, method and batch on this machine (if one was recorded)."""
    from . import formats as F
    from . import selection as sel
    from .formats import items_from_run
    from .teach import load_run

    quickstart = _is_quickstart(cfg)
    cfg = resolve_defaults(cfg)
    weights = F.parse_mixture(cfg.formats)
    out = Path(cfg.out)
    notes: list[str] = []
    if cfg.data:
        problems, samples = load_run(Path(cfg.data))
        items = items_from_run(problems, samples)
        if cfg.limit:
            keep = set(list(problems)[:cfg.limit])
            items = [it for it in items if it.problem.id in keep]
        n_rows, n_problems = len(items), len({it.problem.id for it in items})
        source = f"teach run {cfg.data}"
    else:
        from .evaluate import make_dataset

        params = parse_kv(cfg.dataset_opt, "--dataset-opt")
        n_problems = sum(1 for _ in make_dataset(cfg.dataset, params, cfg.data_dir).load(cfg.split, limit=cfg.limit))
        from . import registry

        cap = getattr(registry.resolve("teachers", cfg.teacher), "max_samples", None)  # gold: one per problem
        n_rows = n_problems * (min(cfg.samples, cap) if isinstance(cap, int) else cfg.samples)
        source = f"dataset {cfg.dataset} ({cfg.split}), teacher {cfg.teacher}"
        if cfg.teacher != "gold":
            notes.append(f"rows: at most {n_rows} (samples x {n_problems} problems); only the teacher's correct "
                         "samples train, so there may be fewer")
    counts = F.allocate(n_rows, weights)
    steps = sel.total_steps(n_rows, cfg.batch_size, cfg.grad_accum, 1, cfg.epochs, cfg.max_steps)
    every = sel.resolve_eval_every(cfg, quickstart=quickstart, total=steps)
    sets = {}
    for name in (sel.SETS if every > 0 else ()):
        hs = getattr(cfg, name)
        if hs.enabled:
            ds = ", ".join(hs.datasets) if len(hs.datasets) <= 3 else f"{len(hs.datasets)} data sets"
            sets[name] = f"{hs.limit} problems ({ds}; {hs.mode})"
    evals = (1 + len(set(range(every, steps + 1, every)) | {steps})) if sets else 0
    ckpt = out.with_name(out.name + ".checkpoints")
    from .calibration import lookup

    est = None
    cal = lookup(_calibration_key(cfg.student, cfg.quant, cfg.method, cfg.batch_size, cfg.grad_accum))
    if cal and isinstance(cal.get("seconds_per_step"), (int, float)):
        est = {"train_seconds": round(float(cal["seconds_per_step"]) * steps, 1),
               "seconds_per_step": cal["seconds_per_step"], "measured": cal.get("measured")}
    return {"source": source, "problems": n_problems, "rows": n_rows,
            "rows_per_format": {k: v for k, v in counts.items() if v},
            "steps": steps, "batch": f"{cfg.batch_size} x {cfg.grad_accum} accumulation",
            "epochs": cfg.epochs if not cfg.max_steps else None,
            "held_out_evaluations": evals, "eval_every": every, "held_out_sets": sets, "select_by": cfg.select_by,
            "before_after": cfg.before_after,
            "out": str(out), "checkpoints": str(ckpt),
            "teach_run": None if cfg.data else str(out.with_name(out.name + ".teach")),
            "estimate": est, "notes": notes, "config": cfg}


def _finished(out: Path, ckpt_dir: Path) -> bool:
    try:
        m = json.loads((out / "lorasp.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return Path(str((m.get("train") or {}).get("checkpoint_dir", ""))).resolve() == ckpt_dir.resolve()


def _score(model, tokenizer, kind, tasks, cfg: FitConfig) -> dict:
    from .evaluate import evaluate_tasks

    was = model.training
    model.eval()
    try:
        import torch

        with torch.no_grad():
            res = evaluate_tasks(model, tokenizer, tasks, kind=kind, batch_size=cfg.eval_batch_size,
                                 data_dir=cfg.data_dir, progress=cfg.progress,
                                 chat=False if kind == "seq2seq" else cfg.chat)
    finally:
        if was:
            model.train()
    return res


def _fmt_scores(res: dict) -> str:
    from .stats import fmt_acc

    return ", ".join(f"{k} {fmt_acc(r['correct'], r['n'])}"
                     + (f", flexible {r['flexible_accuracy']:.1%}" if "flexible_accuracy" in r else "")
                     for k, r in res.items())


def _paired_before_after(before: dict | None, after: dict | None) -> dict | None:
    """Before vs after on the same test problems (all tasks pooled, paired by id): ``stats.paired`` (B = after)."""
    if not before or not after or set(before) != set(after):
        return None
    a, b = [], []
    for t in before:
        pa = {str(p["id"]): bool(p["correct"]) for p in before[t].get("predictions", [])}
        pb = {str(p["id"]): bool(p["correct"]) for p in after[t].get("predictions", [])}
        if not pa or set(pa) != set(pb):
            return None
        a += [pa[i] for i in pa]
        b += [pb[i] for i in pa]
    from .stats import paired

    return paired(a, b)


def _strip(res: dict | None) -> dict | None:
    if res is None:
        return None
    return {k: {kk: vv for kk, vv in r.items() if kk != "predictions"} for k, r in res.items()}


def _save_full(model, student, out: Path, manifest: dict, atomic_dir, write_manifest, extra_files=None) -> None:
    """A full fine-tune's artifact, through the one artifact writer (``atomic_dir``/``write_manifest``: unused,
    kept for the caller's signature)."""
    from .adapters.artifact import save_full

    save_full(model, student.tokenizer, out, manifest, extra_files=extra_files)


__all__ = ["FitConfig", "FitResult", "fit", "resolve_defaults", "QUICKSTART_PROBLEMS"]


from ._stage import make_callable  # noqa: E402  (lora_spec.fit(...) calls fit)

make_callable(__name__, "fit")
