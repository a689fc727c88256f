"""The specialization report of an artifact: ``report.md`` and ``curves.png``, rendered from ``lorasp.json`` alone.

The manifest fields used (all written by ``fit``)::

    base {name}, method, quant, peft {r, alpha}, loss, data {source, n_examples},
    selection {rule, description, chosen_step, eval_every, sets {in_dist|ood|generic: {datasets, limit, mode,
               seed, tasks {task: n}}}, train_seconds, eval_seconds},
    checkpoints [{step, loss, scores {in_dist, ood, generic, eval_seconds, "<set>/<task>": acc}, path, pruned}],
    train {seconds | train_seconds, steps}

Accuracies are fractions in [0, 1] in the manifest and percentages in the report, each with its 95% interval
(Wilson; the generic set's macro average: ``lora_spec.stats.macro``) and its n. Checkpoints are
compared paired, problem by problem, from ``checkpoints[*].correct`` (per-problem results; older artifacts: the
artifact's ``heldout_predictions.jsonl``): change in points, Newcombe's interval, exact McNemar p, "within noise".
``lorasp report ARTIFACT`` re-renders both files from the artifact alone.

Over 500 lines: the report is one document (markdown tables, the paired comparisons behind them and the curves
figure) read from one manifest; the readers of the manifest fields above are shared by all of its parts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from .artifact_files import MANIFEST, read_manifest
from .errors import DataError
from .records import iter_jsonl
from .selection import (CORRECT, EVAL_SECONDS, LOSS_KEYS, PREDICTIONS_FILE, SETS, candidates, correct_vector,
                        parse_rule, select_checkpoint)
from .selection.rules import finite_number
from .stats import fmt_paired, macro, paired, wilson

REPORT_MD = "report.md"
CURVES_PNG = "curves.png"
PNG_SIZE = (1000, 700)  # pixels (width, height) of curves.png
_DPI = 100
SET_TITLES = {"in_dist": "in-distribution", "ood": "out-of-distribution", "generic": "generic (BBH)"}
_COLORS = {"in_dist": "#1f77b4", "ood": "#d62728", "generic": "#2ca02c"}


# --------------------------------------------------------------------------------------------- reading


def checkpoints_of(manifest: dict, where: str = MANIFEST) -> list[dict]:
    """The manifest's checkpoints, validated and in step order; a bad entry names its index and field."""
    cks = manifest.get("checkpoints")
    if not cks:
        raise DataError(f"{where}: no 'checkpoints' recorded (was the artifact fit with held-out evaluation?)")
    if not isinstance(cks, list):
        raise DataError(f"{where}: field 'checkpoints' must be a list, got {type(cks).__name__}")
    out = []
    for i, c in enumerate(cks):
        if not isinstance(c, dict):
            raise DataError(f"{where}: checkpoints[{i}]: expected an object, got {type(c).__name__}")
        step = c.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise DataError(f"{where}: checkpoints[{i}].step: expected an integer >= 0, got {step!r}")
        scores = c.get("scores", {})
        if scores is None:
            scores = {}
        if not isinstance(scores, dict):
            raise DataError(f"{where}: checkpoints[{i}].scores: expected an object, got {type(scores).__name__}")
        for k, v in scores.items():
            if k == CORRECT:
                continue
            if v is not None and finite_number(v) is None:
                raise DataError(f"{where}: checkpoints[{i}].scores.{k}: expected a number, got {v!r}")
        if c.get("loss") is not None and finite_number(c.get("loss")) is None and not (
                isinstance(c.get("loss"), float) and math.isnan(c["loss"])):
            raise DataError(f"{where}: checkpoints[{i}].loss: expected a number, got {c.get('loss')!r}")
        out.append(c)
    steps = [c["step"] for c in out]
    if len(set(steps)) != len(steps):
        dup = next(s for s in steps if steps.count(s) > 1)
        raise DataError(f"{where}: checkpoints: step {dup} appears twice")
    return sorted(out, key=lambda c: c["step"])


