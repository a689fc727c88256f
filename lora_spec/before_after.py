"""A fit's before/after comparison: the training dataset's test problems (``--before-after N``) scored with
``lorasp eval``'s ``evaluate_tasks`` on the base model and on the exported checkpoint, paired by problem."""

from __future__ import annotations

from typing import Any

from .config import parse_kv
from .eval_engine import evaluate_tasks
from .records import EvalTask
from .stats import fmt_acc, paired


def before_after_tasks(cfg: Any, source: dict):
    ds = source.get("dataset")
    if not cfg.before_after or not ds:
        return []
    params = parse_kv(cfg.dataset_opt, "--dataset-opt") if source.get("kind") == "dataset" else {}
    return [EvalTask(name=f"{ds}:test", dataset=ds, split="test", dataset_params=params, mode="zs_cot",
                     limit=cfg.before_after, max_new_tokens=128)]


def score_tasks(model, tokenizer, kind, tasks, cfg: Any) -> dict:
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


def fmt_scores(res: dict) -> str:
    return ", ".join(f"{k} {fmt_acc(r['correct'], r['n'])}"
                     + (f", flexible {r['flexible_accuracy']:.1%}" if "flexible_accuracy" in r else "")
                     for k, r in res.items())


def paired_before_after(before: dict | None, after: dict | None) -> dict | None:
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

    return paired(a, b)


def strip_predictions(res: dict | None) -> dict | None:
    if res is None:
        return None
    return {k: {kk: vv for kk, vv in r.items() if kk != "predictions"} for k, r in res.items()}
