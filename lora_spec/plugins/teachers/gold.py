"""``gold`` teacher: the dataset's own reference rationale as the chain of thought.

GSM8K rationales arrive from the dataset plugin without ``<<...>>`` calculator annotations and without the
``#### N`` line; ``arith`` rationales are exact. The CoT text always ends with ``The answer is X.`` so that it
reads like the teacher outputs the student is trained on (``lora_spec.prompts.cot_target`` when it exists).
A problem has one reference rationale, so this teacher gives one sample per problem (``max_samples = 1``).
"""

from __future__ import annotations

import hashlib
import re

from ...records import Problem, Sample, TeacherRequest

_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"the answer is\s*\S", re.IGNORECASE)


def gold_cot(problem: Problem) -> str | None:
    """Clean CoT text for a problem's reference rationale, ending in "The answer is X."; None if it has none."""
    if not problem.rationale or not problem.rationale.strip():
        return None
    try:  # keep the gold text identical to what training builds, when the prompts module offers it
        from ...prompts import cot_target  # type: ignore[attr-defined]
    except ImportError:
        cot_target = None
    if cot_target is not None:
        try:
            text = cot_target(problem)
        except TypeError:
            text = None
        if isinstance(text, str) and text.strip():
            return text.strip()
    body = problem.rationale
    if "####" in body:
        body = body.rpartition("####")[0]
    body = _CALC.sub("", body)
    lines = [ln.strip() for ln in body.strip().splitlines() if ln.strip()]
    text = "\n".join(lines)
    if lines and _FINAL.search(lines[-1]):
        return text
    return (text + "\n" if text else "") + f"The answer is {problem.answer}."


class GoldTeacher:
    """The dataset's reference rationale as CoT (GSM8K without calculator annotations; exact for arith)."""

    name = "gold"
    max_samples = 1
    batch_size = 256

    def fingerprint(self) -> str:
        src = (gold_cot.__doc__ or "") + "v1"
        return "gold:" + hashlib.sha256(src.encode()).hexdigest()[:8]

    def describe(self) -> dict:
        return {"teacher": "gold"}

    def generate(self, requests: list[TeacherRequest]) -> list[list[Sample]]:
        out = []
        for req in requests:
            text = gold_cot(req.problem)
            row = []
            for i in range(req.first_index, req.first_index + req.n):
                if text is None:
                    err = f"problem {req.problem.id} has no reference rationale"
                elif i > 0:
                    err = "the gold teacher has one rationale per problem (sample index 0 only)"
                else:
                    err = None
                row.append(Sample(problem_id=req.problem.id, sample_index=i, prompt_id=req.prompt_id,
                                  text=text if err is None else "", finish_reason="stop" if err is None else None,
                                  teacher=self.fingerprint(), error=err))
            out.append(row)
        return out