def chosen_step(manifest: dict, checkpoints: list[dict], where: str = MANIFEST) -> int | None:
    """The manifest's ``selection.chosen_step``; without one, what its rule (default ``last``) picks."""
    sel = manifest.get("selection") or {}
    step = sel.get("chosen_step")
    if step is not None:
        if not any(c["step"] == step for c in checkpoints):
            raise DataError(f"{where}: selection.chosen_step {step!r} is not one of the checkpoints' steps "
                            f"({', '.join(str(c['step']) for c in checkpoints)})")
        return int(step)
    if not candidates(checkpoints):
        return None
    return int(select_checkpoint(checkpoints, sel.get("rule") or "last")["step"])


def _set_names(checkpoints: list[dict]) -> list[str]:
    present = {k for c in checkpoints for k, v in (c.get("scores") or {}).items() if v is not None}
    return [s for s in SETS if s in present]


def _task_keys(checkpoints: list[dict]) -> list[str]:
    keys = []
    for c in checkpoints:
        for k in (c.get("scores") or {}):
            if "/" in k and k not in keys:
                keys.append(k)
    order = {s: i for i, s in enumerate(SETS)}
    return sorted(keys, key=lambda k: (order.get(k.split("/", 1)[0], 9), keys.index(k)))


def task_sizes(manifest: dict) -> dict[str, int]:
    """``{"<set>/<task>": n}`` from ``selection.sets`` (the held-out problems per task)."""
    out: dict[str, int] = {}
    for s, d in ((manifest.get("selection") or {}).get("sets") or {}).items():
        for t, n in ((d or {}).get("tasks") or {}).items():
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                out[f"{s}/{t}"] = n
    return out


def _sizes(manifest: dict, vectors: dict[int, dict[str, list[bool]]]) -> dict[str, int]:
    """Task sizes from ``selection.sets``, else from the per-problem results (a fit with its own evaluator)."""
    sizes = task_sizes(manifest)
    if not sizes:
        for vecs in vectors.values():
            for k, v in vecs.items():
                if "/" in k and v:
                    sizes.setdefault(k, len(v))
    return sizes


def _set_keys(key: str, sizes: dict[str, int]) -> list[str]:
    return [k for k in sizes if k.split("/", 1)[0] == key] if "/" not in key else ([key] if key in sizes else [])


def counts(ck: dict, key: str, sizes: dict[str, int], vectors: dict | None = None) -> list[tuple[int, int]] | None:
    """Per task (k correct, n) behind a score key (a set: each of its tasks; a task: itself), from the per-problem
    results when there are any, else from the accuracy and the recorded task size; None when unknown."""
    keys = _set_keys(key, sizes)
    if not keys:
        return None
    out = []
    for k in keys:
        vec = (vectors or {}).get(k)
        if vec is not None:
            out.append((sum(vec), len(vec)))
            continue
        acc = finite_number((ck.get("scores") or {}).get(k))
        if acc is None and len(keys) == 1:
            acc = finite_number((ck.get("scores") or {}).get(key))
        if acc is None:
            total = finite_number((ck.get("scores") or {}).get(key))
            if key in ("in_dist", "ood") and total is not None:  # micro averages: the set's own count will do
                n = sum(sizes[x] for x in keys)
                return [(int(round(total * n)), n)]
            return None
        out.append((int(round(acc * sizes[k])), sizes[k]))
    return out


def interval(ck: dict, key: str, sizes: dict[str, int], vectors: dict | None = None) -> tuple[float, float] | None:
    """The 95% interval of a score: Wilson for a task, in_dist and ood (micro over problems); for generic, the
    macro average over BBH tasks (``stats.macro``: the pooled Wilson interval for equal task sizes, else MOVER)."""
    c = counts(ck, key, sizes, vectors)
    if not c:
        return None
    if key == "generic":
        _m, lo, hi = macro([k for k, _ in c], [n for _, n in c])
        return lo, hi
    return wilson(sum(k for k, _ in c), sum(n for _, n in c))


def _ci(iv: tuple[float, float] | None) -> str:
    return "–" if iv is None else f"[{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]"


