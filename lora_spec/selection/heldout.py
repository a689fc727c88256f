"""The held-out evaluator: draws each set's problems once (seeded, with ``lora_spec.eval_engine.seeded_sample``, the
sampler of ``lorasp eval --limit``), and at every evaluation generates and scores them like ``lorasp eval``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..batching import collate, encode_examples
from ..checkpoints import STATE_FILE, checkpoint_dirs
from ..errors import ConfigError, DataError, LoraspError, one_line
from ..eval_engine import make_dataset, prediction_row, seeded_sample
from ..eval_journal import JournalFile
from ..generation import generate
from ..losses import batch_loss
from ..prompts import build_example, build_prompt, check_mode, is_cot, stop_sequences, uses_chat
from ..records import EvalTask, Example, write_jsonl
from ..stats import fmt_acc, macro
from .config import HeldOutSet, SelectionOptions, parse_dataset_spec
from .rules import CORRECT, EVAL_SECONDS, SETS

PREDICTIONS_FILE = "heldout_predictions.jsonl"
LOSS_MAX_LENGTH = 2048  # reference-loss rows: prompts longer than this lose tokens from the left (as in training)


def _has_reference(problem: Any, mode: str) -> bool:
    """Whether a problem has a reference target in ``mode``: CoT modes need its worked solution (rationale)."""

    return not is_cot(mode) or bool((problem.rationale or "").strip())


@dataclass
class SetTasks:
    name: str  # in_dist | ood | generic
    config: HeldOutSet
    tasks: list[Any]  # EvalTask
    problems: dict[str, list[Any]] = field(default_factory=dict)  # task name -> the seeded slice


def _per_dataset(limit: int, n: int) -> list[int]:
    base, extra = divmod(limit, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def resolve_auto(specs: list[str], train_dataset: str | None, train_params: dict | None = None,
                 splits: list[str] | None = None) -> tuple[list[str], str | None]:
    """Replace ``auto`` by the training dataset's held-out split (``dev`` if it has one, else ``test``).

    Returns ``(specs, warning)``; without a known training dataset ``auto`` is dropped with a warning.
    """
    out, warning = [], None
    for s in specs:
        if s.strip() != "auto":
            out.append(s)
            continue
        if not train_dataset:
            warning = ("in_dist 'auto' needs the training dataset, which this run does not name; the in-distribution "
                       "set is off (set it with --in-dist DATASET:SPLIT, e.g. gsm8k:dev)")
            continue
        split = "dev" if (splits is None or "dev" in splits) else "test"
        params = ",".join(f"{k}={v}" for k, v in (train_params or {}).items()
                          if isinstance(v, (int, str, bool)) and k != "data_dir")
        out.append(f"{train_dataset}:{split}" + (f"@{params}" if params else ""))
    return out, warning


class HeldOutEvaluator:
    """Scores a model on the held-out sets; an ``evaluator(model, tokenizer, step) -> scores`` for ``train``.

    The problems are drawn once (seeded), here in ``__init__``. Every call generates with
    ``lora_spec.generation.generate`` (length-sorted batches, left padding, KV cache, stop sequences, greedy) and
    scores each output with ``answers.judge``, exactly like ``lorasp eval`` (strict: the answer must be stated in an
    answer sentence, so a lucky number in a degenerate output earns nothing) -- but all problems of the same prompt
    mode and budget go through one batched generation, instead of one small batch per dataset.

    The scores are flat floats: ``in_dist``, ``ood``, ``generic`` (the set's accuracy), ``<set>/<task>`` per
    dataset or BBH task, ``<set>_loss`` (the reference loss, see :meth:`_losses`; ``score=loss`` sets skip
    generation and give only this), and ``eval_seconds``. ``generic`` is the macro average over its BBH tasks (standard BBH
    practice); ``in_dist`` and ``ood`` are micro averages over their problems.
    """

    def __init__(self, options: SelectionOptions, *, train_dataset: str | None = None,
                 train_params: dict | None = None, exclude_ids: Iterable[str] = (), kind: str = "causal",
                 chat: bool | None = None, data_dir: str | None = None, batch_size: int | None = None,
                 progress: bool = False, log: Callable[[str], None] | None = None):
        self.kind = kind
        self.chat = chat
        self.data_dir = data_dir
        self.batch_size = batch_size or options.eval_batch_size
        self.progress = progress
        self.log = log or (lambda m: None)
        self.sets: dict[str, SetTasks] = {}
        self.history: list[dict] = []
        self.journal: Any = None  # a JournalFile, see keep_journal
        self._restored = True
        self.warnings: list[str] = []
        self.loss_rows: dict[str, list[tuple[str, float, int]]] = {}  # the last evaluation's per-problem losses
        exclude = set(exclude_ids)
        for name in SETS:
            conf: HeldOutSet = getattr(options, name)
            specs = self._specs(name, conf, train_dataset, train_params)
            if not specs:
                continue
            st = self._draw(name, conf.model_copy(update={"datasets": specs}), options, exclude)
            if st.problems:
                self.sets[name] = st
        self._check_references()

    def _check_references(self) -> None:
        """A set that scores its reference loss in a CoT mode needs problems with a worked solution: none at all is
        an error for ``score=loss`` (nothing would be measured) and a warning for ``score=both``; some is a note
        of how many the loss covers."""

        for name, st in self._loss_sets():
            if not is_cot(st.config.mode):
                continue
            probs = [p for ps in st.problems.values() for p in ps]
            have = sum(1 for p in probs if _has_reference(p, st.config.mode))
            flag = f"--{name.replace('_', '-')}"
            if have == 0 and st.config.score == "loss":
                raise ConfigError(f"{flag}: score=loss in mode {st.config.mode} needs reference solutions, and none "
                                  f"of its problems ({', '.join(st.problems)}) has one; score it in zs_answer (the "
                                  f"answer sentence) or use score=accuracy")
            if have < len(probs):
                self._warn(f"{name}: the reference loss covers the {have} of {len(probs)} problems that have a "
                           f"worked solution" + (" (none: the set has no reference loss)" if not have else ""))

    # ------------------------------------------------------------------ drawing the problems

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(f"warning: {message}")

    def _specs(self, name: str, conf: HeldOutSet, train_dataset: str | None, train_params: dict | None) -> list[str]:
        """The set's dataset specs with ``auto`` (in_dist only) resolved to the training dataset's held-out split."""

        specs = list(conf.datasets)
        if name == "in_dist" and "auto" in [s.strip() for s in specs]:
            splits = None
            if train_dataset:
                try:
                    splits = make_dataset(train_dataset, train_params, self.data_dir).splits()
                except Exception:
                    splits = None
            specs, warn = resolve_auto(specs, train_dataset, train_params, splits)
            if warn:
                self._warn(warn)
        elif "auto" in [s.strip() for s in specs]:
            raise ConfigError(f"--{name.replace('_', '-')}: 'auto' is only for the in-distribution set")
        return specs

    def _draw(self, name: str, conf: HeldOutSet, options: SelectionOptions, exclude: set) -> SetTasks:
        """Each dataset's share of the set's limit, drawn with the set's seed by ``eval_engine.seeded_sample`` (the
        sampler of ``lorasp eval --limit N --seed S``) after leaving out the training problems."""

        parsed = [parse_dataset_spec(s) for s in conf.datasets]
        st = SetTasks(name, conf, [])
        dropped = 0
        for spec, quota in zip(parsed, _per_dataset(conf.limit, len(parsed))):
            if quota <= 0:
                continue
            params = dict(spec.params)
            pool, split = self._pool(name, spec, params, options)
            if pool is None:
                continue
            if exclude:
                n0 = len(pool)
                pool = [p for p in pool if p.id not in exclude]
                dropped += n0 - len(pool)
            chosen = seeded_sample(pool, quota, conf.seed)
            if not chosen:
                raise DataError(f"--{name.replace('_', '-')} {spec.label}: split {split!r} has no problems")
            task_name = spec.short
            if task_name in st.problems:
                task_name = spec.label
            st.problems[task_name] = chosen
            st.tasks.append({"task": task_name, "dataset": spec.name, "split": split, "params": params,
                             "n": len(chosen)})
        if dropped:
            self._warn(f"{name}: {dropped} held-out problems are also training problems and were left out")
        return st

    def _pool(self, name: str, spec: Any, params: dict, options: SelectionOptions) -> tuple[list | None, str | None]:
        """``(every problem of the spec's split, the split)``; ``(None, None)`` when a *default* set's data is not
        here (e.g. the quickstart without LORASP_DATA_DIR): a warning, while a set the user asked for is an error."""

        flag = f"--{name.replace('_', '-')}"
        try:
            ds = make_dataset(spec.name, params, self.data_dir)
            split = spec.split or ("test" if "test" in ds.splits() else ds.splits()[-1])
            if split not in ds.splits():
                raise DataError(f"dataset {spec.name!r} has no split {split!r} (splits: {', '.join(ds.splits())})")
            return list(ds.load(split)), split
        except LoraspError as exc:
            if name not in options.model_fields_set and isinstance(exc, DataError) and "not found" in exc.message:
                self._warn(f"{name}: {spec.label} skipped, its data is not available here ({exc.message}); "
                           f"set {flag} or LORASP_DATA_DIR to include it")
                return None, None
            raise type(exc)(f"{flag} {spec.label}: {exc.message}") from None
        except Exception as exc:
            raise DataError(f"{flag} {spec.label}: {type(exc).__name__}: {one_line(exc)}") from None

    # ------------------------------------------------------------------ description

    @property
    def n_problems(self) -> int:
        return sum(len(v) for st in self.sets.values() for v in st.problems.values())

    def describe(self) -> dict[str, Any]:
        """What goes to ``lorasp.json`` ``selection.sets``: per set its datasets, mode, seed and task sizes."""
        out: dict[str, Any] = {}
        for name in SETS:
            st = self.sets.get(name)
            if st is None:
                out[name] = {"datasets": []}
                continue
            c = st.config
            out[name] = {"datasets": list(c.datasets), "limit": c.limit, "mode": c.mode, "seed": c.seed,
                         "max_new_tokens": c.max_new_tokens, "score": c.score,
                         "tasks": {t["task"]: t["n"] for t in st.tasks},
                         "splits": {t["task"]: t["split"] for t in st.tasks},
                         "ids": {t: [p.id for p in ps] for t, ps in st.problems.items()}}
        return out

    # ------------------------------------------------------------------ scoring

    def sizes(self) -> dict[str, int]:
        """``{"<set>/<task>": n}``: how many problems each task of each set scores for accuracy (the keys of
        ``correct``; a ``score=loss`` set has none)."""
        return {f"{name}/{t['task']}": len(st.problems.get(t["task"], [])) for name, st in self._accuracy_sets()
                for t in st.tasks}

    def check_resumed(self, ckpt_dir: str | Path) -> None:
        """A resumed fit must score the same held-out sets as the run it continues: otherwise its curves and paired
        tests would mix sets (and the report would give the old scores the new sizes). Compared with what the
        newest checkpoint recorded (``correct`` per set/task: one character per problem); checkpoints of versions
        that did not record it are not checked. Raises ``ConfigError`` (one line) on a difference."""

        for _step, d in reversed(checkpoint_dirs(ckpt_dir)):
            try:  # the JSON half of the state is enough (no tensors)
                state = json.loads((d / STATE_FILE).read_text(encoding="utf-8")).get("state") or {}
            except (OSError, ValueError, AttributeError):
                continue  # the trainer's own resume says what is wrong with it
            recorded = [c["correct"] for c in state.get("checkpoints") or []
                        if isinstance(c, dict) and isinstance(c.get("correct"), dict)]
            if not recorded:
                return
            then = {k: len(v) for k, v in recorded[-1].items()}
            now = self.sizes()
            if then != now:
                diff = sorted(set(then) ^ set(now)) or [k for k in sorted(now) if then.get(k) != now[k]]
                k = diff[0]
                raise ConfigError(
                    f"--resume: the held-out sets differ from the run's ({k}: {then.get(k, 0)} problems in its "
                    f"evaluations, {now.get(k, 0)} now); give the same --in-dist/--ood/--generic as the run "
                    f"(a changed default counts too), or start over with --overwrite")
            return

    def keep_journal(self, path: str | Path, *, resume: bool) -> None:
        """Append every evaluation's predictions to ``path`` (a :class:`lora_spec.eval_journal.JournalFile`,
        fsynced) as it happens, so that a cut and resumed fit still writes the predictions of the evaluations before
        the cut. A fresh run starts the journal empty; a resumed one reads it back at its next evaluation (or when
        the predictions are written), keeping only the steps before that evaluation (a later step's rows come from a
        run that was cut before its checkpoint)."""

        self.journal = JournalFile(path, None, fsync=True, remedy=f"delete {path} (the held-out predictions of the "
                                   f"evaluations before the cut are lost) or start over with --overwrite")
        self._restored = not resume
        if not resume:
            self.journal.path.unlink(missing_ok=True)

    def restore_journal(self, before_step: int | None = None) -> None:
        """Load the journal's evaluations of steps < ``before_step`` (all when None) into ``history``, once."""
        if self._restored or self.journal is None:
            return
        self._restored = True
        _header, rows = self.journal.read()
        by_step: dict[int, list[dict]] = {}
        for row in rows:
            st = int(row.get("step", -1))
            if before_step is None or st < before_step:
                by_step.setdefault(st, []).append(row)
        known = {h["step"] for h in self.history}
        restored = [{"step": st, "scores": None, "predictions": [{k: v for k, v in r.items() if k != "step"}
                                                                 for r in rows]}
                    for st, rows in sorted(by_step.items()) if st not in known]
        self.history[:0] = restored
        self.journal.rewrite([{"step": h["step"], **p} for h in self.history for p in h["predictions"]])

    def _journal_append(self, step: int, preds: list[dict]) -> None:
        if self.journal is None:
            return
        for p in preds:
            self.journal.add({"step": step, **p})
        self.journal.close()  # (the next evaluation is minutes away; no file stays open across the training)

    def __call__(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        correct, preds = self._predict(model, tokenizer, step)
        scores = self._scores(correct)
        losses = self._losses(model, tokenizer)
        scores.update(losses)
        scores[EVAL_SECONDS] = round(time.perf_counter() - t0, 3)
        self.restore_journal(before_step=step)
        self.history.append({"step": step, "scores": dict(scores), "predictions": preds})
        self._journal_append(step, preds)
        scores[CORRECT] = {f"{name}/{t['task']}": "".join("1" if ok else "0"
                                                           for ok in correct.get((name, t["task"]), []))
                           for name, st in self._accuracy_sets() for t in st.tasks}
        self.log(f"held-out eval at step {step}: " + self._summary(correct, scores)
                 + f" ({scores[EVAL_SECONDS]:.1f}s)")
        return scores

    def _accuracy_sets(self) -> list[tuple[str, SetTasks]]:
        return [(n, st) for n, st in self.sets.items() if st.config.scores_accuracy]

    def _loss_sets(self) -> list[tuple[str, SetTasks]]:
        return [(n, st) for n, st in self.sets.items() if st.config.scores_loss]

    def loss_examples(self, tokenizer: Any) -> dict[str, list[Any]]:
        """Per loss-scoring set, the training-style rows ``(prompt, reference target)`` of its problems: the set's
        prompt mode, the target :func:`lora_spec.prompts.build_example` makes (CoT modes: the problem's reference
        rationale then ``The answer is X.``; answer modes: ``The answer is X.``). Problems without a reference
        rationale are left out of a CoT set's loss (e.g. SVAMP, whose data has an equation, not a solution)."""

        use_chat = uses_chat(tokenizer, self.chat) if self.kind == "causal" else False
        out: dict[str, list[Any]] = {}
        for name, st in self._loss_sets():
            mode = check_mode(st.config.mode)
            rows = []
            for t in st.tasks:
                for p in st.problems[t["task"]]:
                    if not _has_reference(p, mode):
                        continue
                    prompt, target = build_example(p, mode, tokenizer, chat=use_chat, data_dir=self.data_dir)
                    rows.append(Example(format=mode, prompt=prompt, target=target, problem_id=p.id))
            out[name] = rows
        return out

    def _losses(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """``{"<set>_loss": mean per-token NLL}`` of each loss-scoring set's reference targets (``loss_examples``),
        computed by the training loss itself (:func:`lora_spec.losses.batch_loss`, sample matching), one problem
        per forward pass (no padding), summed over all target tokens and divided by their count. Each problem's
        ``(id, NLL sum, target tokens)`` stays in ``self.loss_rows[set]`` for paired comparisons. A low-variance
        signal where accuracy is too coarse to rank checkpoints (a 135M model at a few percent on GSM8K); it is not
        accuracy, and falls when a model imitates the reference style even if it reasons no better."""
        import torch

        out: dict[str, float] = {}
        self.loss_rows = {}
        sets = self.loss_examples(tokenizer)
        if not sets:
            return out
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for name, rows in sets.items():
            if not rows:  # a score=both set without worked solutions (warned once, at construction)
                continue
            enc, _cut = encode_examples(rows, tokenizer, self.kind, LOSS_MAX_LENGTH)
            per: list[tuple[str, float, int]] = []
            with torch.no_grad():
                for ex, e in zip(rows, enc):
                    b = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in collate([e], pad, self.kind).items()}
                    s, k = batch_loss(inner, b, kind=self.kind)
                    per.append((ex.problem_id, float(s), int(k)))
            self.loss_rows[name] = per
            n = sum(k for _, _, k in per)
            if n:
                out[f"{name}_loss"] = sum(s for _, s, _ in per) / n
        return out

    def _predict(self, model: Any, tokenizer: Any, step: int) -> tuple[dict[tuple[str, str], list[bool]], list[dict]]:
        """Generate for every problem (one batched generation per prompt mode, budget and calculator setting) and
        score each output into the prediction row of ``lorasp eval`` (``eval_engine.prediction_row``: strict and
        flexible), with its set and task; returns ``({(set, task): [correct, ...]}, prediction rows)``."""

        use_chat = uses_chat(tokenizer, self.chat) if self.kind == "causal" else False
        groups: dict[tuple[str, int, bool], list[tuple[str, str, Any, EvalTask]]] = {}
        for name, st in self._accuracy_sets():
            mode = check_mode(st.config.mode)
            for t in st.tasks:
                task = EvalTask(name=t["task"], dataset=t["dataset"], split=t["split"], dataset_params=t["params"],
                                mode=mode, scorer="auto")
                budget = st.config.max_new_tokens or task.max_new_tokens
                for p in st.problems[t["task"]]:
                    groups.setdefault((mode, budget, st.config.calculator), []).append((name, t["task"], p, task))
        correct: dict[tuple[str, str], list[bool]] = {}
        preds: list[dict] = []
        for (mode, budget, calc), rows in groups.items():
            prompts = [build_prompt(p, mode, tokenizer, chat=use_chat, data_dir=self.data_dir) for _, _, p, _ in rows]
            tokens: dict[int, tuple[int, int]] = {}  # prompt -> (tokens generated, its budget), as each finishes
            outs = generate(model, tokenizer, prompts, kind=self.kind, max_new_tokens=budget,
                            stop=stop_sequences(mode, use_chat), batch_size=self.batch_size, calculator=calc,
                            progress=self.progress, description=f"held-out eval, step {step}",
                            on_output=lambda i, _out, n, b: tokens.__setitem__(i, (n, b)))
            for i, ((name, task_name, p, task), o) in enumerate(zip(rows, outs)):
                row = prediction_row(task, p, o, *tokens.get(i, (None, None)))
                correct.setdefault((name, task_name), []).append(row["correct"])
                preds.append({"set": name, "task": task_name, **row})
        return correct, preds

    def _scores(self, correct: dict[tuple[str, str], list[bool]]) -> dict[str, float]:
        """Per task and per set: ``generic`` is the macro average over its tasks, the others micro averages."""
        scores: dict[str, float] = {}
        for name, st in self._accuracy_sets():
            per_task = {t["task"]: correct.get((name, t["task"]), []) for t in st.tasks}
            for task_name, oks in per_task.items():
                scores[f"{name}/{task_name}"] = sum(oks) / len(oks) if oks else 0.0
            if name == "generic":  # BBH: macro average over tasks
                accs = [sum(o) / len(o) for o in per_task.values() if o]
                scores[name] = sum(accs) / len(accs) if accs else 0.0
            else:
                allo = [x for o in per_task.values() for x in o]
                scores[name] = sum(allo) / len(allo) if allo else 0.0
        return scores

    def _summary(self, correct: dict[tuple[str, str], list[bool]], scores: dict[str, float]) -> str:
        """Each set's accuracy with its 95% interval, for the log line."""

        parts = []
        for name, st in self._accuracy_sets():
            oks = [correct.get((name, t["task"]), []) for t in st.tasks]
            if name == "generic":  # macro average over the BBH tasks
                _m, lo, hi = macro([sum(o) for o in oks], [len(o) for o in oks])
                parts.append(f"{name} {scores[name]:.1%} [{100 * lo:.1f}, {100 * hi:.1f}] "
                             f"(n={sum(len(o) for o in oks)})")
            else:
                parts.append(f"{name} {fmt_acc(sum(sum(o) for o in oks), sum(len(o) for o in oks))}")
        parts += [f"{k} {v:.4f}" for k, v in scores.items() if k.endswith("_loss")]
        return ", ".join(parts)


def write_predictions(evaluator: Any, path: str | Path) -> Path | None:
    """Every held-out prediction of every evaluation (step, set, task and the prediction row of ``lorasp eval``:
    id, question, gold, output, extracted, correct, their flexible twins, scorer, tokens), so that any score in the
    report can be audited. None when there is nothing to write."""
    if hasattr(evaluator, "restore_journal"):  # a resumed fit: the evaluations before the cut
        evaluator.restore_journal()
    hist = getattr(evaluator, "history", None)
    if not hist:
        return None

    rows = ({"step": h["step"], **p} for h in hist for p in h["predictions"])
    write_jsonl(path, rows)
    return Path(path)
