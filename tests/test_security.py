"""Nothing lorasp loads can run code, and no secret leaves the environment (issue 19).

Every attack file here is checked to be live first (plain ``pickle``/``torch.load(weights_only=False)`` or
``trust_remote_code=True`` does create the marker), so a test that sees no marker proves lorasp refused it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.fault_proxy import fault_proxy

ENV = {"OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


class _Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint or weight file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _evil_torch_file(path: Path, marker: Path) -> Path:
    torch.save({"step": 5, "optimizer": {"state": {}, "param_groups": []}, "payload": _Payload(marker)}, str(path))
    return path


def _cli(capsys, *args: str):
    """The real CLI in this process (no interpreter start-up): a CompletedProcess-like result."""
    from types import SimpleNamespace

    from lora_spec.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return SimpleNamespace(returncode=e.value.code, stdout=out.out, stderr=out.err)


def _one_line_error(r) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _policy_off():
    from lora_spec.safeload import set_policy

    set_policy(allow_pickle=False, trust_remote_code=False)
    yield
    set_policy(allow_pickle=False, trust_remote_code=False)


def test_payload_is_live(tmp_path):
    """The attack files of this module really run code when unpickled the unsafe way."""
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    pickle.loads(pickle.dumps(_Payload(m1)))
    torch.load(str(_evil_torch_file(tmp_path / "x.pt", m2)), weights_only=False)
    assert m1.exists() and m2.exists()


# --------------------------------------------------------------------------------------------- trainer state

def _optimizer_state():
    p, q = torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [q], "weight_decay": 0.0}], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        p.grad, q.grad = torch.randn(3, 2), torch.randn(4)
        opt.step()
        sched.step()
    return {"step": 3, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "history": [{"step": 1, "loss": 0.25, "grad_norm": None, "lr": 1e-3}],
            "checkpoints": [{"step": 0, "loss": None, "scores": {"ood": 0.5, "ood/svamp": 1.0}, "path": None}],
            "signature": {"seed": 0, "loss": "sample"}, "train_seconds": 1.5, "tokens": 10, "total_steps": 9}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_trainer_state_is_safetensors_and_json_and_round_trips_exactly(tmp_path):
    from lora_spec.trainer import LEGACY_STATE_FILE, STATE_FILE, STATE_TENSORS, load_state, save_state

    state = _optimizer_state()
    save_state(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([STATE_FILE, STATE_TENSORS])
    assert not (tmp_path / LEGACY_STATE_FILE).exists()
    json.loads((tmp_path / STATE_FILE).read_text())  # plain JSON
    back = load_state(tmp_path)
    assert _same(state, back)  # tensors bit for bit, tuples stay tuples, int keys stay ints
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert list(back["optimizer"]["state"]) == [0, 1]


def test_legacy_pickle_state_loads_only_through_weights_only(tmp_path):
    """An old checkpoint (trainer_state.pt) with plain content still resumes; a crafted one is refused."""
    from lora_spec.errors import DataError
    from lora_spec.trainer import LEGACY_STATE_FILE, load_state

    state = _optimizer_state()
    good = tmp_path / "good"
    good.mkdir()
    torch.save(state, str(good / LEGACY_STATE_FILE))
    assert _same(state, load_state(good))

    marker = tmp_path / "PWNED"
    for name, write in [("zip", lambda p: _evil_torch_file(p, marker)),
                        ("raw-pickle", lambda p: p.write_bytes(pickle.dumps({"payload": _Payload(marker)})))]:
        d = tmp_path / name
        d.mkdir()
        write(d / LEGACY_STATE_FILE)
        with pytest.raises(DataError, match="refusing to load") as e:
            load_state(d)
        assert str(d / LEGACY_STATE_FILE) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_malformed_state_is_one_line(tmp_path):
    from lora_spec.errors import DataError
    from lora_spec.trainer import STATE_FILE, load_state, save_state

    save_state(_optimizer_state(), tmp_path)
    doc = json.loads((tmp_path / STATE_FILE).read_text())
    doc["state"]["optimizer"]["state"]["__items__"][0][1]["exp_avg"] = {"__tensor__": "nope"}
    (tmp_path / STATE_FILE).write_text(json.dumps(doc))
    with pytest.raises(DataError, match="tensor 'nope' is missing"):
        load_state(tmp_path)
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(DataError, match="unreadable trainer state"):
        load_state(tmp_path)


@pytest.fixture(scope="module")
def teach_run(tmp_path_factory, data_dir):
    from lora_spec.teach import teach

    return teach(dataset="arith", split="train", first=16, teacher="gold", samples=1,
                 out=str(tmp_path_factory.mktemp("teach") / "arith"), progress=False)


def test_resume_refuses_a_crafted_pickle_checkpoint(teach_run, tmp_path, tiny_llama_path):
    """`lorasp fit --resume` on a checkpoint dir whose state file is a code-running pickle: refused, no marker."""
    from safetensors.torch import save_file

    from lora_spec.errors import DataError
    from lora_spec.fit import FitConfig, fit

    out = tmp_path / "run"
    step = tmp_path / "run.checkpoints" / "step-000005"
    step.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(step / "trainable.safetensors"))
    marker = tmp_path / "PWNED"
    _evil_torch_file(step / "trainer_state.pt", marker)
    cfg = FitConfig(student="tiny-llama", data=str(teach_run), max_steps=10, batch_size=2, max_length=96,
                    tracker="none", progress=False, out=str(out), resume=True)
    with pytest.raises(DataError, match="trainer_state.pt: refusing to load: this pickle names 'builtins.exec'"):
        fit(cfg)
    assert not marker.exists()
    assert not out.exists()


# --------------------------------------------------------------------------------------------- adapters, models

@pytest.fixture(scope="module")
def bin_adapter(tmp_path_factory, tiny_llama_path):
    """A plain PEFT adapter for tiny-llama saved the old way (adapter_model.bin, a pickle), and its safetensors
    twin."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama_path)),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(str(root / "bin"), safe_serialization=False)
    model.save_pretrained(str(root / "st"), safe_serialization=True)
    assert (root / "bin" / "adapter_model.bin").exists() and not (root / "bin" / "adapter_model.safetensors").exists()
    return root