def read_predictions(path: str | os.PathLike) -> list[dict]:
    """The rows of ``heldout_predictions.jsonl``; a bad line is a one-line error naming file:line."""

    rows = []
    p = Path(path)
    for i, r in iter_jsonl(p, invalid="not valid JSON"):
        if not isinstance(r, dict) or not isinstance(r.get("step"), int) or not isinstance(r.get("correct"), bool) \
                or not isinstance(r.get("set"), str) or not isinstance(r.get("task"), str):
            raise DataError(f"{p}:{i}: expected an object with integer 'step', 'set', 'task' and boolean 'correct'")
        rows.append(r)
    return rows


def correct_vectors(manifest: dict, checkpoints: list[dict],
                    predictions: list[dict] | None = None) -> dict[int, dict[str, list[bool]]]:
    """Per step, per score key (``<set>/<task>`` and the set names): the per-problem results, in the problem order
    of ``selection.sets``. From ``checkpoints[*].correct``, else from held-out prediction rows."""
    out: dict[int, dict[str, list[bool]]] = {}
    for c in checkpoints:
        bits = c.get(CORRECT)
        if isinstance(bits, dict):
            vecs = {k: [ch == "1" for ch in v] for k, v in bits.items() if isinstance(v, str)}
            for s in SETS:
                v = correct_vector(c, s)
                if v is not None:
                    vecs[s] = v
            out[int(c["step"])] = vecs
    if predictions:
        ids = {s: (d or {}).get("ids") or {} for s, d in ((manifest.get("selection") or {}).get("sets") or {}).items()}
        grouped: dict[int, dict[str, dict[str, bool]]] = {}
        for r in predictions:
            grouped.setdefault(r["step"], {}).setdefault(f"{r['set']}/{r['task']}", {})[str(r.get("id"))] = r["correct"]
        for step, per in grouped.items():
            if step in out:
                continue
            vecs = {}
            for k, m in per.items():
                s, t = k.split("/", 1)
                order = [str(i) for i in (ids.get(s) or {}).get(t) or []] or list(m)
                if set(order) == set(m):
                    vecs[k] = [m[i] for i in order]
            for s in SETS:
                parts = [v for k, v in vecs.items() if k.split("/", 1)[0] == s]
                if parts:
                    vecs[s] = [x for v in parts for x in v]
            out[step] = vecs
    return out


def pct(x: Any) -> str:
    v = finite_number(x)
    return "–" if v is None else f"{100 * v:.1f}"


def _loss(x: Any) -> str:
    v = finite_number(x)
    return "–" if v is None else f"{v:.4f}"


def _secs(x: Any) -> str:
    v = finite_number(x)
    return "–" if v is None else f"{v:.1f}"


def times(manifest: dict, checkpoints: list[dict]) -> tuple[float | None, float | None]:
    """(train seconds, eval seconds). Eval is the sum over checkpoints unless the manifest states it."""
    sel = manifest.get("selection") or {}
    train = manifest.get("train") or {}
    t = None
    for v in (sel.get("train_seconds"), train.get("train_seconds"), train.get("seconds"),
              train.get("wall_seconds")):
        if finite_number(v) is not None:
            t = finite_number(v)
            break
    e = finite_number(sel.get("eval_seconds"))
    if e is None:
        vals = [finite_number((c.get("scores") or {}).get(EVAL_SECONDS)) for c in checkpoints]
        vals = [v for v in vals if v is not None]
        e = sum(vals) if vals else None
    return t, e


# --------------------------------------------------------------------------------------------- markdown


@dataclasses.dataclass
class _Report:
    """What every section of ``report.md`` reads: the checkpoints, the chosen one, the sets and their hits."""
    manifest: dict
    cks: list[dict]
    chosen: int | None
    last: int
    sets: list[str]
    vectors: dict[int, dict[str, list[bool]]]
    sizes: dict[str, int]
    rule: str
    rule_desc: str

    @classmethod
    def of(cls, manifest: dict, predictions: list[dict] | None) -> "_Report":
        cks = checkpoints_of(manifest)
        vectors = correct_vectors(manifest, cks, predictions)
        sel = manifest.get("selection") or {}
        rule = sel.get("rule") or "last"
        try:
            rule_desc = sel.get("description") or parse_rule(rule).describe()
        except ValueError:
            rule_desc = str(rule)
        return cls(manifest, cks, chosen_step(manifest, cks), cks[-1]["step"], _set_names(cks), vectors,
                   _sizes(manifest, vectors), rule, rule_desc)

    def set_n(self, s: str) -> int:
        return sum(n for k, n in self.sizes.items() if k.split("/", 1)[0] == s)


