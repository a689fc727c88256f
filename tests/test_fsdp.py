"""``lorasp fit`` under ``accelerate launch`` with FSDP2 (full shard), 2 CPU processes (gloo), on the tiny-llama
fixture, launched with the shipped ``examples/accelerate/fsdp.yaml``: a fit killed (SIGKILL to the launcher and both
ranks) after a checkpoint and resumed with ``--resume`` ends with exactly the weights and losses of an uninterrupted
one (full fine-tuning: every weight and its AdamW state sharded); with LoRA, held-out evaluation and selection
under FSDP load the chosen checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true"}


@pytest.fixture(scope="module")
def teach_run(tmp_path_factory, data_dir):
    from lora_spec.teach import teach

    return teach(dataset="arith", split="train", first=48, teacher="gold", samples=1,
                 out=str(tmp_path_factory.mktemp("teach") / "arith"), progress=False)


def _cmd(teach_run, out, method, *extra):
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "examples" / "accelerate" / "fsdp.yaml"), "--num_processes", "2", "-m", "lora_spec.cli",
            "fit", "--student", "tiny-llama", "--data", str(teach_run), "--method", method, "--max-steps", "16",
            "--batch-size", "2", "--max-length", "128", "--save-every", "4", "--formats", "zero_shot_cot=1",
            "--lr", "1e-3", "--tracker", "none", "--no-progress", "--out", str(out), *extra]


def _weights(artifact: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(artifact.glob("*.safetensors"))
    assert files, list(artifact.iterdir())
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _run(cmd, cwd):
    p = subprocess.run(cmd, env=dict(os.environ, **ENV), capture_output=True, text=True, timeout=600, cwd=str(cwd))
    assert p.returncode == 0, p.stderr[-4000:]
    return p


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full"])  # LoRA under FSDP: the same code path, checked by the selection test
def test_fsdp_two_process_kill_and_resume_is_exact(teach_run, tmp_path, tiny_llama_path, method):
    ref = tmp_path / "ref"
    p = _run(_cmd(teach_run, ref, method), tmp_path)
    m = json.loads((ref / "lorasp.json").read_text())
    assert m["train"]["world_size"] == 2 and len(m["train"]["loss_history"]) == 16, p.stderr[-2000:]
    assert "FSDP2 full shard over 2 processes: 3 units" in p.stderr, p.stderr[-2000:]  # root + the 2 decoder blocks

    out = tmp_path / "run"
    ck = tmp_path / "run.checkpoints"
    proc = subprocess.Popen(_cmd(teach_run, out, method), env=dict(os.environ, **ENV), cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (ck / "step-000004").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the fit ended before it could be killed: " + proc.stderr.read()[-2000:]
    import psutil

    victims = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(victims) >= 3  # the launcher and both ranks (torchrun gives the ranks their own sessions)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait(30)
    time.sleep(0.5)
    assert not (out / "lorasp.json").exists()
    steps = sorted(int(d.name[5:]) for d in ck.glob("step-*"))
    assert 4 <= steps[-1] < 16, steps
    r = _run(_cmd(teach_run, out, method, "--resume"), tmp_path)
    assert f"resuming from {ck / f'step-{steps[-1]:06d}'} (step {steps[-1]} of 16)" in r.stderr, r.stderr[-2000:]
    m2 = json.loads((out / "lorasp.json").read_text())
    assert m2["train"]["resumed_from"] == steps[-1]
    assert m2["train"]["loss_history"] == m["train"]["loss_history"]
    a, b = _weights(ref), _weights(out)
    assert a.keys() == b.keys() and len(a) > 0
    import torch

    for k in a:
        assert torch.equal(a[k], b[k]), k
    if method == "lora":
        assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)  # it trained


@pytest.mark.slow
def test_fsdp_heldout_selection_loads_the_chosen_checkpoint(teach_run, tmp_path, tiny_llama_path):
    """Held-out evaluation under FSDP2 (the main process generates while every process keeps the blocks gathered;
    every process gets the same scores) and selection: the checkpoint chosen (step 4 of 8: the random model scores
    0% at every step, and ties go to the earliest) is loaded into the shards and is exactly what the artifact holds."""
    from safetensors.torch import load_file

    out = tmp_path / "sel"
    cmd = _cmd(teach_run, out, "lora", "--eval-every", "4", "--in-dist", "arith:dev;limit=4;max_new_tokens=8",
               "--ood", "none", "--generic", "none", "--select-by", "in_dist")
    cmd[cmd.index("--max-steps") + 1] = "8"
    p = _run(cmd, tmp_path)
    assert "held-out eval at step 4" in p.stderr and "held-out eval at step 8" in p.stderr, p.stderr[-2000:]
    m = json.loads((out / "lorasp.json").read_text())
    assert m["selection"]["chosen_step"] == 4, m["selection"]
    ck = load_file(str(tmp_path / "sel.checkpoints" / "step-000004" / "trainable.safetensors"))
    ad = _weights(out)
    assert len(ad) == len(ck) > 0
    for k, v in ck.items():
        import torch

        assert torch.equal(ad[k.replace(".default.", ".")], v), k
    last = load_file(str(tmp_path / "sel.checkpoints" / "step-000008" / "trainable.safetensors"))
    assert any(not torch.equal(last[k], v) for k, v in ck.items())  # step 8 differs: the choice mattered
