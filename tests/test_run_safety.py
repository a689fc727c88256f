"""Nothing lost, nothing paid twice: the run lock (two real processes), checkpoint integrity and fallback on
``--resume``, the atomic replacement of an artifact, the file/openai teachers' failure semantics and a quiet
terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_spec.errors import DataError
from tests.conftest import run_cli
from tests.fault_proxy import fault_proxy
from tests.helpers import main_cli

LORASP = [str(Path(sys.executable).with_name("lorasp"))] if Path(sys.executable).with_name("lorasp").exists() \
    else [sys.executable, "-m", "lora_spec.cli"]


# --------------------------------------------------------------------------------------------- run lock

def test_second_teach_on_the_same_run_is_refused_and_pays_nothing(tmp_path):
    """Two real ``lorasp teach`` processes on one --out: the second is refused at once, naming the first's pid,
    and sends no request; after the first is killed with -9, its lock is taken over with a warning."""
    out = tmp_path / "run"
    args = ["teach", "--dataset", "arith", "--first", "6", "--samples", "1", "--teacher", "openai", "--model", "m",
            "--max-retries", "0", "--concurrency", "2", "--out", str(out), "--no-progress"]
    hold = {"on": True}
    with fault_proxy("http://127.0.0.1:9/v1", lambda n, tag, body: "timeout" if hold["on"] else "400",
                     hang=60) as proxy:
        a = subprocess.Popen(LORASP + args + ["--base-url", proxy.url, "--timeout", "120"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            t0 = time.time()
            while len(proxy.log) < 2 and time.time() - t0 < 120:  # A holds the lock and has requests in flight
                assert a.poll() is None, a.communicate()
                time.sleep(0.2)
            sent = len(proxy.log)
            b = run_cli(*args, "--base-url", proxy.url)
            assert b.returncode == 1, b.stderr
            lines = [ln for ln in b.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1 and f"in use by pid {a.pid} on " in lines[0] and str(out) in lines[0], b.stderr
            time.sleep(0.5)
            assert len(proxy.log) == sent  # B sent nothing: no sample paid for twice
        finally:
            a.send_signal(signal.SIGKILL)
            a.wait()
        hold["on"] = False
        c = run_cli(*args, "--base-url", proxy.url)
    assert f"taking over the stale lock of pid {a.pid}" in c.stderr, c.stderr
    assert "Traceback" not in c.stderr
    # C ran (its requests were answered 400 by the proxy: recorded failures, an incomplete run that says so)
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["requested"] == 6 and c.returncode == 1


def test_fit_on_a_locked_checkpoint_dir_is_refused_then_a_dead_owner_is_taken_over(tmp_path, capsys):
    from lora_spec.outputs import RunLock

    ckpt = tmp_path / "ad.checkpoints"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lora_spec.outputs import RunLock; "
                               f"RunLock({str(ckpt)!r}, 'fit checkpoint directory').acquire(); "
                               "print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = main_cli(capsys, "fit", "--dataset", "arith", "--student", "tiny-llama", "--out",
                                str(tmp_path / "ad"))
        assert code == 1 and f"in use by pid {holder.pid}" in err and "ad.checkpoints" in err, err
        assert not (tmp_path / "ad.teach").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    warnings: list[str] = []
    with RunLock(ckpt, "fit checkpoint directory", warn=warnings.append):
        assert json.loads((ckpt / ".lorasp.lock").read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"stale lock of pid {holder.pid}" in warnings[0]
    with RunLock(ckpt) as again:  # released: the next one takes it without a warning
        assert again.fd is not None


# --------------------------------------------------------------------------------------------- checkpoints

FIT = dict(dataset="arith", teacher="gold", student="tiny-llama", first=16, batch_size=4, save_every=1,
           progress=False, tracker="none", in_dist="none", ood="none", generic="none")


def test_resume_skips_a_corrupt_newest_checkpoint_on_a_quiet_terminal(tmp_path):
    """A fit whose newest checkpoint is truncated, with a temporary directory left by a kill -9 during a save:
    ``lorasp fit --resume`` (a real process, nf4 as in QLoRA) warns naming the checkpoint it skips, removes the
    temporary directory, resumes from the one before and repeats the uninterrupted run's losses exactly; its
    terminal shows lorasp's own lines only (no bitsandbytes kernel notice, no transformers FutureWarning, no
    'Loading weights' bars under --no-progress)."""
    from lora_spec.ckpt_files import INDEX, problem
    from lora_spec.fit import fit

    out = tmp_path / "ad"
    ref = fit(out=str(out), max_steps=3, quant="nf4", **FIT)
    ckpts = out.with_name("ad.checkpoints")
    assert all((ckpts / f"step-{s:06d}" / INDEX).exists() for s in (1, 2, 3))
    w = ckpts / "step-000003" / "trainable.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    stale = ckpts / ".step-000004.tmp-999999-1"
    stale.mkdir()
    (stale / "state").write_bytes(b"")
    r = run_cli("fit", "--dataset", "arith", "--teacher", "gold", "--student", "tiny-llama", "--quant", "nf4",
                "--first", "16", "--batch-size", "4", "--save-every", "1", "--max-steps", "3", "--no-progress",
                "--tracker", "none", "--in-dist", "none", "--ood", "none", "--generic", "none", "--resume",
                "--overwrite", "--out", str(out), env={"LORASP_DEBUG": ""})
    err = r.stderr
    assert r.returncode == 0, err
    assert f"warning: skipping checkpoint {ckpts / 'step-000003'}: trainable.safetensors has 100 bytes" in err, err
    assert f"resuming from {ckpts / 'step-000002'}" in err
    assert "removed 1 unfinished temporary checkpoint directory" in err and not stale.exists()
    m = json.loads((out / "lorasp.json").read_text())
    assert m["train"]["loss_history"] == [round(h["loss"], 6) for h in ref.history]  # the same run, exactly
    assert problem(ckpts / "step-000003") is None  # whole again
    for bad in ("gemm_4bit", "kernels", "FutureWarning", "Warning:", "Loading weights", "warnings.warn", "%|"):
        assert bad not in err, err
    own = ("teaching: ", "data: ", "student: ", "warning: ", "resuming from ", "trained ", "wrote ",
           "specialization report: ", "next: ")  # the last two: issue 18 (report for every fit, next steps)
    assert all(ln.startswith(own) for ln in err.splitlines() if ln.strip()), err


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    from lora_spec.fit import fit

    capsys.readouterr()
    fit(out=str(tmp_path / "ad"), max_steps=1, resume=True, **FIT)
    assert "--resume: no complete checkpoint in " in capsys.readouterr().err


def test_a_checkpoint_list_catches_a_changed_or_missing_file(tmp_path):
    from lora_spec.ckpt_files import problem, seal, usable

    for s in (1, 2):
        d = tmp_path / f"step-{s:06d}"
        d.mkdir()
        (d / "weights.bin").write_bytes(bytes(range(200)))
        (d / "state.json").write_text('{"a": 1}')
        seal(d)
    assert problem(tmp_path / "step-000002") is None
    (tmp_path / "step-000002" / "state.json").write_text('{"a": 2}')  # same size, other bytes
    assert "state.json does not match its checksum" in problem(tmp_path / "step-000002")
    (tmp_path / "step-000001" / "weights.bin").unlink()
    warned: list[str] = []
    left = usable([(1, tmp_path / "step-000001"), (2, tmp_path / "step-000002")], warned.append)
    assert left == [] and len(warned) == 2 and "weights.bin is missing" in warned[1]


# --------------------------------------------------------------------------------------------- artifacts

def test_atomic_dir_replaces_only_lorasp_outputs_and_only_when_complete(tmp_path):
    from lora_spec.artifact_files import atomic_dir
    from lora_spec.outputs import OutputError

    art = tmp_path / "art"
    art.mkdir()
    (art / "lorasp.json").write_text(json.dumps({"kind": "adapter", "base": {}}))
    (art / "adapter_model.safetensors").write_bytes(b"r16")
    with pytest.raises(RuntimeError):  # the new one fails half-way: the old artifact is untouched
        with atomic_dir(art) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"half")
            raise RuntimeError("crash")
    assert (art / "adapter_model.safetensors").read_bytes() == b"r16"
    with atomic_dir(art) as tmp:
        (tmp / "lorasp.json").write_text(json.dumps({"kind": "adapter", "base": {}}))
        (tmp / "adapter_model.safetensors").write_bytes(b"r4")
    assert (art / "adapter_model.safetensors").read_bytes() == b"r4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary or old copy left
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    f = tmp_path / "file"
    f.write_text("mine")
    for target in (notes, f):
        with pytest.raises(OutputError, match="lorasp does not replace it"):
            with atomic_dir(target):
                raise AssertionError("never reached")
    assert (notes / "notes.txt").read_text() == "mine" and f.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "file", "notes"]


# --------------------------------------------------------------------------------------------- teachers

def test_file_teacher_with_nothing_matching_is_one_error(tmp_path, capsys):
    f = tmp_path / "other.jsonl"
    f.write_text(json.dumps({"question": "Something else entirely?", "output": "The answer is 1."}) + "\n")
    code, out, err = main_cli(capsys, "teach", "--dataset", "arith", "--first", "3", "--teacher", "file",
                              "--teacher-opt", f"path={f}", "--samples", "1", "--out", str(tmp_path / "run"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and str(f) in lines[0] and "no teacher output for any of the 3" in lines[0]


def test_file_teacher_default_samples_one_file_exits_0(tmp_path, capsys):
    """The default --samples 4 with a one-output file: capped to 1 with a note, complete, exit 0."""
    from lora_spec.plugins.datasets.arith import Arith

    probs = list(Arith().load("train", limit=3))
    f = tmp_path / "one.json"
    f.write_text(json.dumps([{"question": p.question, "output": f"The answer is {p.answer}."} for p in probs[:2]]))
    code, out, err = main_cli(capsys, "teach", "--dataset", "arith", "--first", "3", "--teacher", "file",
                              "--teacher-opt", f"path={f}", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "2/3 samples (0 failed" in out
    assert f"note: --samples 4: teacher 'file' ({f}) holds at most 1 output per problem; asking for 1" in err
    assert [ln for ln in err.splitlines() if "not available" in ln] == [
        f"note: 1 of 3 samples are not available from the teacher (e.g. no teacher output #0 for problem "
        f"{probs[2].id} in {f} (0 found)); they are skipped, not retried"]
    assert "rerun" not in err


def test_unreachable_server_trips_the_circuit_breaker(tmp_path, capsys):
    from tests.llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    t0 = time.time()
    code, _, err = main_cli(capsys, "teach", "--dataset", "arith", "--first", "32", "--samples", "1", "--teacher",
                            "openai", "--model", "m", "--base-url", url, "--concurrency", "1", "--out",
                            str(tmp_path / "run"))
    elapsed = time.time() - t0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1, err
    assert f"cannot reach the teacher server at {url}: 5 connection attempts in a row failed" in lines[0]
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["status"] == "failed" and m["this_run"]["requests_sent"] == 5  # not 32 x 7 attempts
    assert elapsed < 30, elapsed


def test_breaker_resets_on_any_answer():
    from lora_spec.plugins.teachers.openai import OpenAITeacher
    from lora_spec.records import Problem, TeacherRequest

    with fault_proxy("http://127.0.0.1:9/v1", lambda n, tag, body: "400") as proxy:
        t = OpenAITeacher(model="m", base_url=proxy.url, max_connect_failures=2, max_retries=0)
        reqs = [TeacherRequest(Problem(f"q{i}", "2+3?", "5"), "Q: 2+3?\nA:", "pid") for i in range(4)]
        rows = t.generate(reqs)  # every request answered (400): a failure each, never a tripped breaker
        t.close()
    assert all(r[0].error and r[0].error.startswith("HTTP 400") for r in rows)


# --------------------------------------------------------------------------------------------- small items

def test_blank_lines_in_a_data_file_are_reported(tmp_path, capsys):
    from lora_spec.records import iter_jsonl

    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n   \n')
    assert [o["a"] for _, o in iter_jsonl(p)] == [1, 2]
    assert capsys.readouterr().err.strip() == f"warning: {p}: skipped 2 blank lines (line 2, 4)"
    p.write_text('{"a": "unterminated}\n')
    with pytest.raises(DataError) as ei:
        list(iter_jsonl(p))
    assert str(ei.value) == f"{p}:1: invalid JSON (Unterminated string starting at, column 7)"


def test_os_errors_name_the_file(tmp_path, capsys, monkeypatch):
    from lora_spec import cli

    def boom(*a, **k):
        raise FileExistsError(17, "File exists", str(tmp_path / "x"))

    monkeypatch.setattr(cli, "cli", type("C", (), {"main": staticmethod(boom)}))
    with pytest.raises(SystemExit) as ei:
        cli.main(["plugins"])
    assert ei.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'x'}: File exists (FileExistsError)"


def test_library_filters_are_targeted():
    import logging
    import warnings

    from lora_spec.cli import quiet_libraries

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_libraries([])
        assert logging.getLogger("bitsandbytes.backends.cpu.ops").level == logging.ERROR
        for module in ("transformers.modeling_utils", "peft.tuners.lora", "lora_spec.fit", "user_code"):
            warnings.warn_explicit(f"from {module}", FutureWarning, "x.py", 1, module=module)
        warnings.warn_explicit("a real problem", UserWarning, "x.py", 1, module="transformers.modeling_utils")
    # only transformers'/peft's FutureWarnings are dropped; lorasp's, the user's and other categories still show
    assert sorted(str(w.message) for w in seen) == ["a real problem", "from lora_spec.fit", "from user_code"]


def test_eval_no_progress_prints_no_loading_bars_and_keeps_earlier_results(tmp_path):
    """``eval --no-progress``: no "Loading weights" bar; a second eval into the same --out needs --overwrite."""
    args = ["eval", "--model", "tiny-llama", "--suite", "arith", "--limit", "1", "--max-new-tokens", "2",
            "--no-progress", "--out", str(tmp_path / "ev")]
    r = run_cli(*args, env={"LORASP_DEBUG": ""})
    assert r.returncode == 0 and "Loading weights" not in r.stderr and "%|" not in r.stderr, r.stderr
    first = (tmp_path / "ev" / "results.json").read_bytes()
    again = run_cli(*args, env={"LORASP_DEBUG": ""})
    assert again.returncode == 2 and again.stderr.strip().endswith("or choose another --out"), again.stderr
    assert "--overwrite" in again.stderr and (tmp_path / "ev" / "results.json").read_bytes() == first
