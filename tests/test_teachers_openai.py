"""The openai teacher against the real llama.cpp server (SmolLM2 GGUF), with a fault-injecting proxy in front.

Requests are kept tiny (a few tokens) because the server runs on two shared CPU cores.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_spec.records import Problem, TeacherRequest
from lora_spec.teach import TeachConfig, load_run, teach
from tests.conftest import run_cli
from tests.fault_proxy import fault_proxy
from tests.llama_server import llama_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("llama") / "server.log"
    # one thread: llama.cpp's two spinning threads slow down 50x when other processes compete for the cores
    with llama_server(log=log, extra=["--n_threads", "1"]) as base:
        yield base


def _cfg(out: Path, url: str, **kw) -> TeachConfig:
    base = dict(dataset="gsm8k", split="train", teacher="openai", model="smollm2", base_url=url,
                prompt="zero-shot-cot", samples=1, max_tokens=6, temperature=0.8, concurrency=2,
                out=str(out), progress=False)
    base.update(kw)
    return TeachConfig(**base)


def _stored(out: Path) -> dict[tuple[str, int], str]:
    db = sqlite3.connect(str(out / "store.sqlite"))
    try:
        return {(r[0], r[1]): r[2] for r in db.execute("SELECT problem_id, sample_index, text FROM samples")}
    finally:
        db.close()


def test_completions_n_and_topk_logprobs(server, tmp_path, monkeypatch):
    """n=2 on a server that ignores n: noticed on the first answer, the rest asked one by one; top-k per token."""
    monkeypatch.setenv("LORASP_TEST_KEY", "sk-test-SECRET-123")
    with fault_proxy(server) as proxy:
        out = teach(_cfg(tmp_path / "run", proxy.url, first=2, samples=2, top_logprobs=3,
                         api_key_env="LORASP_TEST_KEY"))
        log = list(proxy.log)
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete"
    assert m["counts"]["requested"] == 4 and m["counts"]["received"] == 4 and m["counts"]["failed"] == 0
    # first request asks n=2 and gets one choice; then 1 leftover + 2 single requests for the second problem
    assert [e.body["n"] for e in log] == [2, 1, 1, 1]
    assert sorted(e.tag for e in log) == sorted(["gsm8k/train/0/0/2", "gsm8k/train/0/1/1",
                                                  "gsm8k/train/1/0/1", "gsm8k/train/1/1/1"])
    assert len({e.body["seed"] for e in log}) == 4  # every sample has its own seed
    assert m["this_run"]["requests_sent"] == 4
    assert m["usage"]["completion_tokens"] > 0 and m["usage"]["prompt_tokens"] > 0
    # the key went to the server and nowhere else
    assert all(e.auth == "Bearer sk-test-SECRET-123" for e in log)
    for f in out.iterdir():
        assert b"sk-test-SECRET" not in f.read_bytes(), f
    problems, samples = load_run(out, include_incorrect=True)
    assert len(problems) == 2 and len(samples) == 4
    for s in samples:
        assert s.tokens and "".join(s.tokens) == s.text
        assert len(s.top_logprobs) == len(s.tokens)
        for tok, top in zip(s.tokens, s.top_logprobs):
            assert len(top) >= 3 and tok in top and all(v <= 0 for v in top.values())
        assert s.usage == {} or s.usage["completion_tokens"] >= 1
    # a rerun of the same command sends nothing
    with fault_proxy(server) as proxy:
        teach(_cfg(tmp_path / "run", proxy.url, first=2, samples=2, top_logprobs=3, api_key_env="LORASP_TEST_KEY"))
        assert proxy.log == []


def test_server_that_honours_n_gets_one_request_per_problem(server, tmp_path):
    with fault_proxy(server, fanout=True) as proxy:
        out = teach(_cfg(tmp_path / "run", proxy.url, first=2, samples=2, max_tokens=4, top_logprobs=2))
        log = list(proxy.log)
    assert sorted(e.tag for e in log) == ["gsm8k/train/0/0/2", "gsm8k/train/1/0/2"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["received"] == 4 and m["this_run"]["requests_sent"] == 2
    # usage is counted once per request, not once per sample
    _, samples = load_run(out, include_incorrect=True)
    first = {s.problem_id: s.usage for s in samples if s.sample_index == 0}
    assert m["usage"]["completion_tokens"] == sum(u["completion_tokens"] for u in first.values())
    assert all(s.usage == {} for s in samples if s.sample_index == 1)


def test_chat_completions_with_logprobs(server):
    from lora_spec.plugins.teachers.openai import OpenAITeacher

    t = OpenAITeacher(model="smollm2", base_url=server, api="chat", max_tokens=5, top_logprobs=2, temperature=0.5)
    p = Problem("q1", "What is 2 + 3?", "5")
    (row,) = t.generate([TeacherRequest(p, [{"role": "user", "content": p.question}], "pid", n=1)])
    t.close()
    (s,) = row
    assert s.error is None and s.text and s.tokens and len(s.tokens) == len(s.top_logprobs) <= 5
    assert all(len(d) >= 2 for d in s.top_logprobs)
    assert s.finish_reason in ("length", "stop")


def test_faults_retry_and_malformed_is_recorded(server, tmp_path):
    """429, 500 and 503 are retried with backoff; truncated JSON is a recorded failure; a rerun retries it."""
    faults = {1: "429", 2: "500", 3: "503", 4: "truncate"}
    cfg = _cfg(tmp_path / "run", "", first=3, concurrency=1, max_retries=5, max_tokens=3)
    with fault_proxy(server, faults) as proxy:
        out = teach(cfg.model_copy(update={"base_url": proxy.url}))
        log = list(proxy.log)
    m = json.loads((out / "manifest.json").read_text())
    assert [e.fault for e in log] == ["429", "500", "503", "truncate", None, None]
    assert [e.tag for e in log[:4]] == ["gsm8k/train/0/0/1"] * 4  # the same request, retried
    assert [e.tag for e in log[4:]] == ["gsm8k/train/1/0/1", "gsm8k/train/2/0/1"]
    assert m["status"] == "incomplete"
    assert m["counts"]["received"] == 2 and m["counts"]["failed"] == 1
    assert "malformed response" in m["failure_examples"][0]
    assert ("gsm8k/train/0", 0) not in _stored(out)
    # rerun: only the failed request is sent again
    with fault_proxy(server) as proxy:
        out = teach(cfg.model_copy(update={"base_url": proxy.url}))
        assert [e.tag for e in proxy.log] == ["gsm8k/train/0/0/1"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["received"] == 3 and m["counts"]["failed"] == 0
    assert m["runs"] == 2 and m["this_run"]["resumed_from_store"] == 2


def test_timeouts_are_retried_with_backoff_then_recorded():
    """A server that never answers: each try times out, is retried with growing delays, then recorded."""
    from lora_spec.plugins.teachers.openai import OpenAITeacher

    with fault_proxy("http://127.0.0.1:9/v1", lambda n, tag, body: "timeout", hang=5) as proxy:
        t = OpenAITeacher(model="smollm2", base_url=proxy.url, timeout=0.5, max_retries=2, backoff=0.4)
        t0 = time.time()
        (row,) = t.generate([TeacherRequest(Problem("q1", "What is 2 + 3?", "5"), "Q: 2+3?\nA:", "pid")])
        elapsed = time.time() - t0
        t.close()
        tags = [e.tag for e in proxy.log]
    assert tags == ["q1/0/1"] * 3
    assert row[0].error.startswith("gave up after 3 attempts: no complete answer within --timeout 0.5s")
    # 3 timeouts of 0.5s plus backoff of 0.2-0.4s and 0.4-0.8s (equal jitter)
    assert 2.0 <= elapsed < 4.5, elapsed


def test_retries_exhausted_then_cli_reports_incomplete(server, tmp_path):
    with fault_proxy(server, lambda n, tag, body: "503" if tag.startswith("gsm8k/train/1/") else None) as proxy:
        r = run_cli("teach", "--dataset", "gsm8k", "--teacher", "openai", "--model", "smollm2", "--base-url",
                    proxy.url, "--first", "2", "--samples", "1", "--max-tokens", "4", "--max-retries", "2",
                    "--out", str(tmp_path / "run"), "--no-progress")
        tags = [e.tag for e in proxy.log]
    assert r.returncode == 1, r.stderr
    assert tags.count("gsm8k/train/1/0/1") == 3  # first try + 2 retries
    assert "1/2 samples" in r.stdout and "rerun the same command" in r.stderr
    assert "gave up after 3 attempts: HTTP 503" in r.stderr


def test_unauthorized_is_one_line_error(server, tmp_path):
    with fault_proxy(server, lambda n, tag, body: "401") as proxy:
        r = run_cli("teach", "--dataset", "gsm8k", "--teacher", "openai", "--model", "smollm2", "--base-url",
                    proxy.url, "--first", "2", "--out", str(tmp_path / "run"), "--no-progress",
                    env={"OPENAI_API_KEY": "sk-wrong"})
    assert r.returncode == 1
    assert r.stderr.startswith("error: teacher request failed: HTTP 401") and "OPENAI_API_KEY" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "sk-wrong" not in r.stderr


def test_kill9_midflight_then_rerun_resends_nothing_stored(server, tmp_path):
    """kill -9 a real teach run while requests are in flight; the rerun never resends a stored result."""
    out = tmp_path / "run"
    args = ["teach", "--dataset", "gsm8k", "--teacher", "openai", "--model", "smollm2", "--first", "6",
            "--samples", "1", "--max-tokens", "5", "--concurrency", "2", "--out", str(out), "--no-progress"]
    exe = Path(sys.executable).with_name("lorasp")
    with fault_proxy(server) as proxy:
        proc = subprocess.Popen([str(exe), *args, "--base-url", proxy.url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(os.environ))
        deadline = time.time() + 150
        stored: dict = {}
        while time.time() < deadline:
            if (out / "store.sqlite").exists():
                try:
                    stored = _stored(out)
                except sqlite3.OperationalError:
                    stored = {}
                if len(stored) >= 2:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed; make it longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        n_before = len(proxy.log)
        before = _stored(out)  # what survived the kill (WAL recovery on open)
        assert 2 <= len(before) < 6
        r = run_cli(*args, "--base-url", proxy.url)
        assert r.returncode == 0, r.stderr
        rerun_tags = [e.tag for e in proxy.log[n_before:]]
    stored_tags = {f"{pid}/{i}/1" for pid, i in before}
    assert not set(rerun_tags) & stored_tags, "a request whose result was stored was sent again"
    assert len(rerun_tags) == 6 - len(before)
    after = _stored(out)
    assert len(after) == 6
    assert all(after[k] == v for k, v in before.items())  # nothing lost or overwritten
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["received"] == 6 and m["this_run"]["resumed_from_store"] == len(before)
    assert m["runs"] == 2


def test_server_down_is_a_recorded_failure_not_a_crash(tmp_path):
    from tests.llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    out = teach(_cfg(tmp_path / "run", url, first=1, max_retries=1, timeout=2))
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "incomplete" and m["counts"]["failed"] == 1
    assert "connection error" in m["failure_examples"][0]


def test_openai_teacher_config_errors():
    from lora_spec.plugins.teachers.openai import OpenAITeacher

    with pytest.raises(Exception, match="needs --model"):
        OpenAITeacher(model="")
    with pytest.raises(Exception, match="base-url"):
        OpenAITeacher(model="m", base_url="localhost:8000")
    with pytest.raises(Exception, match="top-logprobs"):
        OpenAITeacher(model="m", top_logprobs=50)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_at_once_and_keeps_what_arrived(server, tmp_path, sig):
    """SIGINT/SIGTERM while a request hangs: the run stops within seconds, keeps what arrived, writes the manifest."""
    out = tmp_path / "run"
    hang = lambda n, tag, body: "timeout" if tag.startswith("gsm8k/train/1/") else None  # noqa: E731
    with fault_proxy(server, hang, hang=60) as proxy:
        exe = Path(sys.executable).with_name("lorasp")
        proc = subprocess.Popen([str(exe), "teach", "--dataset", "gsm8k", "--teacher", "openai", "--model", "smollm2",
                                 "--base-url", proxy.url, "--first", "3", "--samples", "1", "--max-tokens", "4",
                                 "--concurrency", "1", "--out", str(out), "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and not any(e.tag.startswith("gsm8k/train/1/") for e in proxy.log):
            time.sleep(0.05)
        time.sleep(0.3)
        t0 = time.time()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        elapsed = time.time() - t0
    assert proc.returncode == 130, err
    assert elapsed < 10
    assert err.strip().startswith("error: interrupted: 1/3 samples are stored") and "rerun" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "interrupted" and m["counts"]["received"] == 1
    assert list(_stored(out)) == [("gsm8k/train/0", 0)]
