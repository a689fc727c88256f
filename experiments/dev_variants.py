"""The recipe's mixture, shots and max length, judged on the GSM8K dev split only, with training noise measured by seeds
(issue 12, "tune it on dev: ... mixture, shots, max length").

    python experiments/dev_variants.py [--steps 48] [--run recipe:0,1,2 --run zs_cot_only:0 ...]

Each variant is the recipe (``recipes/gsm8k-smollm2.yaml`` on the GSM8K teach run of ``experiments/run.py``, with the
mixture it had when this sweep was planned pinned by ``BASELINE``) with one setting changed (``VARIANTS`` below),
trained for the same short budget of ``--steps`` optimizer steps (its own cosine schedule) and scored by two
reference losses on **dev** (mean per-token NLL of the gold rationale and answer; lorasp's held-out evaluator with
``score=loss``, no generation): zero-shot CoT (200 problems) and 8-shot in-context CoT (100 problems, the data set's
own exemplars, as ``lorasp eval --mode icl_cot``). No test set is touched.

Why seeds: one run per setting cannot rank settings (docs/results.md: a run's dev loss moves by up to 0.035 between
neighbouring checkpoints, more than the learning rates differed by). The recipe trains with several seeds (the data
order and the format draw change); the largest gap between two of its seeds is the training noise. The rule, fixed
before any score was seen: a variant beats the recipe only when its zero-shot dev loss is below the recipe seeds' mean
by more than that noise and its in-context dev loss is not above their mean by more than the in-context noise. Only a
variant that beats it on every seed it ran with would change the recipe.

Each fit is resumable and skipped once finished; each score is kept as it arrives. Writes
``experiments/results/dev_variants.json``; ``experiments/page.py`` renders it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import run as R  # noqa: E402  (experiments/run.py: the teach run, work_dir, run_lorasp)

RESULTS = ROOT / "experiments" / "results" / "dev_variants.json"
RECIPE = "recipes/gsm8k-smollm2.yaml"
# The baseline is the recipe as it was when this sweep was planned (2026-12-07): its mixture is pinned here, so that
# "recipe" keeps meaning that baseline if the recipe file takes a variant's setting (each variant's flags come after
# these and override them).
BASELINE = ["--formats", R.MEASURED_MIXTURE]
# one change each from the baseline (formats zero_shot_cot=8,in_context_cot=1,zero_shot_answer=1; 2 shots; 512 tokens)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "recipe": ("the recipe before this sweep (zero_shot_cot=8,in_context_cot=1,zero_shot_answer=1, 2 shots, 512 "
               "tokens)", []),
    "zs_cot_only": ("zero-shot CoT rows only", ["--formats", "zero_shot_cot=1"]),
    "paper_4211": ("the paper's mixture 4:2:1:1 (in-context CoT, zero-shot CoT, in-context answer, zero-shot answer)",
                   ["--formats", "in_context_cot=4,zero_shot_cot=2,in_context_answer=1,zero_shot_answer=1"]),
    "shots1": ("1 exemplar in the in-context rows (not 2)", ["--n-shots", "1"]),
    "shots4": ("4 exemplars in the in-context rows (not 2; fewer where 4 do not fit)", ["--n-shots", "4"]),
    "len384": ("max length 384 tokens (not 512)", ["--max-length", "384"]),
    "len768": ("max length 768 tokens (not 512)", ["--max-length", "768"]),
    # full fine-tuning (every weight trains, the paper's setting) at three learning rates: C1's full fine-tune used
    # 5e-5 without a sweep
    "full_lr2e-5": ("full fine-tuning, lr 2e-5", ["--method", "full", "--lr", "2e-5", "--keep-checkpoints", "1"]),
    "full_lr5e-5": ("full fine-tuning, lr 5e-5", ["--method", "full", "--lr", "5e-5", "--keep-checkpoints", "1"]),
    "full_lr2e-4": ("full fine-tuning, lr 2e-4", ["--method", "full", "--lr", "2e-4", "--keep-checkpoints", "1"]),
}
DEFAULT_RUNS = ["recipe:0,1,2", "zs_cot_only:0", "paper_4211:0", "shots1:0", "len768:0"]
SETS = {"zs": "gsm8k:dev;limit={n};mode=zs_cot;seed=0;score=loss",
        "icl": "gsm8k:dev;limit={n};mode=icl_cot;seed=0;score=loss"}


def parse_runs(specs: list[str]) -> list[tuple[str, int]]:
    """``["recipe:0,1", "len768:0"]`` -> ``[("recipe", 0), ("recipe", 1), ("len768", 0)]``; unknown names raise."""
    out = []
    for spec in specs:
        name, _, seeds = spec.partition(":")
        if name not in VARIANTS:
            raise SystemExit(f"--run {spec}: unknown variant {name!r} (variants: {', '.join(VARIANTS)})")
        try:
            out += [(name, int(s)) for s in (seeds or "0").split(",")]
        except ValueError:
            raise SystemExit(f"--run {spec}: seeds must be integers, e.g. {name}:0,1") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--run", action="append", help=f"VARIANT:SEEDS (default {' '.join(DEFAULT_RUNS)})")
    ap.add_argument("--dev", type=int, default=200, help="dev problems for the zero-shot loss")
    ap.add_argument("--dev-icl", type=int, default=100, help="dev problems for the in-context loss")
    args = ap.parse_args(argv)
    todo = parse_runs(args.run or DEFAULT_RUNS)
    rec = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    other = [r for r in rec.get("runs", []) if r.get("steps") != args.steps]  # kept as they are
    done = {(r["variant"], r["seed"]): r for r in rec.get("runs", []) if r.get("steps") == args.steps}
    exp = R.Experiment("dev_variants", "variants", "")  # for its teach run and command log only
    teach = exp.teach_gsm8k()
    for name, seed in todo:
        if (name, seed) in done:
            continue
        out = R.work_dir() / "variants" / f"{name}-seed{seed}-s{args.steps}"
        fit_args = ["--config", RECIPE, "--data", str(teach), "--max-steps", str(args.steps), "--seed", str(seed),
                    *BASELINE, *VARIANTS[name][1], "--eval-every", "0", "--select-by", "last", "--tracker", "none"]
        if not (out / "lorasp.json").exists():
            resume = ["--resume"] if Path(str(out) + ".checkpoints").exists() else []
            R.run_lorasp(["fit", *fit_args, "--out", str(out), "--no-progress", *resume], exp.log)
        done[(name, seed)] = {"variant": name, "seed": seed, "steps": args.steps, **score(out, args.dev, args.dev_icl),
                              "fit": "lorasp fit " + " ".join(fit_args).replace(str(teach),
                                                                               "runs/experiments/teach/gsm8k-l2")}
        _write(args, todo, done, other)
    _write(args, todo, done, other, complete=True)
    return 0


def score(out: Path, n_zs: int, n_icl: int) -> dict:
    """Both dev reference losses of the adapter at ``out``, with every problem's ``[id, NLL sum, tokens]``."""
    from lora_spec.adapters.artifact import load_adapter

    m = json.loads((out / "lorasp.json").read_text())
    st = load_adapter(out)
    tr = m.get("train") or {}
    res: dict = {"per_problem": {}}
    for key, n in (("zs", n_zs), ("icl", n_icl)):
        loss, seconds, rows = R.dev_reference_loss(st.model, st.tokenizer, SETS[key].format(n=n),
                                                   int(tr.get("steps") or 0))
        res[f"{key}_loss"], res[f"{key}_score_seconds"] = round(loss, 5), round(seconds, 1)
        res["per_problem"][key] = rows
    data = m.get("data") or {}
    res.update({"train_seconds": tr.get("train_seconds"), "final_train_loss": tr.get("final_loss"),
                "truncated": data.get("truncated"), "fewer_shots": data.get("fewer_shots")})
    return res


