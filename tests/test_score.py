"""``lorasp score``: a teacher's top-k at every token of text it did not write (lora_spec.score).

The scorers run for real: the ``hf`` teacher on SmolLM2, and the ``openai`` teacher against llama-cpp-python's
OpenAI-compatible server serving SmolLM2's GGUF (with a fault-injecting proxy in front, which also counts what
the server was asked). Texts are short: llama-cpp-python builds each echoed top-k in Python, ~50 ms per token.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_spec.errors import ModelError
from lora_spec.score import ScoreConfig, score
from lora_spec.teach import TeachConfig, load_run, teach
from lora_spec.teacher_forcing import SpanError, text_tokens
from tests.helpers import run_cli, run_in_process
from tests.fault_proxy import fault_proxy
from tests.llama_server import llama_server

# --------------------------------------------------------------------------------------- pieces, no model


def test_text_tokens_cuts_the_prompt_and_keeps_the_text_exact():
    full = "Q: 2+3?\nA: 5."
    start = full.index("A")
    # "Q" ":" " 2" "+" "3" "?" "\n" "A" ":" " 5" "." and a token the server generated past the text
    offsets = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    tops = [None] + [{"x": -float(i)} for i in range(1, len(offsets))]
    pieces, top = text_tokens(full, start, offsets, tops)
    assert "".join(pieces) == full[start:]
    assert pieces == ["A", ":", " 5", "."]
    assert top[0] == {"x": -7.0} and len(top) == 4


def test_text_tokens_a_token_across_the_boundary_keeps_its_text_part_without_a_distribution():
    full = "Answer:\n42 apples"
    start = full.index("42") - 1  # the text starts with "\n", but the scorer's token is ":\n"
    pieces, top = text_tokens(full, start, [0, 6, 8, 10], [None, {"a": -1.0}, {"b": -2.0}, {"c": -3.0}])
    assert pieces == ["\n", "42", " apples"] and top == [{}, {"b": -2.0}, {"c": -3.0}]


def test_text_tokens_refuses_a_cut_input_and_unordered_offsets():
    full = "prompt text that is long"
    with pytest.raises(SpanError, match="end at character 11 of 24"):
        text_tokens(full, 7, [0, 7], [None, {}], tokens=["prompt ", "text"])
    with pytest.raises(SpanError, match="not in order"):
        text_tokens(full, 7, [0, 7, 3], [None, {}, {}])


def test_echo_alignment_is_detected_from_where_the_tokens_rank():
    from lora_spec.plugins.teachers.openai import _detect_alignment

    toks = ["Q", ":", " one", " two", " three", " four"]
    same = [None] + [{t: -0.1, "zz": -3.0} for t in toks[1:]]
    nxt = [{t: -0.1, "zz": -3.0} for t in toks[1:]] + [{"end": -0.1}]
    assert _detect_alignment(toks, same, 2, 0, list(range(6)))[0] == "same"
    assert _detect_alignment(toks, nxt, 2, 0, list(range(6)))[0] == "next"


def test_vllm_prompt_logprobs_shape_is_read():
    """vLLM's ``prompt_logprobs`` (token id -> {logprob, rank, decoded_token}, the prompt's own token always
    present) with ``prompt_token_ids``: the own token's string and the k best per position."""
    from lora_spec.plugins.teachers.openai import _NoScores, _prompt_logprobs

    ch = {"prompt_token_ids": [1, 2, 3], "prompt_logprobs": [
        None,
        {"2": {"logprob": -0.5, "rank": 1, "decoded_token": " a"}, "9": {"logprob": -1.5, "rank": 2,
                                                                        "decoded_token": " b"}},
        {"7": {"logprob": -0.2, "rank": 1, "decoded_token": "x"}, "8": {"logprob": -2.0, "rank": 2,
                                                                       "decoded_token": "y"},
         "3": {"logprob": -6.0, "rank": 40, "decoded_token": "!"}}]}
    offsets, tops, tokens = _prompt_logprobs(ch, 1)
    assert tokens == ["", " a", "!"] and offsets == [0, 0, 2]
    assert tops == [None, {" a": -0.5}, {"x": -0.2, "!": -6.0}]
    with pytest.raises(_NoScores, match="return_token_ids"):
        _prompt_logprobs({"prompt_logprobs": [None]}, 1)


