"""``lorasp compare A B``: paired statistics between two ``lorasp eval`` results on the same problems.

Each side is an eval output directory (or its ``results.json``). For every task both ran, the predictions files
(``predictions/<task>.jsonl``) give one correct/incorrect per problem id; the two runs must have the same ids (same
split, ``--limit`` and ``--seed``), and are compared problem by problem with ``lora_spec.stats.paired``: the change
from A to B in points, Newcombe's paired interval, the exact McNemar p-value and a "within noise" flag. Per suite a
macro summary combines the tasks (``stats.macro_paired``; p = exact McNemar on all the suite's problems pooled).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DataError
from .records import iter_jsonl
from .stats import fmt_acc, macro, macro_paired, mcnemar, paired


def _results_path(where: str) -> Path:
    p = Path(where)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise DataError(f"{where}: no results.json there (expected a 'lorasp eval --out DIR' directory or its "
                        f"results.json)")
    return p


def load_results(where: str) -> tuple[Path, dict, dict[str, dict[str, bool]]]:
    """``(results.json path, document, {task: {problem id: correct}})``; every bad field is a one-line error."""
    path = _results_path(where)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON document ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict) or not doc["tasks"]:
        raise DataError(f"{path}: field 'tasks' missing or empty (is this a lorasp eval results.json?)")
    per_task: dict[str, dict[str, bool]] = {}
    for name, row in doc["tasks"].items():
        if not isinstance(row, dict) or not isinstance(row.get("predictions_file"), str):
            raise DataError(f"{path}: tasks.{name}.predictions_file: missing (a results.json from lorasp eval "
                            f"records where each task's predictions are)")
        pf = path.parent / row["predictions_file"]
        correct: dict[str, bool] = {}
        if not pf.is_file():
            raise DataError(f"{pf}: cannot read the predictions of task {name!r} (no such file)")
        for i, rec in iter_jsonl(pf, invalid="not valid JSON"):
            if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("correct"), bool):
                raise DataError(f"{pf}:{i}: expected an object with 'id' and a boolean 'correct'")
            pid = str(rec["id"])
            if pid in correct:
                raise DataError(f"{pf}:{i}: problem id {pid!r} appears twice")
            correct[pid] = rec["correct"]
        n = row.get("n")
        if isinstance(n, int) and n != len(correct):
            raise DataError(f"{pf}: {len(correct)} predictions, but results.json says task {name!r} has n={n}")
        per_task[name] = correct
    return path, doc, per_task


def _suites(doc: dict, tasks: list[str]) -> dict[str, list[str]]:
    """The suites of A's results.json restricted to ``tasks`` (in that order); tasks in no suite go to 'all'."""
    out: dict[str, list[str]] = {}
    seen: set[str] = set()
    for s, summ in (doc.get("suites") or {}).items():
        ts = [t for t in (summ or {}).get("tasks", []) if t in tasks and t not in seen]
        if ts:
            out[s] = ts
            seen.update(ts)
    rest = [t for t in tasks if t not in seen]
    if rest:
        out["all"] = rest
    return out