def test_adapter_with_only_bin_is_refused(bin_adapter, tmp_path):
    from lora_spec.adapters.combine import combine
    from lora_spec.adapters.merge import merge
    from lora_spec.adapters.artifact import load_adapter
    from lora_spec.errors import DataError

    d = bin_adapter / "bin"
    for call in (lambda: load_adapter(d, base="tiny-llama"), lambda: merge(d, tmp_path / "m", base="original"),
                 lambda: combine([d, bin_adapter / "st"], tmp_path / "c", weights="0.5,0.5")):
        with pytest.raises(DataError, match="adapter_model.bin: pickle adapter weights") as e:
            call()
        assert "--allow-pickle" in str(e.value)
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


def test_adapter_bin_cli_refused_and_opt_in_loads(bin_adapter, tmp_path, tiny_llama_path, capsys):
    """Through the CLI: refused with one line naming the file. With the opt-in the same adapter loads the weights
    of its safetensors twin; a crafted .bin under the opt-in still cannot run code (peft reads it with torch's
    weights-only unpickler)."""
    from lora_spec.adapters.artifact import load_adapter
    from lora_spec.errors import ModelError
    from lora_spec.safeload import set_policy

    r = _cli(capsys, "generate", "--model", "tiny-llama", "--adapter", f"math={bin_adapter / 'bin'}", "--use", "math",
             "--prompt", "2 + 3 =", "--max-new-tokens", "4")
    line = _one_line_error(r)
    assert f"{bin_adapter / 'bin' / 'adapter_model.bin'}: pickle adapter weights" in line and "--allow-pickle" in line

    set_policy(allow_pickle=True)
    a = load_adapter(bin_adapter / "bin", base="tiny-llama").model
    b = load_adapter(bin_adapter / "st", base="tiny-llama").model
    wa = {k: v for k, v in a.named_parameters() if "lora_" in k}
    wb = dict(b.named_parameters())
    assert wa and all(torch.equal(v, wb[k]) for k, v in wa.items())
    assert any(v.abs().sum() > 0 for k, v in wa.items() if "lora_B" in k)  # really loaded (B starts at 0)

    evil = tmp_path / "evil"
    shutil.copytree(bin_adapter / "bin", evil)
    marker = tmp_path / "PWNED"
    _evil_torch_file(evil / "adapter_model.bin", marker)
    with pytest.raises(ModelError, match="cannot load the adapter"):
        load_adapter(evil, base="tiny-llama")
    assert not marker.exists()