def test_a_teacher_without_a_score_method_is_one_line(tmp_path, data_dir):
    run = teach(TeachConfig(dataset="arith", teacher="gold", first=2, samples=1, out=str(tmp_path / "run"),
                            progress=False))
    r = run_cli("score", str(run), "--teacher", "gold")
    assert r.returncode != 0 and "cannot score text it did not write" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = run_cli("score", str(tmp_path / "nope"), "--teacher", "hf")
    assert r.returncode != 0 and "not a teach run directory" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("score", str(run), "--top-logprobs", "0")
    assert r.returncode != 0 and "top_logprobs" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------- real scorers

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_server(log=log, extra=["--n_threads", "1"]) as base:
        yield base


@pytest.fixture(scope="module")
def file_run(tmp_path_factory, data_dir):
    """A file-teacher run: the staged third-party Llama-3-70B GSM8K CoT of the first 2 train problems."""
    out = tmp_path_factory.mktemp("score") / "file-run"
    path = data_dir / "gsm8k_teacher_cot" / "gsm8k_llama_level2_ranked.json"
    teach(TeachConfig(dataset="gsm8k", split="train", teacher="file", teacher_opt=[f"path={path}"], first=2,
                      samples=1, out=str(out), progress=False))
    _problems, samples = load_run(out)
    assert samples and all(s.top_logprobs is None for s in samples)  # the file teacher has no log-probabilities
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    (to / ".lorasp.lock").unlink(missing_ok=True)
    return to


def _scored(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]


def _score_requests(proxy) -> list[str]:
    return [e.tag for e in proxy.log if e.path.endswith("/completions")]


@pytest.mark.slow
def test_hf_and_served_scores_agree_then_fit_distribution(file_run, server, tmp_path, tiny_llama_path):
    """The same file-teacher text scored by transformers (fp32) and by llama.cpp (the same weights, served): the
    same tokens, the same top-1 at >= 90% of positions, and log-probabilities within 1.5 (median within 0.2)
    where both list a token: llama.cpp computes with the GGUF's 8-bit weights and activations."""
    hf_run = _copy(file_run, tmp_path / "hf")
    sec = score(hf_run, ScoreConfig(teacher="hf", model="smollm2-135m", top_logprobs=5, progress=False,
                                    teacher_opt=["batch_size=2"]))
    assert sec["status"] == "complete" and sec["scored"] == sec["samples"] == 2
    m = json.loads((hf_run / "manifest.json").read_text())
    assert m["scores"]["scorer"] == "hf" and m["scores"]["top_logprobs"] == 5 and m["with_top_logprobs"] == 2

    srv_run = _copy(file_run, tmp_path / "served")
    with fault_proxy(server) as proxy:
        sec2 = score(srv_run, ScoreConfig(teacher="openai", model="smollm2", base_url=proxy.url, top_logprobs=5,
                                          concurrency=2, progress=False))
        asked = _score_requests(proxy)
    assert sec2["status"] == "complete" and sec2["scored"] == 2 and len(asked) == 2
    # llama-cpp-python's echo reports each top-k one token late; lorasp noticed and read it so
    assert sec2["params"]["echo_alignment"] == "next"

    diffs, top1, n = [], 0, 0
    for a, b in zip(_scored(hf_run), _scored(srv_run)):
        assert a["tokens"] == b["tokens"] and "".join(a["tokens"]) == a["text"]
        for ta, tb in zip(a["top_logprobs"], b["top_logprobs"]):
            if ta and tb:
                n += 1
                top1 += max(ta, key=ta.get) == max(tb, key=tb.get)
                diffs += [abs(ta[k] - tb[k]) for k in set(ta) & set(tb)]
    assert n > 50
    assert top1 / n >= 0.9, (top1, n)
    assert max(diffs) <= 1.5 and statistics.median(diffs) <= 0.2, (max(diffs), statistics.median(diffs))

    # the scored run trains by distribution matching, through the cross-tokenizer alignment (tiny-llama's
    # vocabulary is not SmolLM2's)
    r = run_in_process("fit", "--student", str(tiny_llama_path), "--data", str(srv_run), "--loss", "distribution",
                "--max-steps", "2", "--batch-size", "2", "--eval-every", "0", "--select-by", "last",
                "--formats", "zero_shot_cot=1", "--out", str(tmp_path / "student"), "--no-progress")
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "student" / "lorasp.json").read_text())
    d = man["distribution"]
    # every row carried the scorer's top-k; tiny-llama's 600-piece byte-level BPE splits words SmolLM2 keeps
    # whole, so only about 40% of its tokens end where a SmolLM2 token ends on this text (0.43 measured)
    assert d["cot_examples"] == d["with_teacher_topk"] == 2 and d["aligned_fraction"] > 0.3, d


