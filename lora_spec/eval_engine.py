"""The evaluation engine: problems of a task (seeded samples), prompts of its mode (``prompts.py``), batched
generation through the one generator (:func:`lora_spec.generation.generate`), and one scoring rule
(:func:`lora_spec.answers.judge`: strict and flexible) that makes one prediction row format (:func:`prediction_row`).

``lorasp eval`` (``lora_spec.evaluate``: config, plan, journal, writers, report) is a command over it; the held-out
evaluator of ``lorasp fit`` (``lora_spec.selection.heldout``) and the experiments use the same functions. This
module imports nothing of the commands, the artifacts or the selection rules.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any, Sequence

from . import registry
from .answers import equation_errors, judge, scorer_for
from .eval_journal import prompt_hash
from .generation import generate
from .prompts import build_prompt, check_mode, is_cot, stop_sequences, uses_chat
from .records import EvalTask, Problem
from .stats import wilson

# --------------------------------------------------------------------------------------------- tasks

def make_dataset(name: str, params: dict | None = None, data_dir: str | os.PathLike | None = None):
    """Create a dataset plugin, passing ``data_dir`` when the plugin accepts it."""

    return registry.create("datasets", name, offered={"data_dir": data_dir}, **dict(params or {}))


LIMIT_SEED = 0


def seeded_sample(items: Sequence[Any], n: int | None, seed: int = LIMIT_SEED) -> list[Any]:
    """"``n`` of ``items`` with seed ``seed``": a seeded random sample without replacement, kept in the items' order.

    The one sampler of lorasp: ``lorasp eval --limit N --seed S`` and a fit's held-out sets (``limit``/``seed``,
    per dataset) both draw with it, so the same size and seed give the same problems of the same split.
    ``n`` None or >= len(items): all of them.
    """

    items = list(items)
    if n is None or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def task_problems(task: EvalTask, data_dir: str | os.PathLike | None = None, seed: int = LIMIT_SEED) -> list[Problem]:
    """The task's problems. ``task.limit`` keeps a seeded random sample of that many (:func:`seeded_sample`, in
    dataset order), not the first N: several sets are ordered by difficulty or type (ASDiv by grade)."""
    ds = make_dataset(task.dataset, task.dataset_params, data_dir)
    return seeded_sample(list(ds.load(task.split)), task.limit, seed)


def evaluate_tasks(model: Any, tokenizer: Any, tasks: list[EvalTask], *, kind: str = "causal", batch_size: int = 16,
                   data_dir: str | os.PathLike | None = None, progress: bool = True,
                   chat: bool | None = None, seed: int = LIMIT_SEED, journal: Any = None,
                   calculator: bool = False) -> dict[str, dict]:
    """Run every task; per task: accuracy, its 95% Wilson interval ``ci`` ([lo, hi]), n, correct,
    flexible_accuracy, flexible_correct, mode, seconds, generated_tokens, predictions. ``seed``: of the
    ``task.limit`` sample (:func:`seeded_sample`).

    ``accuracy``/``correct`` are strict (lm-eval's ``strict-match``): the answer must be stated in an answer
    sentence ("The answer is X"); ``flexible_*`` (``flexible-extract``) also take the last number of an output
    that never states one. Each prediction is ``{id, question, gold, output, extracted, correct,
    extracted_flexible, correct_flexible, scorer}``. ``chat``: None = use the
    tokenizer's chat template when it has one (instruct students), False = plain text. ``journal``
    (:class:`lora_spec.eval_journal.EvalJournal`): every prediction is appended to it as it finishes, and the
    predictions a cut run of the same settings finished are reused, not generated again (``resumed``: how many).
    ``calculator``: equation results are written by :mod:`lora_spec.calculator` in chain-of-thought modes
    (``calculator_calls``: how many).
    """

    results: dict[str, dict] = {}
    use_chat = uses_chat(tokenizer, chat) if kind == "causal" else False
    for task in tasks:
        mode = check_mode(task.mode)
        problems = task_problems(task, data_dir, seed)
        prompts = [build_prompt(p, mode, tokenizer, chat=use_chat, data_dir=data_dir) for p in problems]
        preds: list[dict | None] = [None] * len(problems)
        todo = list(range(len(problems)))
        budget = task.max_new_tokens
        if journal is not None:
            hashes = [prompt_hash(x) for x in prompts]
            kept = journal.kept(task.name, mode, budget)
            for j, p in enumerate(problems):
                row = kept.get(journal.key(p.id, hashes[j]))
                if row is not None:
                    preds[j] = prediction_row(task, p, row.get("output", ""), row.get("tokens"), row.get("budget", budget))
            todo = [j for j in todo if preds[j] is None]
            if len(todo) < len(problems):
                print(f"eval: {task.name}: {len(problems) - len(todo)} of {len(problems)} predictions kept from an "
                      f"interrupted run; generating {len(todo)}", file=sys.stderr, flush=True)
            journal.open(task.name, mode, budget)

        def on_output(k: int, out: str, n_tokens: int, row_budget: int) -> None:  # as each prompt finishes
            j = todo[k]
            preds[j] = prediction_row(task, problems[j], out, n_tokens, row_budget)
            if journal is not None:
                journal.add(task.name, {**preds[j], "prompt_hash": hashes[j]})

        st: dict = {}
        calc = calculator and is_cot(mode)  # answer-only prompts write no equation
        outs = generate(model, tokenizer, [prompts[j] for j in todo], kind=kind, max_new_tokens=budget,
                        stop=stop_sequences(mode, use_chat), batch_size=batch_size, progress=progress, stats=st,
                        description=task.name, on_output=on_output, calculator=calc)
        for k, j in enumerate(todo):  # (a generate() that did not call on_output: a monkeypatched one in tests)
            if preds[j] is None:
                preds[j] = prediction_row(task, problems[j], outs[k])
        correct = sum(bool(r["correct"]) for r in preds)
        flexible = sum(bool(r["correct_flexible"]) for r in preds)
        n = len(problems)
        # the arithmetic of the chains of thought: how many of the equations they write state a wrong result
        eq = [equation_errors(r["output"]) for r in preds] if is_cot(mode) else []
        results[task.name] = {"accuracy": correct / n if n else 0.0, "ci": list(wilson(correct, n)), "n": n,
                              "correct": correct,
                              "flexible_accuracy": flexible / n if n else 0.0, "flexible_correct": flexible,
                              "mode": mode,
                              "dataset": task.dataset, "split": task.split, "seconds": st.get("seconds", 0.0),
                              "generated_tokens": st.get("generated_tokens", 0), "predictions": preds,
                              # outputs that used the whole token budget: cut short, or looping (a hint that
                              # --max-new-tokens is too small when many of them are long derivations)
                              "at_budget": sum(bool(r.get("at_budget")) for r in preds),
                              **({"equations": {"checked": sum(c for c, _ in eq), "wrong": sum(w for _, w in eq)}}
                                 if any(c for c, _ in eq) else {}),
                              **({"resumed": n - len(todo)} if n > len(todo) else {}),
                              **({"calculator": True, "calculator_calls": st.get("calculator_calls", 0)}
                                 if calc else {})}
    return results


def prediction_row(task: EvalTask, p: Problem, output: str, tokens: int | None = None,
                budget: int | None = None) -> dict:
    """One scored prediction: the output's answer by the strict and the flexible rule (:func:`lora_spec.answers.judge`);
    ``tokens``: how many tokens were generated (EOS included), ``budget``: the row's token budget (less than
    ``--max-new-tokens`` where a learned position table ends first), ``at_budget``: all of it was used."""
    ext, ok = judge(p, output, scorer=task.scorer)
    ext_f, ok_f = judge(p, output, scorer=task.scorer, strict=False)
    row = {"id": p.id, "question": p.question, "gold": p.answer, "output": output, "extracted": ext,
           "correct": ok, "extracted_flexible": ext_f, "correct_flexible": ok_f, "scorer": scorer_for(p, task.scorer)}
    if tokens is not None:  # (a journal row of an older release has none)
        row["tokens"] = int(tokens)
        if budget is not None:
            row["budget"] = int(budget)
        row["at_budget"] = budget is not None and tokens >= budget
    return row
