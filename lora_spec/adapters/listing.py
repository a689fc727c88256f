"""``lorasp adapters list DIR`` / ``lorasp adapters show ARTIFACT``: what lorasp artifacts a folder holds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from .artifact import MANIFEST, read_manifest

MAX_DEPTH = 6


def find_artifacts(root: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a ``lorasp.json``; temp/hidden dirs skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    found = []
    base_depth = len(root.resolve().parts)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if len(Path(dirpath).resolve().parts) - base_depth >= max_depth:
            dirnames[:] = []
        if MANIFEST in filenames:
            found.append(Path(dirpath))
    return found


def headline(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The chosen checkpoint's held-out scores with their n and 95% interval (``lora_spec.report.interval``):
    ``{key: {"accuracy", "n", "ci": [lo, hi]}}`` for every score whose held-out set size is recorded."""
    from ..report import counts, interval, task_sizes

    sel = m.get("selection") or {}
    step = sel.get("chosen_step")
    ck = next((c for c in (m.get("checkpoints") or []) if isinstance(c, dict) and c.get("step") == step), None)
    if ck is None:
        return {}
    sizes = task_sizes(m)
    bits = ck.get("correct") if isinstance(ck.get("correct"), dict) else {}
    vectors = {k: [ch == "1" for ch in v] for k, v in bits.items() if isinstance(v, str)}
    out: dict[str, dict[str, Any]] = {}
    for k, v in (ck.get("scores") or {}).items():
        if k in NOT_SCORES or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        c = counts(ck, k, sizes, vectors)
        iv = interval(ck, k, sizes, vectors)
        if c and iv:
            out[k] = {"accuracy": float(v), "n": sum(n for _, n in c), "ci": [iv[0], iv[1]]}
    return out


def _chosen(m: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    sel = m.get("selection") or {}
    step = sel.get("chosen_step")
    cps = m.get("checkpoints") or []
    scores: dict[str, Any] = {}
    for cp in cps:
        if isinstance(cp, dict) and cp.get("step") == step:
            scores = cp.get("scores") or {}
    if not scores and isinstance(sel.get("scores"), dict):
        scores = sel["scores"]
    return step, scores


NOT_SCORES = {"eval_seconds"}


def _fmt_scores(scores: dict[str, Any], limit: int = 4, intervals: dict[str, dict] | None = None) -> str:
    """``ood=12.0% [8.1, 17.3] n=150`` where the n is known (``headline``), else ``key=0.120``."""
    parts = []
    # headline first: aggregates (in_dist, ood, generic) before per-task keys (ood/svamp, ...)
    scores = dict(sorted(((k, v) for k, v in scores.items() if k not in NOT_SCORES), key=lambda kv: "/" in kv[0]))
    for k, v in list(scores.items())[:limit]:
        if isinstance(v, dict):  # {"accuracy": 0.3, ...} per suite
            v = v.get("accuracy", v.get("score", next(iter(v.values()), None)))
        iv = (intervals or {}).get(k)
        if iv and isinstance(v, (int, float)):
            parts.append(f"{k}={100 * v:.1f}% [{100 * iv['ci'][0]:.1f}, {100 * iv['ci'][1]:.1f}] n={iv['n']}")
            continue
        parts.append(f"{k}={v:.3f}" if isinstance(v, (int, float)) else f"{k}={v}")
    if len(scores) > limit:
        parts.append(f"+{len(scores) - limit}")
    return " ".join(parts)


def _data(data: dict[str, Any], parents: list[dict[str, Any]]) -> str | None:
    """``gsm8k via gold``, a teach-run path, or the parents of a combined/merged artifact."""
    what = data.get("source") or data.get("dataset") or data.get("path")
    if what and data.get("teacher"):
        what = f"{what} via {data['teacher']}"
    if not what and parents:
        what = "+".join(str(p.get("path", "?")).rstrip("/").rsplit("/", 1)[-1] for p in parents)
    return str(what) if what else None


def summarize(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """One row of ``lorasp adapters list``; an unreadable manifest becomes a row with ``error``."""
    d = Path(directory)
    rel = str(d.relative_to(root)) if root and d != Path(root) and d.is_relative_to(root) else str(d)
    try:
        m = read_manifest(d)
    except DataError as exc:
        return {"path": rel, "error": exc.message}
    base = m.get("base") or {}
    data = m.get("data") or {}
    step, scores = _chosen(m)
    cfg = {}
    if (d / "adapter_config.json").exists():
        try:
            cfg = json.loads((d / "adapter_config.json").read_text())
        except json.JSONDecodeError:
            cfg = {}
    method = m.get("method") or ("dora" if cfg.get("use_dora") else "lora" if cfg else "?")
    rank = (m.get("peft") or {}).get("r") or cfg.get("r")
    return {"path": rel, "kind": m.get("kind", "adapter"), "base": base.get("name"),
            "base_id": (base.get("fingerprint") or {}).get("id"), "quant": m.get("quant", "none"),
            "method": f"{method} r={rank}" if rank else method,
            "data": _data(data, m.get("parents") or []),
            "n_examples": data.get("n_examples"), "chosen_step": step,
            "scores": {k: v for k, v in scores.items() if k not in NOT_SCORES},
            "intervals": headline(m),
            "created": m.get("created")}


def listing(root: str | os.PathLike) -> list[dict[str, Any]]:
    return [summarize(d, root) for d in find_artifacts(root)]


def show(directory: str | os.PathLike) -> dict[str, Any]:
    """Everything about one artifact: manifest, adapter config, vLLM check, files."""
    from .swap import read_adapter_config, vllm_problems

    d = Path(directory)
    m = read_manifest(d)
    out: dict[str, Any] = {"path": str(d), "manifest": m, "headline": headline(m)}
    if (d / "adapter_config.json").exists():
        cfg = read_adapter_config(d)
        out["adapter_config"] = {k: v for k, v in cfg.items() if v not in (None, False, {}, [], "")}
        out["vllm_problems"] = vllm_problems(cfg)
    out["files"] = {f.name: f.stat().st_size for f in sorted(d.iterdir()) if f.is_file()}
    return out
