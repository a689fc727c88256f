"""``lorasp adapters list DIR`` / ``lorasp adapters show ARTIFACT``: what lorasp artifacts a folder holds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..artifact_files import MANIFEST, read_manifest
from ..errors import DataError
from ..paths import walk_dirs
from ..prompts import artifact_prompting
from .artifact import read_adapter_config, vllm_problems

MAX_DEPTH = 6


def find_artifacts(root: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every directory under ``root`` (itself included) holding a ``lorasp.json``; temp/hidden dirs skipped."""

    return [d for d, filenames in walk_dirs(root, max_depth) if MANIFEST in filenames]


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


def score_summary(scores: dict[str, Any], limit: int = 4, intervals: dict[str, dict] | None = None) -> str:
    """``ood=12.0% [8.1, 17.3] n=150`` where the n is known (``headline``), else ``key=12.0%``."""
    parts = []
    # headline first: aggregates (in_dist, ood, generic) before per-task keys (ood/svamp, ...)
    scores = dict(sorted(((k, v) for k, v in scores.items() if k not in NOT_SCORES),
                         key=lambda kv: ("/" in kv[0], kv[0].endswith("_loss"))))
    for k, v in list(scores.items())[:limit]:
        if isinstance(v, dict):  # {"accuracy": 0.3, ...} per suite
            v = v.get("accuracy", v.get("score", next(iter(v.values()), None)))
        if k.endswith("_loss") and isinstance(v, (int, float)):  # a reference loss (per-token NLL), not a rate
            parts.append(f"{k}={v:.4f}")
            continue
        iv = (intervals or {}).get(k)
        if iv and isinstance(v, (int, float)):
            parts.append(f"{k}={100 * v:.1f}% [{100 * iv['ci'][0]:.1f}, {100 * iv['ci'][1]:.1f}] n={iv['n']}")
            continue
        parts.append(f"{k}={100 * v:.1f}%" if isinstance(v, (int, float)) else f"{k}={v}")
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


def before_after_line(m: dict[str, Any]) -> str | None:
    """Before -> after in one line: the fit's held-out test scores when it measured them (the quickstart), else
    the selection score of the base model (step 0) and of the chosen checkpoint."""
    ba = m.get("before_after") or {}
    if isinstance(ba, dict) and isinstance(ba.get("before"), dict) and isinstance(ba.get("after"), dict):
        parts = []
        for task, b in ba["before"].items():
            a = ba["after"].get(task)
            if isinstance(b, dict) and isinstance(a, dict) and "accuracy" in b and "accuracy" in a:
                parts.append(f"{task} {100 * b['accuracy']:.1f}% -> {100 * a['accuracy']:.1f}%")
        if parts:
            return "; ".join(parts)
    step, scores = _chosen(m)
    rule = str((m.get("selection") or {}).get("rule") or "")
    before = next((cp.get("scores") or {} for cp in m.get("checkpoints") or []
                   if isinstance(cp, dict) and cp.get("step") == 0), {})
    key = rule if rule in scores else next((k for k in ("in_dist", "ood", "generic") if k in scores), None)
    if key and isinstance(scores.get(key), (int, float)):
        b = before.get(key)
        return (f"{key} {100 * b:.1f}% -> " if isinstance(b, (int, float)) else f"{key} ") + \
            f"{100 * scores[key]:.1f}% (step {step})"
    return None


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
            "intervals": headline(m), "before_after": before_after_line(m),
            "created": m.get("created")}


def listing(root: str | os.PathLike) -> list[dict[str, Any]]:
    return [summarize(d, root) for d in find_artifacts(root)]


def show(directory: str | os.PathLike) -> dict[str, Any]:
    """Everything about one artifact: manifest, adapter config, vLLM check, files."""

    d = Path(directory)
    m = read_manifest(d)
    out: dict[str, Any] = {"path": str(d), "manifest": m, "headline": headline(m)}
    if (d / "adapter_config.json").exists():
        cfg = read_adapter_config(d)
        out["adapter_config"] = {k: v for k, v in cfg.items() if v not in (None, False, {}, [], "")}
        out["vllm_problems"] = vllm_problems(cfg)
    out["files"] = {f.name: f.stat().st_size for f in sorted(d.iterdir()) if f.is_file()}
    return out


def summary_lines(info: dict[str, Any]) -> list[str]:
    """``lorasp adapters show``: one screen with the headline first (``--full`` prints the whole manifest)."""
    m = info["manifest"]
    row = summarize(Path(info["path"]))
    base = m.get("base") or {}
    lines = [f"{info['path']}: {m.get('kind', 'adapter')} on {base.get('name')} "
             f"[{(base.get('fingerprint') or {}).get('id')}], quant {m.get('quant', 'none')}, {row.get('method')}"]
    if row.get("before_after"):
        lines.append(f"  before -> after:  {row['before_after']}")
    data = m.get("data") or {}
    if row.get("data"):
        lines.append(f"  data:             {row['data']}" + (f", {data['n_examples']} training rows"
                                                             if data.get("n_examples") else ""))
    fm = m.get("formats") or {}
    if fm:
        mix = ", ".join(f"{k}={v:g}" for k, v in fm.items() if isinstance(v, (int, float)) and v > 0)

        ap = artifact_prompting(m)
        lines.append(f"  formats:          {mix}; main mode {ap['mode']}"
                     + (", chat template" if ap["chat"] else "") + (f", loss {m['loss']}" if m.get("loss") else ""))
    tr = m.get("train") or {}
    if tr:
        fl = tr.get("final_loss")
        lines.append(f"  training:         {tr.get('steps')} steps, lr {tr.get('lr')}, batch {tr.get('batch_size')}"
                     + (f", final loss {fl:.4f}" if isinstance(fl, (int, float)) else "")
                     + (f", {tr['train_seconds']:.0f} s" if isinstance(tr.get("train_seconds"), (int, float)) else ""))
    sel = m.get("selection") or {}
    if sel:
        sc = score_summary({k: v for k, v in (row.get("scores") or {}).items() if "/" not in k},
                         intervals=row.get("intervals"))
        lines.append(f"  selection:        {sel.get('rule')} -> step {sel.get('chosen_step')}"
                     + (f" ({sc})" if sc else ""))
    if m.get("parents"):
        lines.append("  parents:          " + ", ".join(f"{p.get('path')} x {p.get('weight', 1)}"
                                                       for p in m["parents"]))
    if "adapter_config" in info:
        probs = info["vllm_problems"]
        lines.append("  vLLM:             " + ("loads unchanged" if not probs else "PROBLEMS: " + "; ".join(probs)))
    files = info.get("files") or {}
    total = sum(files.values())
    lines.append(f"  files:            {len(files)} ({total / 1e6:.1f} MB): " + ", ".join(files))
    if m.get("created"):
        lines.append(f"  created:          {m['created']}")
    return lines