def render_markdown(manifest: dict, name: str = "artifact", predictions: list[dict] | None = None) -> str:
    """``report.md``. ``predictions``: the rows of ``heldout_predictions.jsonl`` (for the paired comparisons of
    artifacts whose checkpoints do not record ``correct``). The sections, in the order they appear."""
    r = _Report.of(manifest, predictions)
    lines = [f"# Specialization report: {name}", "", *_header_lines(r), *_main_table(r), *_test_before_after(r),
             *_progression(r), *_paired_section(r.cks, r.chosen, r.last, r.sets, r.vectors, r.sizes, r.rule),
             *_per_task_table(r), *_sets_lines(r), *_cost_lines(r),
             f"Curves: `{CURVES_PNG}`. Rebuild both files with `lorasp report ARTIFACT`."]
    return "\n".join(lines) + "\n"


def _data_source(data: dict) -> str | None:
    src = data.get("source") if isinstance(data.get("source"), str) else None
    if not src and data.get("dataset"):
        src = str(data["dataset"]) + (f":{data['split']}" if data.get("split") else "")
        if data.get("teacher"):
            src += f", teacher {data['teacher']}"
    if not src and data.get("path"):
        src = f"teach run {data['path']}"
    return src


def _header_lines(r: _Report) -> list[str]:
    """The one-line facts (base, method, quant, data) and the selection rule with the chosen step."""
    m = r.manifest
    facts = []
    base = m.get("base") or {}
    if base.get("name"):
        facts.append(f"base `{base['name']}`")
    if m.get("method"):
        peft = m.get("peft") or {}
        facts.append(f"method {m['method']}" + (f" r={peft['r']}" if peft.get("r") else ""))
    if m.get("quant"):
        facts.append(f"quant {m['quant']}")
    data = m.get("data") or {}
    src = _data_source(data)
    if src:
        n = data.get("n_examples")
        cut, fewer = data.get("truncated") or 0, sum((data.get("fewer_shots") or {}).values())
        notes = ([f"{n} examples"] if n else []) + ([f"{fewer} in-context with fewer shots to fit the length"]
                                                    if fewer else []) + ([f"{cut} cut to the length"] if cut else [])
        facts.append(f"data {src}" + (f" ({', '.join(notes)})" if notes else ""))
    lines = [" · ".join(facts), ""] if facts else []
    if r.chosen is not None:
        lines.append(f"Selection: `--select-by {r.rule}`, {r.rule_desc}. **Chosen: step {r.chosen}**"
                     + (" (the last)." if r.chosen == r.last else f" (of {r.last} steps)."))
    else:
        lines.append("Selection: no trained checkpoint was evaluated.")
    return lines + [""]