@pytest.fixture()
def remote_code_model(tmp_path, tiny_llama_path):
    """tiny-llama whose config asks for remote code: importing its modeling file creates a marker."""
    d = tmp_path / "remote"
    shutil.copytree(tiny_llama_path, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "PWNED"
    (d / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return d, marker


def test_remote_code_model_is_refused_for_students_and_teachers(remote_code_model, tmp_path, capsys):
    from lora_spec.errors import ModelError
    from lora_spec.student import load_student

    d, marker = remote_code_model
    with pytest.raises(ModelError, match="asks for remote code") as e:
        load_student(str(d))
    assert "--trust-remote-code" in str(e.value)
    r = _cli(capsys, "teach", "--dataset", "arith", "--first", "1", "--samples", "1", "--teacher", "hf",
             "--model", str(d), "--out", str(tmp_path / "t"), "--no-progress")
    assert "config.json: asks for remote code (auto_map -> 'modeling_evil.EvilConfig')" in _one_line_error(r)
    assert not marker.exists()
    # a tokenizer that asks for remote code is refused the same way
    tok = json.loads((d / "tokenizer_config.json").read_text())
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("auto_map")
    (d / "config.json").write_text(json.dumps(cfg))
    tok["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(tok))
    with pytest.raises(ModelError, match="tokenizer_config.json: asks for remote code"):
        load_student(str(d))
    assert not marker.exists()


def test_trust_remote_code_flag_is_what_runs_it(remote_code_model, tmp_path, monkeypatch):
    """Non-vacuous: with the opt-in, transformers does import the model's own code."""
    import transformers.dynamic_module_utils as dmu

    from lora_spec.safeload import set_policy
    from lora_spec.student import load_student

    d, marker = remote_code_model
    monkeypatch.setattr(dmu, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # keep the copied code out of ~/.cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    set_policy(trust_remote_code=True)
    try:
        load_student(str(d))
    finally:
        for name in [m for m in sys.modules if m.startswith("transformers_modules")]:
            del sys.modules[name]
    assert marker.exists()


def test_pickle_only_model_dir_is_refused_unless_opted_in(tmp_path, tiny_llama_path):
    from safetensors.torch import load_file

    from lora_spec.errors import ModelError
    from lora_spec.safeload import set_policy
    from lora_spec.student import load_student

    d = tmp_path / "binmodel"
    shutil.copytree(tiny_llama_path, d)
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    torch.save(state, str(d / "pytorch_model.bin"))
    with pytest.raises(ModelError, match="pytorch_model.bin: pickle weights") as e:
        load_student(str(d))
    assert "--allow-pickle" in str(e.value)
    set_policy(allow_pickle=True)
    s = load_student(str(d))
    w = dict(s.model.named_parameters())["model.embed_tokens.weight"]
    assert torch.equal(w.detach(), state["model.embed_tokens.weight"])


# --------------------------------------------------------------------------------------------- secrets

KEY = "sk-h19-SECRET-0123456789abcdef"
KEY_ENV = "LORASP_H19_TEST_KEY"


class _FakeOpenAI:
    """A tiny OpenAI-compatible upstream: answers /completions with the right arith answer for the question in the
    prompt (so the samples are correct and a fit can train on them)."""

    def __init__(self, answers: dict[str, str]):
        fake = self
        self.answers = answers

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                prompt = body.get("prompt") or ""
                ans = next((a for q, a in fake.answers.items() if q in prompt), "0")
                out = json.dumps({"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"),
                                  "choices": [{"text": f" We compute it.\nThe answer is {ans}.", "index": 0,
                                               "logprobs": None, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fake_openai(data_dir):
    from lora_spec import registry

    problems = list(registry.create("datasets", "arith").load("train", limit=16))
    fake = _FakeOpenAI({p.question.strip(): str(p.answer) for p in problems})
    yield fake
    fake.stop()


def test_api_key_never_leaves_the_environment(fake_openai, tmp_path):
    """teach through the fault proxy with a key in its env var, over 500s, timeouts, a 401 and an interrupted
    run, then a fit (tensorboard tracker) that teaches in-process: the key's value is in no file under any run
    directory and in no output, although the proxy saw it on every request and echoed it in its error bodies."""
    env = dict(ENV, **{KEY_ENV: KEY})
    outputs: list[str] = []
    run = tmp_path / "teach"
    base = ["teach", "--dataset", "arith", "--teacher", "openai", "--model", "fake", "--api-key-env", KEY_ENV,
            "--samples", "1", "--concurrency", "1", "--out", str(run), "--no-progress"]

    def faults_1(n, tag, body):  # problem 0: one 500 then fine; 1: always times out; 2: always 500
        if tag.startswith("arith/train/1/"):
            return "timeout"
        if tag.startswith("arith/train/2/") or (tag.startswith("arith/train/0/") and n == 1):
            return "500"
        return None

    with fault_proxy(fake_openai.url, faults_1, hang=3, echo_auth=True) as proxy:
        r = run_cli(*base, "--first", "4", "--base-url", proxy.url, "--timeout", "1", "--max-retries", "1", env=env)
        log1 = list(proxy.log)
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 1, r.stderr  # incomplete: two problems failed
    m = json.loads((run / "manifest.json").read_text())
    assert m["counts"]["failed"] == 2 and m["counts"]["received"] == 2
    fails = " ".join(m["failure_examples"])
    assert "timeout" in fails and "HTTP 500" in fails and "Authorization: Bearer ***" in fails
    assert {e.fault for e in log1} >= {"500", "timeout", None}

    with fault_proxy(fake_openai.url, lambda n, tag, body: "401", echo_auth=True) as proxy:
        r = run_cli(*base, "--first", "6", "--base-url", proxy.url, env=env)
        log2 = list(proxy.log)
    outputs += [r.stdout, r.stderr]
    assert "HTTP 401" in _one_line_error(r) and "Authorization: Bearer ***" in r.stderr

    exe = Path(sys.executable).with_name("lorasp")
    hang = lambda n, tag, body: "timeout" if tag.startswith("arith/train/5/") else None  # noqa: E731
    with fault_proxy(fake_openai.url, hang, hang=60, echo_auth=True) as proxy:
        proc = subprocess.Popen([str(exe), *base, "--first", "6", "--base-url", proxy.url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **env))
        deadline = time.time() + 120
        while time.time() < deadline and not any(e.tag.startswith("arith/train/5/") for e in proxy.log):
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        o, e = proc.communicate(timeout=60)
        log3 = list(proxy.log)
    outputs += [o, e]
    assert proc.returncode == 130, e
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"

    fit_out = tmp_path / "fit"
    with fault_proxy(fake_openai.url, {1: "500"}, echo_auth=True) as proxy:
        r = run_cli("fit", "--dataset", "arith", "--first", "8", "--teacher", "openai", "--teacher-opt", "model=fake",
                    "--teacher-opt", f"base_url={proxy.url}", "--teacher-opt", f"api_key_env={KEY_ENV}",
                    "--student", "tiny-llama", "--max-steps", "2", "--batch-size", "2", "--max-length", "96",
                    "--save-every", "1", "--tracker", "tensorboard", "--no-progress", "--out", str(fit_out), env=env)
        log4 = list(proxy.log)
    outputs += [r.stdout, r.stderr]
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "fit.checkpoints" / "logs").rglob("events.out.tfevents.*"))  # the tracker wrote

    # non-vacuous: the key was sent on every request and echoed back by the faults
    for log in (log1, log2, log3, log4):
        assert log and all(e.auth == f"Bearer {KEY}" for e in log)
    # nothing anywhere: every file under every run directory (store, manifests, jsonl, checkpoints, tracker
    # event files, artifact) and every stdout/stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 15
    leaks = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert not [o for o in outputs if KEY in o]