def compare(a: str, b: str) -> dict[str, Any]:
    """Compare eval results ``a`` and ``b`` (directories or results.json files) task by task, paired by problem id.

    Returns ``{"a", "b", "tasks": {task: paired dict + n_correct_a/b}, "suites": {suite: macro summary},
    "only_a", "only_b", "notes"}``. Raises ``DataError`` (one line) when a common task's problems differ.
    """
    pa, da, ca = load_results(a)
    pb, db, cb = load_results(b)
    common = [t for t in ca if t in cb]
    only_a = [t for t in ca if t not in cb]
    only_b = [t for t in cb if t not in ca]
    if not common:
        raise DataError(f"{pa} and {pb} have no task in common ({', '.join(ca)} vs {', '.join(cb)})")
    tasks: dict[str, dict] = {}
    notes: list[str] = []
    for t in common:
        ida, idb = set(ca[t]), set(cb[t])
        if ida != idb:
            miss_b, miss_a = sorted(ida - idb), sorted(idb - ida)
            ex = (miss_b or miss_a)[0]
            raise DataError(f"task {t!r}: not the same problems ({len(ida)} in {pa}, {len(idb)} in {pb}; "
                            f"{len(miss_b)} only in A, {len(miss_a)} only in B, e.g. {ex!r}); compare runs with the "
                            f"same --limit and --seed")
        ids = list(ca[t])  # A's order
        va, vb = [ca[t][i] for i in ids], [cb[t][i] for i in ids]
        r = paired(va, vb)
        r.update(ka=sum(va), kb=sum(vb))
        ma, mb = (da["tasks"][t].get("mode"), db["tasks"][t].get("mode"))
        if ma != mb:
            notes.append(f"{t}: prompt mode {ma} in A, {mb} in B")
        calc_a, calc_b = (bool(d["tasks"][t].get("calculator")) for d in (da, db))
        if calc_a != calc_b:
            notes.append(f"{t}: the calculator (lorasp eval --calculator) was on in {'A' if calc_a else 'B'} only")
        tasks[t] = r
    suites: dict[str, dict] = {}
    for s, ts in _suites(da, common).items():
        pooled_a = [ca[t][i] for t in ts for i in ca[t]]
        pooled_b = [cb[t][i] for t in ts for i in ca[t]]
        summ = macro_paired([tasks[t] for t in ts], pooled_p=mcnemar(pooled_a, pooled_b))
        for side, k in (("a", "ka"), ("b", "kb")):
            m, lo, hi = macro([tasks[t][k] for t in ts], [tasks[t]["n"] for t in ts])
            summ[f"macro_{side}"], summ[f"macro_{side}_ci"] = m, [lo, hi]
        summ["task_names"] = ts
        summ["n"] = sum(tasks[t]["n"] for t in ts)
        suites[s] = summ
    return {"a": str(pa), "b": str(pb), "tasks": tasks, "suites": suites, "only_a": only_a, "only_b": only_b,
            "notes": notes}


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _verdict(r: dict) -> str:
    if r.get("within_noise", True):
        return "within noise"
    return "B better" if r["delta"] > 0 else "B worse"


def render(res: dict) -> str:
    """The comparison as markdown (what ``lorasp compare`` prints)."""
    lines = ["# lorasp compare", "", f"- A: `{res['a']}`", f"- B: `{res['b']}`",
             "- paired by problem id: change B − A in points, Newcombe's 95% paired interval, exact McNemar p; "
             "\"within noise\" = p ≥ 0.05", ""]
    lines += ["| task | n | A | B | B − A (points) | p | |", "|---|---:|---:|---:|---:|---:|---|"]
    for t, r in res["tasks"].items():
        lo, hi = r["delta_ci"]
        lines.append(f"| {t} | {r['n']} | {fmt_acc(r['ka'], r['n'])} | {fmt_acc(r['kb'], r['n'])} | "
                     f"{r['delta']:+.1f} [{lo:+.1f}, {hi:+.1f}] | {_p(r['p'])} | {_verdict(r)} |")
    lines.append("")
    for s, m in res["suites"].items():
        lo, hi = m["delta_ci"]
        lines.append(f"Suite {s} ({m['tasks']} task(s), {m['n']} problems): macro A {100 * m['macro_a']:.1f}% "
                     f"[{100 * m['macro_a_ci'][0]:.1f}, {100 * m['macro_a_ci'][1]:.1f}] → B "
                     f"{100 * m['macro_b']:.1f}% [{100 * m['macro_b_ci'][0]:.1f}, {100 * m['macro_b_ci'][1]:.1f}]; "
                     f"change {m['delta']:+.1f} points [{lo:+.1f}, {hi:+.1f}], pooled McNemar p={_p(m['p'])}"
                     + (", within noise" if m["within_noise"] else "")
                     + f"; {m['better']} task(s) significantly better, {m['worse']} worse.")
    if res["only_a"] or res["only_b"]:
        lines.append("")
        lines.append("Not compared (in one run only): "
                     + "; ".join(x for x in (f"A: {', '.join(res['only_a'])}" if res["only_a"] else "",
                                             f"B: {', '.join(res['only_b'])}" if res["only_b"] else "") if x) + ".")
    if res["notes"]:
        lines.append("")
        lines.append("Note: " + "; ".join(res["notes"]) + ".")
    return "\n".join(lines) + "\n"


__all__ = ["compare", "render", "load_results"]