def _main_table(r: _Report) -> list[str]:
    """One row per checkpoint: train loss, each set's accuracy with its interval, eval seconds, notes."""
    head = ["step", "train loss"]
    for s in r.sets:
        n = r.set_n(s)
        head += [SET_TITLES.get(s, s) + " %", f"{s} 95% CI" + (f" (n={n})" if n else "")]
    loss_keys = [k for k in LOSS_KEYS if any(finite_number((c.get("scores") or {}).get(k)) is not None for c in r.cks)]
    head += loss_keys + ["eval s", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * (len(head) - 1) + ["---"]) + "|"]
    for c in r.cks:
        sc = c.get("scores") or {}
        notes = [text for cond, text in ((c["step"] == 0, "before (base model)"), (c["step"] == r.chosen, "**chosen**"),
                                         (c["step"] == r.last and c["step"] != 0, "after (last)"),
                                         (c.get("pruned"), "pruned from disk")) if cond]
        loss = finite_number(c.get("loss"))
        row = [str(c["step"]), "–" if loss is None else f"{loss:.4f}"]
        for s in r.sets:
            row += [pct(sc.get(s)), _ci(interval(c, s, r.sizes, r.vectors.get(c["step"])) if s in sc else None)]
        row += [_loss(sc.get(k)) for k in loss_keys]
        row += [_secs(sc.get(EVAL_SECONDS)), ", ".join(notes)]
        if c["step"] == r.chosen:
            row = [f"**{x}**" if i < len(row) - 1 and x != "–" else x for i, x in enumerate(row)]
        lines.append("| " + " | ".join(row) + " |")
    notes = ["", "train loss: the mean over the optimizer steps since the previous checkpoint (every step's "
                 "loss is in the lower panel of the curves)."]
    if loss_keys:
        notes.append("`<set>_loss`: the mean per-token NLL of the held-out reference solutions in the set's prompt "
                     "mode (lower is better; no generation, so it is far less noisy than accuracy, but it measures "
                     "imitation of the references, not reasoning).")
    return lines + notes + [""]


def _test_before_after(r: _Report) -> list[str]:
    """The held-out test problems scored before training and after (``before_after`` in the manifest)."""
    ba = r.manifest.get("before_after") or {}
    if not (isinstance(ba, dict) and ba.get("before") and ba.get("after")):
        return []
    lines = ["Held-out test problems, scored before training and after (the exported weights):", ""]
    for task, b in ba["before"].items():
        a = (ba.get("after") or {}).get(task) or {}
        if isinstance(b, dict) and a:
            lines.append(f"- {task}: {pct(b.get('accuracy'))} ({b.get('correct')}/{b.get('n')}) → "
                         f"{pct(a.get('accuracy'))} ({a.get('correct')}/{a.get('n')}), {b.get('mode')}")
    return lines + [""]


def _progression(r: _Report) -> list[str]:
    """Before → chosen → after per set, and a note when the base beats every trained checkpoint on the rule."""
    by_step = {c["step"]: c for c in r.cks}
    before = by_step.get(0)
    if not r.sets or before is None or r.chosen is None:
        return []
    lines = ["Before → chosen → after (accuracy %, change vs. before in points):", ""]
    for s in r.sets:
        b, ch, af = (finite_number((by_step[k].get("scores") or {}).get(s)) for k in (0, r.chosen, r.last))

        def d(x):
            return "" if x is None or b is None else f" ({100 * (x - b):+.1f})"
        lines.append(f"- {SET_TITLES.get(s, s)}: {pct(b)} → {pct(ch)}{d(ch)} → {pct(af)}{d(af)}")
    lines.append("")
    try:
        rule = parse_rule(r.rule)
    except ValueError:
        rule = None
    if rule is not None and rule.kind == "score":
        from .selection import checkpoint_value

        vb, vc = checkpoint_value(before, rule), checkpoint_value(by_step[r.chosen], rule)
        if vb is not None and vc is not None and vb > vc:
            lines += [f"Note: the base model (step 0) scores higher than every trained checkpoint on `{r.rule}`; "
                      "training did not help on this criterion.", ""]
    return lines


def _per_task_table(r: _Report) -> list[str]:
    tkeys = _task_keys(r.cks)
    if not tkeys:
        return []
    lines = ["Per task (accuracy % [95% Wilson interval]):", "",
             "| step | " + " | ".join(k + (f" (n={r.sizes[k]})" if k in r.sizes else "") for k in tkeys) + " |",
             "|" + "|".join(["---:"] * (len(tkeys) + 1)) + "|"]
    for c in r.cks:
        sc = c.get("scores") or {}
        mark = " ✓" if c["step"] == r.chosen else ""
        cells = [pct(sc.get(k)) + ("" if sc.get(k) is None or k not in r.sizes else
                                   " " + _ci(interval(c, k, r.sizes, r.vectors.get(c["step"])))) for k in tkeys]
        lines.append(f"| {c['step']}{mark} | " + " | ".join(cells) + " |")
    return lines + [""]


