"""Prompt modes, exemplar sets and the exact target texts shared by training and evaluation.

Four modes (the paper's four formats)::

    icl_cot     in-context chain of thought   (exemplars with rationales, then the question + trigger)
    zs_cot      zero-shot chain of thought     (the question + "Let's think step by step")
    icl_answer  in-context answer only         (exemplars "Question: ... / The answer is X.")
    zs_answer   zero-shot answer only          (the question alone)

Plain-text layout (base models, T5, and any tokenizer without a chat template)::

    Question: <exemplar question>
    Let's think step by step
    <exemplar rationale>
    The answer is <X>.

    Question: <question>
    Let's think step by step
                                        <- the student continues with cot_target(): "<rationale>\\nThe answer is X."

Answer-only modes drop the trigger line; the student continues with answer_target(): ``The answer is X.``.

Chat layout (instruct students: the tokenizer has a chat template and ``chat`` is not False): each exemplar is a
user turn (``Question: ...``) and an assistant turn (trigger + target); the question is the last user turn; the
trigger is pre-filled at the start of the assistant turn, so the student's continuation is exactly the same
``cot_target``/``answer_target`` text as in plain mode. SmolLM2's template injects a long default system prompt
when there is none, so lorasp passes its own one-line system message (:data:`DEFAULT_SYSTEM`); ``system=None``
omits it where the template allows.

Exemplar sets: GSM8K 8-shot (``gsm8k_prompts/prompt_original.txt``, Wei et al.) and 4-shot
(``prompt_simple_4_cases.txt``), the other gsm8k_prompts files by name, the BBH 3-shot CoT prompts per task, and
``arith`` exemplars drawn from its train split. Training passes its own exemplars (Problems with rationales).
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, DataError
from .paths import data_dir as _env_data_dir
from .plugins.datasets.arith import Arith
from .records import Problem, read_text

MODES = ("icl_cot", "zs_cot", "icl_answer", "zs_answer")
# mode -> Example.format name (records.FORMATS)
FORMAT_OF_MODE = {"icl_cot": "in_context_cot", "zs_cot": "zero_shot_cot", "icl_answer": "in_context_answer",
                  "zs_answer": "zero_shot_answer"}
MODE_OF_FORMAT = {v: k for k, v in FORMAT_OF_MODE.items()}
TRIGGER = "Let's think step by step"
DEFAULT_SYSTEM = "You are a careful math and logic tutor. End every answer with: The answer is <answer>."
GSM8K_SETS = {"original": "prompt_original.txt", "simple_4_cases": "prompt_simple_4_cases.txt",
              "complex": "prompt_complex.txt", "mid": "prompt_mid.txt", "simple": "prompt_simple.txt",
              "random": "prompt_random.txt"}
_SENTINEL: Any = object()


def check_mode(mode: str) -> str:
    mode = MODE_OF_FORMAT.get(mode, mode)
    if mode not in MODES:
        raise ConfigError(f"unknown prompt mode {mode!r} (expected one of {', '.join(MODES)})")
    return mode


def is_cot(mode: str) -> bool:
    return check_mode(mode).endswith("_cot")


# --------------------------------------------------------------------------------------------- targets

def answer_target(answer: str) -> str:
    """The answer-only target: ``The answer is X.``"""
    a = str(answer).strip()
    return f"The answer is {a}" if a.endswith(".") else f"The answer is {a}."


def cot_target(problem_or_rationale: Problem | str, answer: str | None = None) -> str:
    """The CoT target: the rationale, a newline, then ``The answer is X.``

    ``cot_target(problem)`` uses ``problem.rationale`` and ``problem.answer``; ``cot_target(text, answer)`` uses a
    teacher's rationale. A rationale that already ends with an answer sentence ("... The answer is 72.") has that
    sentence replaced, so the target always ends with exactly one ``The answer is X.``
    """
    if isinstance(problem_or_rationale, Problem):
        p = problem_or_rationale
        rationale = p.rationale or ""
        answer = p.answer if answer is None else answer
    else:
        rationale = str(problem_or_rationale or "")
    if answer is None:
        raise ValueError("cot_target needs an answer")
    rationale = strip_answer_sentence(rationale)
    return f"{rationale}\n{answer_target(answer)}" if rationale else answer_target(answer)


_FINAL_RE = re.compile(r"(?:\n|^|(?<=[.!?])\s+)(?:so\s+|thus\s+|therefore,?\s+|but\s+)?(?:the\s+)?(?:final\s+)?"
                       r"answer\s+is\b[^\n]*\s*$|\n?####[^\n]*\s*$", re.IGNORECASE)


def strip_answer_sentence(rationale: str) -> str:
    """Drop a trailing "The answer is ..." / "So the answer is ..." / "#### N" sentence and the trigger line."""
    text = rationale.strip()
    if text.startswith(TRIGGER):
        text = text[len(TRIGGER):].lstrip(".").strip()
    text = _FINAL_RE.sub("", text).rstrip()
    return text


# --------------------------------------------------------------------------------------------- exemplars

def _data_root(data_dir: str | os.PathLike | None) -> Path:
    d = Path(data_dir) if data_dir else _env_data_dir()
    if d is None:
        raise DataError("exemplar prompts need the data directory (layout of shared/data): "
                        "set --data-dir or LORASP_DATA_DIR")
    return d


@functools.lru_cache(maxsize=64)
def _gsm8k_set(path: str) -> tuple[Problem, ...]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: exemplar file not found; set --data-dir or LORASP_DATA_DIR to a directory in "
                        f"the layout of shared/data")
    text = read_text(p, "GSM8K exemplars")
    out = []
    line_of = 1
    for block in re.split(r"\n\s*\n(?=Q(?:uestion)?:)", text.strip()):
        lines = block.strip().splitlines()
        start = line_of
        line_of += block.count("\n") + 2
        try:
            t = next(i for i, ln in enumerate(lines) if ln.strip().startswith(TRIGGER))
        except StopIteration:
            raise DataError(f"{p}:{start}: exemplar has no {TRIGGER!r} line") from None
        q = "\n".join(lines[:t])
        q = re.sub(r"^Q(?:uestion)?:\s*", "", q).strip()
        last = lines[-1].strip()
        m = re.match(r"The answer is\s+(.+?)\.?$", last)
        if not m:
            raise DataError(f"{p}:{start + len(lines) - 1}: exemplar does not end with 'The answer is X'")
        rationale = "\n".join(ln.rstrip() for ln in lines[t + 1:-1]).strip()
        out.append(Problem(id=f"exemplar/{p.stem}/{len(out)}", question=q, answer=m.group(1).strip(),
                           rationale=rationale, meta={"file": str(p), "line": start, "answer_type": "number"}))
    return tuple(out)


def gsm8k_exemplars(n_shots: int = 8, *, data_dir: str | os.PathLike | None = None,
                    name: str | None = None) -> list[Problem]:
    """GSM8K CoT exemplars: 8-shot ``original`` (default) or 4-shot ``simple_4_cases``; any set by ``name``."""
    if name is None:
        name = "simple_4_cases" if n_shots == 4 else "original"
    if name not in GSM8K_SETS:
        raise ConfigError(f"unknown GSM8K exemplar set {name!r} (expected one of {', '.join(GSM8K_SETS)})")
    ex = list(_gsm8k_set(str(_data_root(data_dir) / "gsm8k_prompts" / GSM8K_SETS[name])))
    if n_shots > len(ex):
        raise ConfigError(f"GSM8K exemplar set {name!r} has {len(ex)} exemplars, {n_shots} requested")
    return ex[:n_shots]


@functools.lru_cache(maxsize=64)
def _bbh_set(path: str) -> tuple[Problem, ...]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: BBH CoT prompt file not found; set --data-dir or LORASP_DATA_DIR")
    text = read_text(p, "a BBH CoT prompt file")
    if "-----\n" not in text:
        raise DataError(f"{p}:2: expected the '-----' separator line after the canary")
    head, body = text.split("-----\n", 1)
    base_line = head.count("\n") + 2
    blocks = re.split(r"\n\n(?=Q: )", body.strip())
    out = []
    stripped = body.strip()
    lead = body.find(stripped[:1]) if stripped else 0
    pos = 0
    for k, block in enumerate(blocks[1:]):
        pos = stripped.find(block, pos)
        line = base_line + body[:lead + pos].count("\n")
        if "\nA: " not in block:
            raise DataError(f"{p}:{line}: exemplar has no 'A:' line")
        q, a = block.split("\nA: ", 1)
        q = q[len("Q: "):].strip()
        a = a.strip()
        if a.startswith(TRIGGER):
            a = a[len(TRIGGER):].lstrip(".").strip()
        i = a.rfind("So the answer is ")
        if i < 0:
            raise DataError(f"{p}:{line}: exemplar does not end with 'So the answer is X.'")
        rationale, ans = a[:i].strip(), a[i + len("So the answer is "):].strip()
        if ans.endswith("."):
            ans = ans[:-1]
        out.append(Problem(id=f"exemplar/bbh/{p.stem}/{k}", question=q, answer=ans, rationale=rationale,
                           meta={"file": str(p), "line": line, "task": p.stem}))
    return tuple(out)


def bbh_exemplars(task: str, *, data_dir: str | os.PathLike | None = None) -> list[Problem]:
    """The 3 CoT exemplars of a BBH task (``bbh/cot-prompts/<task>.txt``)."""
    return list(_bbh_set(str(_data_root(data_dir) / "bbh" / "cot-prompts" / f"{task}.txt")))


def arith_exemplars(n_shots: int = 4, **params: Any) -> list[Problem]:
    """Exemplars for ``arith`` from its *train* split (never from dev/test), for generator ``params``."""

    params = dict(params)
    params["n_train"] = max(n_shots, 1)
    return list(Arith(**params).load("train", limit=n_shots))


def default_exemplars(problem: Problem, n_shots: int | None = None, *,
                      data_dir: str | os.PathLike | None = None) -> list[Problem]:
    """The standard exemplars for a problem's dataset: BBH task prompts; arith train; GSM8K prompts otherwise
    (the usual practice for the OOD math sets SVAMP, ASDiv and MultiArith)."""
    ds = dataset_of(problem)
    if ds == "bbh":
        task = problem.meta.get("task")
        if not task:
            raise DataError(f"problem {problem.id}: a BBH problem needs meta['task'] to pick its exemplars")
        ex = bbh_exemplars(task, data_dir=data_dir)
        return ex[:n_shots] if n_shots else ex
    if ds == "arith":
        params = dict(problem.meta.get("params") or {"seed": int(problem.meta.get("seed", 0))})
        return arith_exemplars(n_shots or 4, **params)
    return gsm8k_exemplars(n_shots or 8, data_dir=data_dir)


def dataset_of(problem: Problem) -> str:
    return str(problem.meta.get("dataset") or problem.id.split("/", 1)[0])


# --------------------------------------------------------------------------------------------- prompts

def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _user_text(problem: Problem) -> str:
    return f"Question: {problem.question.strip()}"


def _assistant_prefix(mode: str) -> str:
    return f"{TRIGGER}\n" if is_cot(mode) else ""


def _target(problem: Problem, mode: str) -> str:
    return cot_target(problem) if is_cot(mode) else answer_target(problem.answer)


def build_prompt(problem: Problem, mode: str, tokenizer: Any = None, *, exemplars: Sequence[Problem] | None = None,
                 n_shots: int | None = None, chat: bool | None = None, system: str | None = _SENTINEL,
                 data_dir: str | os.PathLike | None = None) -> str:
    """The prompt text for ``problem`` in ``mode``; the student's continuation should be
    :func:`cot_target` (CoT modes) or :func:`answer_target` (answer-only modes).

    ``exemplars``: Problems with rationales for the in-context modes (default: :func:`default_exemplars`);
    ``n_shots`` keeps the first n. ``chat``: None = use the tokenizer's chat template when it has one.
    ``system``: the chat system message (default :data:`DEFAULT_SYSTEM`; None = none).
    """
    mode = check_mode(mode)
    shots: list[Problem] = []
    if mode.startswith("icl_"):
        shots = list(exemplars) if exemplars is not None else default_exemplars(problem, n_shots, data_dir=data_dir)
        if n_shots is not None:
            shots = shots[:n_shots]
        if mode == "icl_cot":
            bad = [e.id for e in shots if not (e.rationale or "").strip()]
            if bad:
                raise DataError(f"exemplar {bad[0]} has no rationale; in-context CoT needs rationales")
    use_chat = _has_chat_template(tokenizer) if chat is None else bool(chat)
    if use_chat and not _has_chat_template(tokenizer):
        raise ConfigError("chat=True needs a tokenizer with a chat template")
    prefix = _assistant_prefix(mode)
    if use_chat:
        sys_msg = DEFAULT_SYSTEM if system is _SENTINEL else system
        msgs: list[dict[str, str]] = [{"role": "system", "content": sys_msg}] if sys_msg else []
        for e in shots:
            msgs.append({"role": "user", "content": _user_text(e)})
            msgs.append({"role": "assistant", "content": prefix + _target(e, mode)})
        msgs.append({"role": "user", "content": _user_text(problem)})
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return text + prefix
    parts = [f"{_user_text(e)}\n{prefix}{_target(e, mode)}" for e in shots]
    parts.append(f"{_user_text(problem)}\n{prefix}")
    return "\n\n".join(parts)


def build_example(problem: Problem, mode: str, tokenizer: Any = None, *, rationale: str | None = None,
                  answer: str | None = None, **kw: Any) -> tuple[str, str]:
    """``(prompt, target)`` for a training row: the target uses ``rationale``/``answer`` (a teacher's) when given,
    else the problem's own."""
    prompt = build_prompt(problem, mode, tokenizer, **kw)
    ans = problem.answer if answer is None else answer
    if is_cot(mode):
        target = cot_target(rationale if rationale is not None else problem, ans)
    else:
        target = answer_target(ans)
    return prompt, target


def stop_sequences(mode: str, chat: bool) -> list[str]:
    """Where generation should stop for a mode: the next "Question:" (plain text), or a blank line/newline."""
    if chat:
        return ["\nQuestion:", "<|im_end|>", "<|endoftext|>"]
    if is_cot(check_mode(mode)):
        return ["\nQuestion:", "\n\n"]
    return ["\n"]


def uses_chat(tokenizer: Any, chat: bool | None = None) -> bool:
    return _has_chat_template(tokenizer) if chat is None else bool(chat)


# --------------------------------------------------------------------------------------------- an artifact's prompting

def main_mode(formats: Any) -> str | None:
    """The main prompt mode of a training mixture (``lorasp.json`` ``formats``): its highest-weight CoT format
    (ties: zero-shot first), else its highest-weight format; None when there are no weights."""
    if not isinstance(formats, dict):
        return None
    weights = {}
    for k, v in formats.items():
        mode = MODE_OF_FORMAT.get(str(k), str(k))
        if mode in MODES and isinstance(v, (int, float)) and v > 0:
            weights[mode] = float(v)
    if not weights:
        return None
    order = ("zs_cot", "icl_cot", "zs_answer", "icl_answer")
    cot = {m: w for m, w in weights.items() if is_cot(m)}
    pool = cot or weights
    return max(pool, key=lambda m: (pool[m], -order.index(m)))


def artifact_prompting(manifest: dict | None) -> dict[str, Any]:
    """How an artifact's student was prompted in training, from its ``lorasp.json``: ``mode`` (the main CoT
    format, None when unknown), ``chat`` (None when unknown), ``system`` (the chat system message training used;
    manifests written before it was recorded used :data:`DEFAULT_SYSTEM`), ``n_shots`` and ``dataset``."""
    m = manifest or {}
    recorded = m.get("prompting") if isinstance(m.get("prompting"), dict) else {}
    mode = recorded.get("mode") or main_mode(m.get("formats"))
    chat = recorded.get("chat", m.get("chat"))
    system = recorded["system"] if "system" in recorded else DEFAULT_SYSTEM
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    n_shots = recorded.get("n_shots", m.get("n_shots"))
    return {"mode": mode, "chat": None if chat is None else bool(chat), "system": system,
            "n_shots": int(n_shots) if isinstance(n_shots, int) and n_shots > 0 else None,
            "dataset": recorded.get("dataset") or data.get("dataset")}


def question_problem(question: str, index: int = 0, *, dataset: str | None = None) -> Problem:
    """A user's question as a Problem (no gold answer), for :func:`build_prompt`. A trailing CoT trigger the user
    typed ("... Let's think step by step.") is dropped: the CoT modes add it where training put it."""
    q = str(question).strip()
    if q.lower().endswith(TRIGGER.lower()) or q.lower().endswith(TRIGGER.lower() + "."):
        q = q[:q.lower().rfind(TRIGGER.lower())].rstrip()
    if q.startswith("Question:"):
        q = q[len("Question:"):].strip()
    meta = {"dataset": dataset} if dataset else {}
    return Problem(id=f"{dataset or 'prompt'}/{index}", question=q, answer="", meta=meta)


def question_prompt(question: str, mode: str, tokenizer: Any = None, *, chat: bool | None = None,
                    system: str | None = _SENTINEL, n_shots: int | None = None, dataset: str | None = None,
                    data_dir: str | os.PathLike | None = None, index: int = 0) -> str:
    """The prompt for a free-text question in ``mode``, built by :func:`build_prompt` exactly as training built
    the prompt of a training question (``lorasp generate``, ``AdapterSet.generate(mode=...)``). In-context modes
    use the standard exemplars of ``dataset`` (GSM8K's when unknown), ``n_shots`` of them."""
    p = question_problem(question, index, dataset=dataset)
    return build_prompt(p, mode, tokenizer, chat=chat, system=system,
                        n_shots=n_shots if check_mode(mode).startswith("icl_") else None, data_dir=data_dir)


def chat_template_with_system(template: str, system: str | None) -> str:
    """``template`` (a tokenizer's Jinja chat template) with ``system`` as the system message of any conversation
    that brings none -- the system message training used -- instead of the template's own default (SmolLM2's
    injects "You are a helpful AI assistant named SmolLM..."). A conversation with its own system message is
    rendered unchanged. For a merged model, whose users call ``apply_chat_template`` without lorasp."""

    if not system or not template:
        return template
    guard = ("{%- if messages and messages[0]['role'] != 'system' -%}"
             "{%- set messages = [{'role': 'system', 'content': " + json.dumps(system) + "}] + messages -%}"
             "{%- endif -%}")
    return guard + template
