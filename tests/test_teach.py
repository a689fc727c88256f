"""``lorasp teach`` without a server: gold and file teachers, the store, resume, export, manifest, errors, hf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_spec.errors import ConfigError, DataError
from lora_spec.records import Problem
from lora_spec.store import SampleStore
from lora_spec.teach import PROMPTS, load_run, prompt_id, resolve_prompt, teach
from tests.conftest import run_cli


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_gold_arith_via_cli(tmp_path):
    from lora_spec.prompts import cot_target

    out = tmp_path / "run"
    r = run_cli("teach", "--dataset", "arith", "--teacher", "gold", "--first", "12", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "12/12 samples" in r.stdout and "first-sample accuracy 100.0%" in r.stdout
    m = _manifest(out)
    assert m["status"] == "complete"
    assert m["parameters"]["samples"] == 1 and m["parameters"]["samples_asked"] == 4  # one rationale each
    assert m["counts"] == {"problems": 12, "requested": 12, "received": 12, "failed": 0, "unavailable": 0,
                           "too_long": 0, "correct": 12, "exported": 12, "problems_with_correct_sample": 12}
    assert m["accuracy"]["first_sample"] == 1.0 and m["accuracy"]["majority_vote"] == 1.0
    problems, samples = load_run(out)
    assert len(problems) == 12 and len(samples) == 12
    for s in samples:
        p = problems[s.problem_id]
        assert s.text == cot_target(Problem(p.id, p.question, p.answer, p.rationale))
        assert s.text.endswith(f"The answer is {p.answer}.") and s.correct and s.answer == p.answer
        assert s.prompt_id == p.meta["prompt_id"] == prompt_id(resolve_prompt("zero-shot-cot").render(p))
    assert (out / "store.sqlite").exists()


def test_gold_gsm8k_is_clean_and_all_correct(tmp_path, data_dir):
    out = teach(dataset="gsm8k", split="train", teacher="gold", first=200, out=str(tmp_path / "g"), progress=False)
    problems, samples = load_run(out)
    assert len(samples) == 200
    for s in samples:
        assert "<<" not in s.text and "####" not in s.text
        assert s.text.rstrip().endswith(f"The answer is {problems[s.problem_id].answer}.")
    assert _manifest(out)["accuracy"]["first_sample"] == 1.0


def test_resume_asks_only_for_missing(tmp_path):
    out = tmp_path / "run"
    teach(dataset="arith", teacher="gold", first=10, out=str(out), progress=False)
    before = {(s.problem_id, s.sample_index): s.text for s in SampleStore(out / "store.sqlite").samples()}
    teach(dataset="arith", teacher="gold", first=10, out=str(out), progress=False)
    m = _manifest(out)
    assert m["this_run"]["samples_stored"] == 0 and m["this_run"]["resumed_from_store"] == 10 and m["runs"] == 2
    teach(dataset="arith", teacher="gold", first=15, out=str(out), progress=False)
    m = _manifest(out)
    assert m["this_run"]["samples_stored"] == 5 and m["this_run"]["resumed_from_store"] == 10
    assert m["counts"]["received"] == 15
    after = {(s.problem_id, s.sample_index): s.text for s in SampleStore(out / "store.sqlite").samples()}
    assert all(after[k] == v for k, v in before.items()) and len(after) == 15
    # a different prompt is a different key: nothing is reused, both live in one store
    teach(dataset="arith", teacher="gold", first=3, prompt="zero-shot", out=str(out), progress=False)
    m = _manifest(out)
    assert m["this_run"]["resumed_from_store"] == 0 and m["counts"]["received"] == 3
    assert len(list(SampleStore(out / "store.sqlite").samples())) == 18


def _arith(n: int) -> list[Problem]:
    from lora_spec import registry

    return list(registry.create("datasets", "arith").load("train", limit=n))


def test_file_teacher_filtering_vote_and_keep_all(tmp_path, capsys):
    """first-sample vs majority-vote accuracy, correct-only export, --keep all, load_run(include_incorrect)."""
    a, b, c = _arith(3)
    wrong = lambda p, k: int(p.answer) + k  # noqa: E731
    rows = [
        {"pid": a.id, "outs": [f"x. The answer is {wrong(a, 1)}.", f"The answer is {a.answer}.",
                               f"y = {a.answer}. The answer is {a.answer}"]},          # first wrong, vote right
        {"pid": b.id, "outs": [f"The answer is {b.answer}.", f"The answer is {wrong(b, 7)}.",
                               f"So the answer is {wrong(b, 7)}."]},                   # first right, vote wrong
        {"pid": c.id, "outs": [f"The answer is {wrong(c, 3)}.", f"The answer is {wrong(c, 4)}.",
                               f"The answer is {c.answer}."]},                          # tie: earliest (wrong)
    ]
    f = tmp_path / "outs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = [f"path={f}", "id_field=pid", "text_field=outs"]
    out = teach(dataset="arith", teacher="file", teacher_opt=opts, first=3, samples=3, out=str(tmp_path / "r"),
                progress=False)
    m = _manifest(out)
    assert m["counts"]["received"] == 9 and m["counts"]["correct"] == 4 and m["counts"]["exported"] == 4
    assert m["accuracy"] == {"first_sample": round(1 / 3, 4), "majority_vote": round(1 / 3, 4),
                             "any_correct": 1.0, "per_sample": round(4 / 9, 4)}
    problems, samples = load_run(out)
    assert len(samples) == 4 and all(s.correct for s in samples)
    _, every = load_run(out, include_incorrect=True)
    assert len(every) == 9 and sum(s.correct for s in every) == 4
    out2 = teach(dataset="arith", teacher="file", teacher_opt=opts, first=3, samples=3, keep="all",
                 out=str(tmp_path / "r2"), progress=False)
    exported = [json.loads(x) for x in (out2 / "samples.jsonl").read_text().splitlines()]
    assert len(exported) == 9 and sum(e["correct"] for e in exported) == 4
    assert len(load_run(out2)[1]) == 4 and len(load_run(out2, include_incorrect=True)[1]) == 9
    # asking for more samples than the file has: capped to what it holds, with a note; the run is complete
    capsys.readouterr()
    out3 = teach(dataset="arith", teacher="file", teacher_opt=opts, first=3, samples=4, out=str(tmp_path / "r3"),
                 progress=False)
    m3 = _manifest(out3)
    assert m3["status"] == "complete" and m3["parameters"]["samples"] == 3 and m3["counts"]["failed"] == 0
    assert f"note: --samples 4: teacher 'file' ({f}) holds at most 3 outputs per problem" in capsys.readouterr().err
    # a problem with fewer outputs than the others: its missing ones are "not available", not failed, never retried
    rows[2]["outs"] = rows[2]["outs"][:1]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out4 = teach(dataset="arith", teacher="file", teacher_opt=opts, first=3, samples=3, out=str(tmp_path / "r4"),
                 progress=False)
    m4 = _manifest(out4)
    assert m4["status"] == "complete" and m4["counts"]["failed"] == 0 and m4["counts"]["unavailable"] == 2
    assert m4["counts"]["received"] == 7 and "no teacher output #1 for problem " + c.id in m4["unavailable_example"]
    with SampleStore(out4 / "store.sqlite") as st:  # nothing recorded as a failure, so nothing to "retry"
        assert not st.failed_keys(m4["teacher"]["fingerprint"])


def test_prompts_resolve(data_dir):
    p = Problem("x", "  How many?  ", "3")
    complex8 = resolve_prompt("gsm8k-complex-8shot").render(p)
    raw = (data_dir / "gsm8k_prompts" / "prompt_complex.txt").read_text()
    assert complex8.startswith(raw.rstrip("\n") + "\n\nQuestion: How many?\nLet's think step by step\n")
    assert resolve_prompt("zero-shot-cot").render(p) == "Question: How many?\nLet's think step by step\n"
    assert set(PROMPTS) >= {"gsm8k-complex-8shot", "gsm8k-original-8shot", "zero-shot-cot", "zero-shot"}
    with pytest.raises(ConfigError, match="did you mean 'gsm8k-complex-8shot'"):
        resolve_prompt("gsm8k-complex-8-shot")


@pytest.mark.parametrize("args, code, needle", [
    (["--teacher", "gol"], 1, "unknown teacher 'gol'; did you mean 'gold'"),
    (["--prompt", "nope"], 2, "--prompt: unknown prompt 'nope'"),
    (["--samples", "0"], 2, "field 'samples'"),
    (["--temperature", "hot"], 2, "field 'temperature'"),
    (["--teacher", "openai"], 2, "teacher 'openai' needs --model"),
    (["--teacher-opt", "novalue"], 2, "--teacher-opt: expected KEY=VALUE"),
    (["--teacher", "file"], 2, "teacher 'file' needs a path"),
    (["--teacher", "file", "--teacher-opt", "path=/nonexistent.json"], 1, "/nonexistent.json: no such file"),
    (["--teacher", "gold", "--teacher-opt", "bogus=1"], 1, "teacher 'gold' has no parameter 'bogus'"),
    (["--dataset", "gsm8kk"], 1, "did you mean 'gsm8k'"),
    (["--split", "validation"], 1, "split"),
    (["--api", "grpc"], 2, "field 'api'"),
])
def test_cli_errors_are_one_line(tmp_path, args, code, needle):
    r = run_cli("teach", "--first", "2", "--out", str(tmp_path / "o"), *args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_file_teacher_bad_records_name_the_place(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q2", "answer_text": "b"}]))
    r = run_cli("teach", "--teacher", "file", "--teacher-opt", f"path={f}", "--first", "2", "--out",
                str(tmp_path / "o"))
    assert r.returncode == 1 and f"{f}[1]: no text field" in r.stderr
    f.write_text('[{"instruction": "q", "output": "a"},')
    r = run_cli("teach", "--teacher", "file", "--teacher-opt", f"path={f}", "--first", "2", "--out",
                str(tmp_path / "o"))
    assert r.returncode == 1 and f"{f}:1: invalid JSON" in r.stderr


def test_load_run_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a teach run directory"):
        load_run(tmp_path / "empty")
    out = teach(dataset="arith", teacher="gold", first=2, out=str(tmp_path / "r"), progress=False)
    with (out / "samples.jsonl").open("a") as fh:
        fh.write('{"problem_id": "ghost", "sample_index": 0, "prompt_id": "p", "text": "t", "correct": true}\n')
    with pytest.raises(DataError, match="samples.jsonl:3: problem_id 'ghost' is not in problems.jsonl"):
        load_run(out)


def test_print_config_roundtrip(tmp_path):
    r = run_cli("teach", "--dataset", "gsm8k", "--samples", "8", "--stop", "\\n\\n", "--print-config")
    assert r.returncode == 0 and "samples: 8" in r.stdout and "dataset: gsm8k" in r.stdout
    cfgf = tmp_path / "c.yaml"
    cfgf.write_text(r.stdout)
    r2 = run_cli("teach", "--config", str(cfgf), "--print-config")
    assert r2.stdout == r.stdout


def test_hf_teacher_topk_and_stop(tmp_path, tiny_llama_path):
    out = teach(dataset="arith", teacher="hf", model=str(tiny_llama_path), first=3, samples=2, max_tokens=8,
                top_logprobs=3, stop=["."], teacher_opt=["batch_size=4"], out=str(tmp_path / "hf"),
                progress=False)
    m = _manifest(out)
    assert m["status"] == "complete" and m["counts"]["received"] == 6 and m["with_top_logprobs"] == 6
    assert m["usage"]["completion_tokens"] > 0
    _, samples = load_run(out, include_incorrect=True)
    for s in samples:
        assert "." not in s.text  # cut before the stop string
        assert len(s.tokens) == len(s.top_logprobs) <= 8
        for tok, top in zip(s.tokens, s.top_logprobs):
            assert len(top) >= 3 and tok in top and max(top.values()) <= 0
        if "\ufffd" not in "".join(s.tokens):  # a token that is part of a UTF-8 character decodes to U+FFFD
            assert "".join(s.tokens).startswith(s.text)
    # same seed, same samples: a fresh run directory reproduces the texts
    out2 = teach(dataset="arith", teacher="hf", model=str(tiny_llama_path), first=3, samples=2, max_tokens=8,
                 top_logprobs=3, stop=["."], teacher_opt=["batch_size=4"], out=str(tmp_path / "hf2"),
                 progress=False)
    again = {(s.problem_id, s.sample_index): s.text for s in load_run(out2, include_incorrect=True)[1]}
    assert again == {(s.problem_id, s.sample_index): s.text for s in samples}
