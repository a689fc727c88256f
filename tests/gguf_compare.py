"""An exported LoRA GGUF on the real llama.cpp server vs ``lorasp eval`` of the same adapter.

Used by ``tests/test_export.py`` (a few problems) and ``benchmarks/gguf_agreement.py`` (the README's 50). The
server (llama-cpp-python's, from ``../shared/wheels``) serves the stock SmolLM2 Q4_1 GGUF, once without and once
with ``--lora_path adapter.gguf``; it is asked through lorasp's own ``openai`` teacher (``/v1/completions``,
temperature 0 = greedy) with exactly the prompts ``lorasp eval`` builds (same seeded problems, chat template,
system message and pre-filled trigger), and its answers are extracted and scored by lorasp's answer code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def _server_outputs(base_url: str, problems, prompts, stops, max_tokens: int) -> list[str]:
    from lora_spec.plugins.teachers.openai import OpenAITeacher
    from lora_spec.records import TeacherRequest

    teacher = OpenAITeacher(model="smollm2", base_url=base_url, api="completions", temperature=0.0,
                            max_tokens=max_tokens, stop=list(stops), seed=0, concurrency=1, max_retries=2)
    try:
        reqs = [TeacherRequest(problem=p, prompt=pr, prompt_id="gguf-compare") for p, pr in zip(problems, prompts)]
        res = teacher.generate(reqs)
    finally:
        teacher.close()
    errors = [s[0].error for s in res if s[0].error]
    if errors:
        raise RuntimeError(f"llama.cpp server: {len(errors)} failed requests, first: {errors[0]}")
    return [s[0].text for s in res]


def compare(adapter: str | Path, workdir: str | Path, *, n: int, max_new_tokens: int, threads: int | None = None,
            log=print) -> dict[str, Any]:
    """Export ``adapter``, evaluate it with ``lorasp eval`` on ``n`` arith test problems (zs_cot), ask the llama.cpp
    server the same prompts with and without the LoRA GGUF; returns the counts."""
    from transformers import AutoTokenizer

    from lora_spec.adapters.export import export
    from lora_spec.adapters.artifact import base_spec, read_adapter
    from lora_spec.answers import judge
    from lora_spec.evaluate import EvalConfig, _suite_tasks, run_eval
    from lora_spec.eval_engine import task_problems
    from lora_spec.prompts import build_prompt, stop_sequences
    from lora_spec.student import resolve_path
    from tests.llama_server import llama_server

    adapter, workdir = Path(adapter), Path(workdir)
    t0 = time.time()
    rep = export(adapter, workdir / "gguf")
    gguf_file = workdir / "gguf" / "adapter.gguf"
    log(f"exported {adapter} -> {gguf_file} ({rep.tensors} tensors) in {time.time() - t0:.1f}s")

    cfg = EvalConfig(adapter=str(adapter), suite=["arith"], mode="zs_cot", limit=n, max_new_tokens=max_new_tokens,
                     out=str(workdir / "eval"), progress=False, threads=threads)
    t0 = time.time()
    run_eval(cfg)
    log(f"lorasp eval: {time.time() - t0:.1f}s")
    doc = json.loads((workdir / "eval" / "results.json").read_text())
    task = _suite_tasks("arith", cfg)[0]
    preds = [json.loads(line) for line in (workdir / "eval" / doc["tasks"][task.name]["predictions_file"])
             .read_text().splitlines()]

    problems = task_problems(task)
    assert [p.id for p in problems] == [r["id"] for r in preds], "eval and server must see the same problems"
    tok = AutoTokenizer.from_pretrained(str(resolve_path(base_spec(read_adapter(adapter), adapter))))
    chat = bool(doc["prompting"]["chat_template"])
    prompts = [build_prompt(p, "zs_cot", tok, chat=chat) for p in problems]
    stops = stop_sequences("zs_cot", chat)
    outs: dict[str, list[str]] = {}
    for label, extra in (("base", []), ("lora", ["--lora_path", str(gguf_file)])):
        t0 = time.time()
        with llama_server(n_ctx=1024, extra=extra + (["--n_threads", str(threads)] if threads else [])) as url:
            outs[label] = _server_outputs(url, problems, prompts, stops, max_new_tokens)
        log(f"llama.cpp server ({label}): {time.time() - t0:.1f}s")

    def score(texts):
        ext, ok = zip(*(judge(p, t, scorer=task.scorer, strict=False) for t, p in zip(texts, problems)))
        return ext, ok

    s_ext, s_ok = score(outs["lora"])
    b_ext, b_ok = score(outs["base"])
    e_ext = [r["extracted"] for r in preds]
    e_ok = [bool(r["correct"]) for r in preds]
    norm = " ".join
    return {
        "n": len(problems), "max_new_tokens": max_new_tokens,
        "eval_correct": sum(e_ok), "server_lora_correct": sum(s_ok), "server_base_correct": sum(b_ok),
        "answers_agree": sum(str(a) == str(b) for a, b in zip(s_ext, e_ext)),
        "texts_identical": sum(norm(a.split()) == norm(r["output"].split()) for a, r in zip(outs["lora"], preds)),
        "answers_changed_by_lora": sum(str(a) != str(b) for a, b in zip(s_ext, b_ext)),
        "texts_changed_by_lora": sum(a.strip() != b.strip() for a, b in zip(outs["lora"], outs["base"])),
        "outputs": [{"id": p.id, "gold": p.answer, "eval": r["output"], "server_lora": a, "server_base": b}
                    for p, r, a, b in zip(problems, preds, outs["lora"], outs["base"])],
    }