@pytest.fixture(scope="module")
def gold_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("score") / "gold-run"
    # one-step problems: short texts, because llama-cpp-python builds every echoed token's top-k in Python
    teach(TeachConfig(dataset="arith", dataset_opt=["min_steps=1", "max_steps=1"], teacher="gold", first=4,
                      samples=1, out=str(out), progress=False))
    return out


@pytest.mark.slow
def test_faults_are_retried_recorded_and_only_failures_asked_again(gold_run, server, tmp_path):
    run = _copy(gold_run, tmp_path / "run")
    cfg = ScoreConfig(teacher="openai", model="smollm2", top_logprobs=3, concurrency=1, max_retries=3,
                      progress=False)
    # 1st answer fine (the probe), then 429 and 500 (retried), then an echo cut short (recorded, not stored)
    with fault_proxy(server, {2: "429", 3: "500", 5: "short-echo"}) as proxy:
        sec = score(run, cfg.model_copy(update={"base_url": proxy.url}))
        asked = _score_requests(proxy)
    assert len(asked) == 6 and asked[1] == asked[2] == asked[3]  # the same request, retried
    assert sec["status"] == "incomplete" and sec["scored"] == 3 and sec["failed"] == 1
    assert "end at character" in sec["failure_examples"][0]
    rows = _scored(run)
    assert sum(1 for r in rows if r["top_logprobs"]) == 3  # the failed one exports without top-k
    r = run_in_process("score", str(run), "--teacher", "openai", "--model", "smollm2", "--base-url", server,
                "--top-logprobs", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "1 failed" not in r.stdout and "3 already scored" in r.stdout
    m = json.loads((run / "manifest.json").read_text())
    assert m["scores"]["scored"] == 4 and m["scores"]["this_run"]["requests_sent"] == 1


@pytest.mark.slow
def test_a_server_that_cannot_score_is_one_error_at_the_first_request(gold_run, server, tmp_path):
    run = _copy(gold_run, tmp_path / "run")
    with fault_proxy(server, lambda n, tag, body: "no-logprobs") as proxy:
        with pytest.raises(ModelError, match="returned no prompt log-probabilities .* cannot score text"):
            score(run, ScoreConfig(teacher="openai", model="smollm2", base_url=proxy.url, concurrency=4,
                                   progress=False))
        assert len(_score_requests(proxy)) == 1
        # --no-progress: a slow first answer (a loaded machine) would otherwise print a progress line first
        r = run_in_process("score", str(run), "--teacher", "openai", "--model", "smollm2", "--base-url", proxy.url,
                    "--no-progress")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--logits_all true" in r.stderr and "Traceback" not in r.stderr
    assert json.loads((run / "manifest.json").read_text())["scores"]["scored"] == 0


@pytest.mark.slow
def test_kill9_then_rerun_asks_only_for_what_is_not_scored(gold_run, server, tmp_path):
    run = _copy(gold_run, tmp_path / "run")
    db_path = run / "store.sqlite"

    def n_scored() -> int:
        db = sqlite3.connect(str(db_path))
        try:
            return db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()

    args = ["score", str(run), "--teacher", "openai", "--model", "smollm2", "--top-logprobs", "3",
            "--concurrency", "1", "--no-progress"]
    exe = Path(sys.executable).with_name("lorasp")
    with fault_proxy(server) as proxy:
        proc = subprocess.Popen([str(exe), *args, "--base-url", proxy.url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(os.environ))
        deadline = time.time() + 200
        while time.time() < deadline and n_scored() < 1 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = n_scored()
        n_before = len(_score_requests(proxy))
        assert 1 <= before < 4
        r = run_in_process(*args, "--base-url", proxy.url)
        assert r.returncode == 0, r.stderr
        rerun = _score_requests(proxy)[n_before:]
    assert len(rerun) == 4 - before, (rerun, before)
    assert f"{before} already scored" in r.stdout
    assert n_scored() == 4


@pytest.mark.slow
def test_a_scored_run_keeps_its_scores_when_teach_extends_it_and_rescoring_asks_only_new_samples(tmp_path, data_dir):
    run = teach(TeachConfig(dataset="arith", teacher="gold", first=2, samples=1, out=str(tmp_path / "run"),
                            progress=False))
    cfg = ScoreConfig(teacher="hf", model="smollm2-135m", top_logprobs=3, progress=False)
    first = score(run, cfg)
    assert first["scored"] == 2 and first["this_run"]["scored"] == 2
    before = {r["problem_id"]: r["top_logprobs"] for r in _scored(run)}
    # teach again with one more problem: the export keeps the scorer's top-k for the scored samples, and the new
    # sample has none (every exported top-k comes from one model)
    teach(TeachConfig(dataset="arith", teacher="gold", first=3, samples=1, out=str(run), progress=False))
    rows = {r["problem_id"]: r for r in _scored(run)}
    assert len(rows) == 3 and sum(1 for r in rows.values() if r["top_logprobs"]) == 2
    assert all(rows[k]["top_logprobs"] == v for k, v in before.items())
    m = json.loads((run / "manifest.json").read_text())
    assert m["scores"]["fingerprint"] == first["fingerprint"] and m["with_top_logprobs"] == 2
    from lora_spec.runs import find_runs

    (row,) = [r for r in find_runs(tmp_path) if r["kind"] == "teach"]
    assert row["headline"].endswith("; top-3 scored by hf (smollm2-135m): 2/2")
    again = score(run, cfg)
    assert again["scored"] == 3 and again["this_run"]["scored"] == 1 and again["this_run"]["resumed_from_store"] == 2
    assert again["runs"] == 2
    # another k is another scorer: all asked again, and the export switches to it
    k5 = score(run, cfg.model_copy(update={"top_logprobs": 5}))
    assert k5["this_run"]["scored"] == 3 and k5["fingerprint"] != first["fingerprint"]
    assert all(len(t) >= 5 for r in _scored(run) for t in r["top_logprobs"] if t)


def test_a_full_disk_while_storing_scores_is_one_line_naming_the_store(tmp_path):
    """A real full disk (a 1 MB tmpfs): the store's write fails as an OSError naming it (the CLI's one line),
    and what was committed before stays readable."""
    import errno
    import subprocess as sp

    from lora_spec.store import SampleStore

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    rc = sp.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if rc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {rc.stderr.decode().strip()}")
    try:
        st = SampleStore(mnt / "store.sqlite")
        key = ("t", "p", "q0", 0)
        st.put_score("s", key, "text", ["te", "xt"], [{"te": -0.1}, {"xt": -0.2}])
        with pytest.raises(OSError) as err:
            for i in range(1, 10_000):
                st.put_score("s", ("t", "p", f"q{i}", 0), "x" * 2000, ["x"] * 50, [{"x": -0.5, "y": -1.5}] * 50)
        assert err.value.errno == errno.ENOSPC and str(mnt / "store.sqlite") == err.value.filename
        assert key in st.scores("s")
        st.close()
    finally:
        sp.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_ctrl_c_stops_at_once_keeps_what_was_scored_and_says_how_to_resume(gold_run, server, tmp_path):
    run = _copy(gold_run, tmp_path / "run")
    # the first answer is real; every later request hangs in the proxy, as a slow server would
    with fault_proxy(server, lambda n, tag, body: None if n == 1 else "timeout", hang=60) as proxy:
        exe = Path(sys.executable).with_name("lorasp")
        proc = subprocess.Popen([str(exe), "score", str(run), "--teacher", "openai", "--model", "smollm2",
                                 "--base-url", proxy.url, "--top-logprobs", "3", "--concurrency", "2",
                                 "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 200
        while time.time() < deadline and len(proxy.log) < 3 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None and len(proxy.log) >= 3, "never got past the first answer"
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        stopped_in = time.time() - t0
    assert proc.returncode == 130 and stopped_in < 10, (proc.returncode, stopped_in, err)
    assert "interrupted: 1/4 samples are scored" in err and "rerun the same command" in err
    assert len(err.strip().splitlines()) == 1, err
    m = json.loads((run / "manifest.json").read_text())
    assert m["scores"]["status"] == "interrupted" and m["scores"]["scored"] == 1
    assert sum(1 for r in _scored(run) if r["top_logprobs"]) == 1