def _sets_lines(r: _Report) -> list[str]:
    """What each held-out set was: its problems per task, prompt mode and seed."""
    sdesc = (r.manifest.get("selection") or {}).get("sets") or {}
    if not sdesc:
        return []
    lines = ["Held-out sets:", ""]
    for s in SETS:
        d = sdesc.get(s)
        if not d:
            continue
        if not d.get("datasets"):
            lines.append(f"- {s}: off")
            continue
        tasks = d.get("tasks") or {}
        n = sum(int(v) for v in tasks.values()) if tasks else d.get("limit")
        detail = ", ".join(f"{k} {v}" for k, v in tasks.items()) if tasks else ", ".join(d["datasets"])
        lines.append(f"- {s}: {n} problems ({detail}); prompt mode {d.get('mode')}, seed {d.get('seed')}")
    return lines + [""]


def _cost_lines(r: _Report) -> list[str]:
    """Training seconds and held-out evaluation seconds (and their ratio)."""
    t, e = times(r.manifest, r.cks)
    n_evals = sum(1 for c in r.cks if (c.get("scores") or {}))
    if not n_evals:
        return ["No held-out evaluation ran (--eval-every 0): the last step was exported. "
                + (f"Training took {_secs(t)} s." if t is not None else ""), ""]
    if t is None and e is None:
        return []
    frac = f" = {100 * e / t:.0f}% of training time" if (t and e is not None) else ""
    return [f"Cost: training {_secs(t)} s; held-out evaluation {_secs(e)} s over {n_evals} evaluations{frac}.", ""]


def _paired_section(cks: list[dict], chosen: int | None, last: int, sets: list[str],
                    vectors: dict[int, dict[str, list[bool]]], sizes: dict[str, int], rule: str) -> list[str]:
    """Before vs chosen/after and chosen vs every other checkpoint, paired on the same problems, per set."""
    if chosen is None or not sets:
        return []
    have = [s for s in sets if s in vectors.get(chosen, {})]
    if not have:
        return ["Paired comparisons: not available (this artifact records no per-problem held-out results).", ""]
    pairs: list[tuple[str, int, int]] = []  # (label, step x, step y): change from x to y
    if 0 in vectors:
        pairs.append((f"before (0) → chosen ({chosen})", 0, chosen))
        if last != chosen:
            pairs.append((f"before (0) → after ({last})", 0, last))
    for c in cks:
        st = int(c["step"])
        if st not in (0, chosen) and st in vectors:
            pairs.append((f"step {st} → chosen ({chosen})", st, chosen))
    if not pairs:
        return []
    lines = ["Paired comparisons (the same held-out problems at every checkpoint): change in accuracy points "
             "[Newcombe's 95% interval], exact McNemar p; *within noise* = p ≥ 0.05, the data do not show a "
             "difference (the flag follows the exact test; near p = 0.05 the interval, a separate method, can "
             "just exclude 0).", "",
             "| comparison | " + " | ".join(SET_TITLES.get(s, s) for s in have) + " |",
             "|---|" + "|".join(["---"] * len(have)) + "|"]
    noise: dict[str, list[int]] = {s: [] for s in have}
    for label, x, y in pairs:
        cells = []
        for s in have:
            vx, vy = vectors.get(x, {}).get(s), vectors.get(y, {}).get(s)
            if vx is None or vy is None or len(vx) != len(vy):
                cells.append("–")
                continue
            r = paired(vx, vy)
            cells.append(fmt_paired(r))
            if r["within_noise"] and x != 0:
                noise[s].append(x)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    try:
        r = parse_rule(rule)
        key = r.weights[0][0] if r.kind == "score" and len(r.weights) == 1 else None
    except ValueError:
        key = None
    if key in noise:
        others = sorted(noise[key])
        lines.append(f"On `{key}`, the selection score, "
                     + (("step " if len(others) == 1 else "steps ") + ", ".join(map(str, others))
                        + (" is" if len(others) == 1 else " are") + f" within noise of the chosen step {chosen}: "
                        f"the held-out set cannot tell them apart." if others else
                        f"every other evaluated checkpoint differs significantly from the chosen step {chosen}."))
        lines.append("")
    if "generic" in have and len({n for k, n in sizes.items() if k.startswith("generic/")}) > 1:
        lines.append("(generic: the paired test pools the BBH problems; its tasks differ in size, so the pooled "
                     "change can differ from the change of the macro average.)")
        lines.append("")
    return lines


