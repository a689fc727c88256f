"""``lorasp fit --dry-run``: what a fit would do without loading a model (rows, steps, evaluations, outputs, a time
estimate), and the per-machine calibration (seconds per step) that the estimate comes from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import formats as F, registry
from .batching import encode_examples, total_steps
from .calibration import device, lookup, record
from .config import parse_kv
from .eval_engine import make_dataset
from .formats import items_from_run
from .precision import resolve_precision
from .student import local_path, model_kind
from .trainer import eval_schedule

if TYPE_CHECKING:
    from .fit_config import FitConfig


def _calibration_key(student: str, quant: str, method: str, batch_size: int, grad_accum: int,
                     precision: str) -> str:
    return f"fit|{student}|{quant}|{method}|{device()}|batch={batch_size}x{grad_accum}|{precision}"


def record_calibration(cfg: "FitConfig", steps: int, train_seconds: float, tokens_per_second: float,
                       precision: str) -> None:
    """Store this fit's measured seconds per optimizer step (for ``--dry-run`` estimates); never fails a fit."""

    if steps > 0 and train_seconds > 0:
        record(_calibration_key(cfg.student, cfg.quant, cfg.method, cfg.batch_size, cfg.grad_accum, precision),
               seconds_per_step=round(train_seconds / steps, 3), tokens_per_second=round(tokens_per_second, 1),
               steps=steps)


def plan_fit(cfg: "FitConfig") -> dict[str, Any]:
    """What ``fit(cfg)`` would do, without loading a model or training (``lorasp fit --dry-run``): training rows
    per format, optimizer steps, held-out evaluations, output paths and a time estimate from the seconds per step
    of an earlier fit with the same student, quant, method and batch on this machine (if one was recorded)."""
    from .fit_config import is_quickstart, resolve_defaults, resolve_eval_every
    from .selection import SETS
    from .teach import load_run

    quickstart = is_quickstart(cfg)
    cfg = resolve_defaults(cfg)
    weights = F.parse_mixture(cfg.formats)
    precision = resolve_precision(cfg.precision)
    out = Path(cfg.out)
    notes: list[str] = []
    if cfg.data:
        problems, samples = load_run(Path(cfg.data))
        items = items_from_run(problems, samples, first=cfg.first)
        n_rows, n_problems = len(items), len({it.problem.id for it in items})
        source = f"teach run {cfg.data}"
    else:
        params = parse_kv(cfg.dataset_opt, "--dataset-opt")
        n_problems = sum(1 for _ in make_dataset(cfg.dataset, params, cfg.data_dir).load(cfg.split, limit=cfg.first))

        cap = getattr(registry.resolve("teachers", cfg.teacher), "max_samples", None)  # gold: one per problem
        n_rows = n_problems * (min(cfg.samples, cap) if isinstance(cap, int) else cfg.samples)
        source = f"dataset {cfg.dataset} ({cfg.split}), teacher {cfg.teacher}"
        if cfg.teacher != "gold":
            notes.append(f"rows: at most {n_rows} (samples x {n_problems} problems); only the teacher's correct "
                         "samples train, so there may be fewer")
    counts = F.allocate(n_rows, weights)
    steps = total_steps(n_rows, cfg.batch_size, cfg.grad_accum, 1, cfg.epochs, cfg.max_steps)
    every = resolve_eval_every(cfg, quickstart=quickstart, total=steps)
    sets = {}
    for name in (SETS if every > 0 else ()):
        hs = getattr(cfg, name)
        if hs.enabled:
            ds = ", ".join(hs.datasets) if len(hs.datasets) <= 3 else f"{len(hs.datasets)} data sets"
            what = {"accuracy": "", "loss": "; reference loss only", "both": "; accuracy and reference loss"}
            sets[name] = f"{hs.limit} problems ({ds}; {hs.mode}{what[hs.score]})"
    evals = len(eval_schedule(steps, every)) if sets else 0
    ckpt = out.with_name(out.name + ".checkpoints")

    est = None
    cal = lookup(_calibration_key(cfg.student, cfg.quant, cfg.method, cfg.batch_size, cfg.grad_accum,
                                  precision.name))
    if cal and isinstance(cal.get("seconds_per_step"), (int, float)):
        est = {"train_seconds": round(float(cal["seconds_per_step"]) * steps, 1),
               "seconds_per_step": cal["seconds_per_step"], "measured": cal.get("measured"),
               "source": cal["source"]}
    lengths = None
    if cfg.data:
        lengths = _lengths(cfg, items, weights)
        if lengths is None:
            notes.append(f"row lengths: not measured (the tokenizer of {cfg.student!r} is not on this machine yet)")
    return {"source": source, "problems": n_problems, "rows": n_rows, "lengths": lengths,
            "rows_per_format": {k: v for k, v in counts.items() if v},
            "steps": steps, "batch": f"{cfg.batch_size} x {cfg.grad_accum} accumulation",
            "epochs": cfg.epochs if not cfg.max_steps else None,
            "held_out_evaluations": evals, "eval_every": every, "held_out_sets": sets, "select_by": cfg.select_by,
            "before_after": cfg.before_after,
            "out": str(out), "checkpoints": str(ckpt),
            "teach_run": None if cfg.data else str(out.with_name(out.name + ".teach")),
            "precision": precision.line(), "estimate": est, "notes": notes, "config": cfg}


def _lengths(cfg: "FitConfig", items: list, weights: dict) -> dict[str, Any] | None:
    """The training rows' token lengths with the student's tokenizer (only when it is already local: a dry run
    downloads and builds nothing): the median, 95th percentile and longest row, the in-context rows that drop
    exemplars to fit ``--max-length`` and the rows still cut, per format; what choosing ``--max-length`` needs."""
    from transformers import AutoConfig, AutoTokenizer

    path = local_path(cfg.student)
    if path is None:
        return None
    tok = AutoTokenizer.from_pretrained(str(path))
    kind = model_kind(AutoConfig.from_pretrained(str(path)))
    ex = F.build_examples(items, weights, tok, n_shots=cfg.n_shots, seed=cfg.seed,
                          chat=False if kind == "seq2seq" else cfg.chat, max_length=cfg.max_length, kind=kind)
    enc, _ = encode_examples(ex, tok, kind, 10 ** 9)  # whole rows: their real lengths
    if kind == "seq2seq":
        lens = [max(len(e.input_ids), len(e.labels)) for e in enc]
    else:
        lens = [len(e.input_ids) for e in enc]
    cut: dict[str, int] = {}
    for e, n in zip(ex, lens):
        if n > cfg.max_length:
            cut[e.format] = cut.get(e.format, 0) + 1
    srt = sorted(lens)
    return {"max_length": cfg.max_length, "median": srt[len(srt) // 2], "p95": srt[min(len(srt) - 1, int(0.95 * len(srt)))],
            "longest": srt[-1], "fewer_shots": F.fewer_shots(ex, cfg.n_shots), "cut": cut}
