"""``lorasp runs [DIR]``: every teach run, fit artifact and eval run under a folder, each with its headline figure.

A teach run is a folder with the ``manifest.json`` that ``lorasp teach`` writes, a fit (or merged/combined
model) one with ``lorasp.json`` (see :mod:`lora_spec.adapters.listing`), an eval run one with ``results.json``
(an interrupted eval: its eval journal, status ``interrupted``).
Figures are percents everywhere; an eval's headline is its strict accuracy with the flexible one beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .adapters.listing import summarize
from .errors import DataError
from .eval_journal import JOURNAL_DIR, journal_rows
from .paths import walk_dirs

MAX_DEPTH = 6


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"


def _teach_row(d: Path, m: dict[str, Any]) -> dict[str, Any]:
    ds = m.get("dataset") if isinstance(m.get("dataset"), dict) else {"name": m.get("dataset")}
    t = m.get("teacher") if isinstance(m.get("teacher"), dict) else {"name": m.get("teacher")}
    c, a = m.get("counts") or {}, m.get("accuracy") or {}
    what = f"{ds.get('name')}:{ds.get('split')} by {t.get('name')}"
    head = (f"{c.get('received')}/{c.get('requested')} samples, {c.get('correct')} correct; first-sample "
            f"{_pct(a.get('first_sample'))}, majority {_pct(a.get('majority_vote'))}")
    sc = m.get("scores") if isinstance(m.get("scores"), dict) else None
    if sc:  # lorasp score: whose top-k the exported samples carry
        head += (f"; top-{sc.get('top_logprobs')} scored by {sc.get('scorer')} ({sc.get('model')}): "
                 f"{sc.get('scored')}/{sc.get('samples')}")
    return {"kind": "teach", "what": what, "headline": head, "status": m.get("status"), "created": m.get("created")}


def _eval_row(d: Path, doc: dict[str, Any]) -> dict[str, Any]:
    model = (doc.get("model") or {}).get("name")
    adapter = (doc.get("adapter") or {}).get("path")
    what = f"{model}" + (f" + {Path(adapter).name}" if adapter else "")
    parts = []
    for s, summ in (doc.get("suites") or {}).items():
        flex = summ.get("flexible_macro_accuracy")
        modes = sorted({(doc.get("tasks") or {}).get(t, {}).get("mode") for t in summ.get("tasks") or []} - {None})
        parts.append(f"{s} {_pct(summ.get('macro_accuracy'))}" + (f" (flexible {_pct(flex)})" if flex is not None
                                                                  else "") + (f" {','.join(modes)}" if modes else "")
                     + f", n={summ.get('n')}")
    return {"kind": "eval", "what": what, "headline": "; ".join(parts), "status": "complete",
            "created": doc.get("created")}


def _fit_row(d: Path) -> dict[str, Any]:
    r = summarize(d)
    if r.get("error"):
        return {"kind": "error", "what": "", "headline": r["error"], "status": "error", "created": None}
    what = f"{r['base']} {r['method']}" + (f", {r['data']}" if r.get("data") else "")
    return {"kind": "fit" if r["kind"] in ("adapter", "full") else r["kind"], "what": what,
            "headline": r.get("before_after") or (f"step {r['chosen_step']}" if r.get("chosen_step") else ""),
            "status": "complete", "created": r.get("created")}


def _read(p: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{p}: unreadable ({type(exc).__name__})") from None
    return doc if isinstance(doc, dict) else None


def find_runs(root: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[dict[str, Any]]:
    """One row per run under ``root`` (itself included): path, kind (teach|fit|merged|combined|eval), what,
    headline, status, created. An unreadable file is a row of kind ``error``."""

    root = Path(root)
    rows = []
    # an eval's predictions/ and a fit's checkpoints (step-*) hold no runs of their own
    for d, filenames in walk_dirs(root, max_depth, skip=lambda n: n == "predictions" or n.startswith("step-")):
        rel = str(d.relative_to(root)) if d != root else str(d)
        try:
            if "lorasp.json" in filenames:
                row = _fit_row(d)
            elif "results.json" in filenames and (doc := _read(d / "results.json")) and "tasks" in doc:
                row = _eval_row(d, doc)
                if (d / JOURNAL_DIR).is_dir() and (kept := journal_rows(d)):  # an `eval --overwrite` was cut
                    row.update(status="interrupted", headline=f"{row['headline']}; being replaced: an --overwrite "
                               f"run was cut with {sum(kept.values())} predictions kept (rerun it without "
                               f"--overwrite to continue)")
            elif "manifest.json" in filenames and (doc := _read(d / "manifest.json")) and "counts" in doc:
                row = _teach_row(d, doc)
            elif (d / JOURNAL_DIR).is_dir() and (kept := journal_rows(d)):  # a cut eval (lora_spec.eval_journal)
                row = {"kind": "eval", "what": "interrupted eval", "status": "interrupted", "created": None,
                       "headline": f"{sum(kept.values())} predictions kept ({', '.join(sorted(kept))}); rerun its "
                                   f"command to continue"}
            else:
                continue
        except DataError as exc:
            row = {"kind": "error", "what": "", "headline": exc.message, "status": "error", "created": None}
        rows.append({"path": rel, **row})
    order = {"teach": 0, "fit": 1, "merged": 2, "combined": 2, "eval": 3, "error": 4}
    return sorted(rows, key=lambda r: (order.get(r["kind"], 5), r["path"]))