# --------------------------------------------------------------------------------------------- plot


def render_png(manifest: dict, path: str | os.PathLike, name: str = "artifact",
               predictions: list[dict] | None = None) -> Path:
    """Three accuracy curves against steps with their 95% intervals as shaded bands (chosen step marked) above the
    training loss (and the held-out reference losses, where sets score them); ``PNG_SIZE`` pixels.

    Over 80 lines: one figure drawn top to bottom (each panel's curves, bands, chosen-step marker and legend on the
    axes the previous lines made); it reads as the picture it draws."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cks = checkpoints_of(manifest)
    chosen = chosen_step(manifest, cks)
    sets = _set_names(cks)
    sel = manifest.get("selection") or {}
    vectors = correct_vectors(manifest, cks, predictions)
    sizes = _sizes(manifest, vectors)
    fig = Figure(figsize=(PNG_SIZE[0] / _DPI, PNG_SIZE[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1.2), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    axl = fig.add_subplot(gs[1], sharex=ax)
    held = [(k, [(c["step"], finite_number((c.get("scores") or {}).get(k))) for c in cks]) for k in LOSS_KEYS]
    held = [(k, [(x, y) for x, y in pts if y is not None]) for k, pts in held]  # held-out reference losses
    has_held = any(pts for _, pts in held)
    styles = [("-", "o", 7), ("--", "s", 6), (":", "^", 8)]  # a line lying on another (both 0%) stays visible
    for k, s in enumerate(sets):
        pts = [(c["step"], finite_number((c.get("scores") or {}).get(s))) for c in cks]
        pts = [(x, 100 * y) for x, y in pts if y is not None]
        if pts:
            band = [(c["step"], interval(c, s, sizes, vectors.get(c["step"]))) for c in cks
                    if finite_number((c.get("scores") or {}).get(s)) is not None]
            band = [(x, iv) for x, iv in band if iv is not None]
            if band:
                ax.fill_between([x for x, _ in band], [100 * iv[0] for _, iv in band], [100 * iv[1] for _, iv in band],
                                color=_COLORS.get(s), alpha=0.15, lw=0)
            ls, mk, ms = styles[k % len(styles)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=mk, ms=ms, ls=ls, lw=2, color=_COLORS.get(s),
                    mfc="none" if k else _COLORS.get(s), label=SET_TITLES.get(s, s) + (" (95% band)" if band else ""),
                    zorder=3 + k)
            at = [p for p in pts if p[0] == chosen]
            if at:
                ax.plot([at[0][0]], [at[0][1]], marker="*", ms=16, color=_COLORS.get(s), mec="black", zorder=5)
    if chosen is not None:
        for a in (ax, axl):
            a.axvline(chosen, color="0.3", ls="--", lw=1.2)
        right = chosen > (cks[0]["step"] + cks[-1]["step"]) / 2  # label on the inner side: never clipped
        ax.annotate(f"chosen: step {chosen}", xy=(chosen, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-4 if right else 4, -14), textcoords="offset points", fontsize=10, color="0.2",
                    ha="right" if right else "left")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    if sets:
        ax.legend(loc="best", fontsize=10, framealpha=0.9)
    elif has_held:
        ax.text(0.5, 0.5, "no held-out accuracy: the sets score the reference loss only (lower panel)",
                transform=ax.transAxes, ha="center", va="center", color="0.4")
    title = f"{name}: held-out accuracy during specialization"
    if sel.get("rule"):
        title += f" (select by {sel['rule']})"
    ax.set_title(title, fontsize=12)
    ax.tick_params(labelbottom=False)
    lp = [(c["step"], finite_number(c.get("loss"))) for c in cks]
    lp = [(x, y) for x, y in lp if y is not None]
    per_step = (manifest.get("train") or {}).get("loss_history")
    if isinstance(per_step, list) and per_step:  # every optimizer step (step i+1), under the checkpoint means
        ys = [finite_number(v) for v in per_step]
        axl.plot([i + 1 for i, v in enumerate(ys) if v is not None], [v for v in ys if v is not None],
                 color="0.7", lw=1.0, label="per step")
    if lp:
        axl.plot([p[0] for p in lp], [p[1] for p in lp], marker="o", ms=4, color="0.25", lw=1.5,
                 label="mean since the previous checkpoint")
        if per_step:
            axl.legend(loc="upper right", fontsize=8)
    for k, pts in held:  # held-out reference losses (score=loss|both), same unit as the training loss
        if pts:
            s = k[:-len("_loss")]
            axl.plot([x for x, _ in pts], [y for _, y in pts], marker="D", ms=4, ls="--", lw=1.5,
                     color=_COLORS.get(s), label=f"{SET_TITLES.get(s, s)} reference loss")
    if has_held:
        axl.legend(loc="upper right", fontsize=8)
    if not lp and not per_step and not has_held:
        axl.text(0.5, 0.5, "no training loss recorded", transform=axl.transAxes, ha="center", va="center",
                 color="0.5")
    axl.set_ylabel("loss (NLL/token)" if has_held else "train loss")
    axl.set_xlabel("optimizer step")
    from matplotlib.ticker import MaxNLocator

    axl.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    axl.grid(alpha=0.3)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.94, bottom=0.09)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(str(tmp), dpi=_DPI, format="png")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------- both


def write_report(artifact: str | os.PathLike, manifest: dict | None = None,
                 out: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Render ``report.md`` and ``curves.png`` for an artifact (into ``out``, default the artifact itself)."""
    artifact = Path(artifact)
    if manifest is None:
        manifest = read_manifest(artifact)
    where = str(artifact / MANIFEST)
    checkpoints_of(manifest, where)  # validate with the file's name in the message
    chosen_step(manifest, checkpoints_of(manifest, where), where)
    preds = None
    if (artifact / PREDICTIONS_FILE).is_file() and not all(
            isinstance(c.get(CORRECT), dict) for c in checkpoints_of(manifest, where) if c.get("scores")):
        preds = read_predictions(artifact / PREDICTIONS_FILE)  # an artifact from before checkpoints kept `correct`
    out = Path(out) if out else artifact
    out.mkdir(parents=True, exist_ok=True)
    name = artifact.name or "artifact"
    md = render_markdown(manifest, name, preds)
    md_path = out / REPORT_MD
    tmp = md_path.with_name(f".{REPORT_MD}.tmp-{os.getpid()}")
    tmp.write_text(md, encoding="utf-8")
    os.replace(tmp, md_path)
    png_path = render_png(manifest, out / CURVES_PNG, name, preds)
    return md_path, png_path


def parse_report_table(md: str) -> list[dict[str, str]]:
    """The main table of a ``report.md`` as a list of {column: cell} (used by tests and tools)."""
    lines = md.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("| step | train loss")), None)
    if start is None:
        raise DataError("report.md: no score table")
    head = [h.strip() for h in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = [x.strip().replace("**", "") for x in ln.strip().strip("|").split("|")]
        rows.append(dict(zip(head, cells)))
    return rows


def has_scores(manifest: dict) -> bool:
    return any((c.get("scores") or {}) for c in (manifest.get("checkpoints") or []) if isinstance(c, dict))


def render_files(manifest: dict, name: str, directory: str | os.PathLike) -> dict[str, Path]:
    """For ``fit``: render both files into ``directory`` (a scratch dir) and return ``{file name: path}`` to be
    copied into the artifact while it is written atomically. Written for every fit, with or without held-out
    scores (without them: the loss, the selection and the before/after test scores)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    md = d / REPORT_MD
    md.write_text(render_markdown(manifest, name), encoding="utf-8")
    png = render_png(manifest, d / CURVES_PNG, name)
    return {REPORT_MD: md, CURVES_PNG: png}