def _write(args, todo: list, done: dict, other: list, complete: bool = False) -> None:
    seeds: dict[str, list[int]] = {}  # every run the file holds, earlier invocations' included, as one command
    for name, seed in sorted(set(done) | set(todo), key=lambda k: (list(VARIANTS).index(k[0]), k[1])):
        seeds.setdefault(name, []).append(seed)
    out = {"experiment": "dev_variants",
           "title": "Mixture, shots and max length of the GSM8K recipe, judged by GSM8K dev reference losses",
           "command": f"python experiments/dev_variants.py --steps {args.steps} "
                      + " ".join(f"--run {k}:{','.join(map(str, v))}" for k, v in seeds.items()),
           "recipe": RECIPE, "steps": args.steps,
           "variants": {k: {"what": v[0], "flags": " ".join(v[1])} for k, v in VARIANTS.items()},
           "dev": {"zs": f"gsm8k:dev, {args.dev} problems, zs_cot, reference = gold rationale + answer",
                   "icl": f"gsm8k:dev, {args.dev_icl} problems, icl_cot (the data set's 8 exemplars), "
                          "reference = gold rationale + answer"},
           "runs": [done[k] for k in sorted(done, key=lambda k: (list(VARIANTS).index(k[0]), k[1]))] + other,
           "complete": complete and all(k in done for k in todo),  # this invocation's runs all scored
           "git": R._git_commit(), "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    R.write_json(RESULTS, out)


if __name__ == "__main__":
    raise SystemExit(main())
