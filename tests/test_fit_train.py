"""The training loop: label masking, the fast output-head path, kill -9 + --resume reproduces the uninterrupted
loss trajectory, the NaN guard keeps the last good checkpoint, 2-process CPU DDP gives identical adapters, and
bad input is one line through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli
from tests.helpers import run_in_process

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teach_run(tmp_path_factory, data_dir):
    from lora_spec.teach import teach

    return teach(dataset="arith", split="train", first=96, teacher="gold", samples=1,
                 out=str(tmp_path_factory.mktemp("teach") / "arith"), progress=False)


def _env(**kw):
    e = {"OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    e.update(kw)
    return e


# --------------------------------------------------------------------------------------------- units

def test_encode_masks_prompt_and_ends_with_eos(tiny_llama_path, tiny_t5_path):
    from transformers import AutoTokenizer

    from lora_spec.records import Example
    from lora_spec.trainer import IGNORE, collate, encode_examples

    ex = [Example("zero_shot_cot", "Question: how many?\nLet's think step by step\n", "2 + 3 = 5.\nThe answer is 5."),
          Example("zero_shot_answer", "Question: and now?\n", "The answer is 7.")]
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    enc, trunc = encode_examples(ex, tok, "causal", 512)
    assert trunc == 0
    for e, x in zip(enc, ex):
        p = tok(x.prompt)["input_ids"]
        assert e.input_ids[:len(p)] == p and all(v == IGNORE for v in e.labels[:len(p)])
        assert e.labels[len(p):] == e.input_ids[len(p):] and e.input_ids[-1] == tok.eos_token_id
        assert tok.decode(e.input_ids[len(p):-1]) == x.target
    # truncation keeps the whole target and the end of the prompt
    enc2, trunc2 = encode_examples(ex, tok, "causal", 12)
    assert trunc2 == 2 and all(len(e.input_ids) <= 12 for e in enc2)
    assert [e.truncated for e in enc] == [False, False] and [e.truncated for e in enc2] == [True, True]
    from lora_spec.trainer import truncated_summary

    line = truncated_summary(ex * 2, enc + enc2, 12)  # the one-line warning lorasp fit prints
    assert line.startswith("2 of 4 training rows (50.0%: zero_shot_cot 1, zero_shot_answer 1) are longer than "
                           "--max-length 12") and "\n" not in line
    b = collate(enc, tok.pad_token_id, "causal")
    assert b["input_ids"].shape == b["labels"].shape and b["n_tokens"] == sum(len(e.input_ids) for e in enc)
    t5 = AutoTokenizer.from_pretrained(str(tiny_t5_path))
    enc3, _ = encode_examples(ex, t5, "seq2seq", 512)
    assert enc3[1].labels == t5("The answer is 7.")["input_ids"] and enc3[1].labels[-1] == t5.eos_token_id


def test_fast_head_equals_full_logits_nll(smollm2):
    from lora_spec.losses import token_nll
    from lora_spec.records import Example
    from lora_spec.trainer import batch_loss, collate, encode_examples

    tok = smollm2.tokenizer
    ex = [Example("zero_shot_cot", "Question: Tom has 3 apples and buys 4.\n", "3 + 4 = 7.\nThe answer is 7."),
          Example("zero_shot_answer", "Question: 2 times 6?\n", "The answer is 12.")]
    enc, _ = encode_examples(ex, tok, "causal", 256)
    b = collate(enc, tok.pad_token_id, "causal")
    with torch.no_grad():
        fast, n = batch_loss(smollm2.model, b, kind="causal")
        logits = smollm2.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ref, n2 = token_nll(logits, b["labels"], causal=True)
    assert n == n2 == sum(e.n_target for e in enc)
    assert torch.allclose(fast, ref, rtol=1e-4), (fast, ref)


def test_epoch_batches_group_by_length_and_are_seeded():
    from lora_spec.trainer import epoch_batches, lr_factor

    lengths = [(i * 37) % 101 + 5 for i in range(200)]
    a = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a == epoch_batches(lengths, 8, seed=1, epoch=0) and a != epoch_batches(lengths, 8, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(200))
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in a)
    rnd = epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=False)
    pad_rnd = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in rnd)
    assert pad < pad_rnd / 3
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0) and lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 100, 0, "constant") == 1.0


# --------------------------------------------------------------------------------------------- resume

def _fit_args(teach_run, out, steps=40):
    return ["fit", "--student", "tiny-llama", "--data", str(teach_run), "--max-steps", str(steps),
            "--batch-size", "2", "--max-length", "160", "--save-every", "5", "--dropout", "0.1",
            "--formats", "zero_shot_cot=3,in_context_cot=1,zero_shot_answer=1", "--tracker", "none",
            "--no-progress", "--out", str(out)]


@pytest.mark.slow
def test_kill9_resume_matches_uninterrupted(teach_run, tmp_path, tiny_llama_path):
    ref = run_in_process(*_fit_args(teach_run, tmp_path / "ref"), env=_env())
    assert ref.returncode == 0, ref.stderr
    ref_m = json.loads((tmp_path / "ref" / "lorasp.json").read_text())

    out = tmp_path / "run"
    ck = tmp_path / "run.checkpoints"
    exe = Path(sys.executable).with_name("lorasp")
    env = dict(os.environ, **_env())
    proc = subprocess.Popen([str(exe), *_fit_args(teach_run, out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (ck / "step-000010").exists():
        assert proc.poll() is None, f"fit ended before it could be killed: {proc.stderr.read()}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # no half-written artifact under the final name
    steps = sorted(int(d.name[5:]) for d in ck.glob("step-*"))
    assert 10 <= steps[-1] < 40
    # a fresh run without --resume refuses to clobber the unfinished one (after taking over the killed run's lock)
    again = run_in_process(*_fit_args(teach_run, out), env=_env())
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 2 and len(lines) == 2 and "pass --resume" in lines[1], again.stderr
    assert lines[0].startswith("warning: ") and f"taking over the stale lock of pid {proc.pid}" in lines[0]
    res = run_in_process(*_fit_args(teach_run, out), "--resume", env=_env())
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr
    m = json.loads((out / "lorasp.json").read_text())
    assert m["train"]["resumed_from"] == steps[-1]
    a, b = ref_m["train"]["loss_history"], m["train"]["loss_history"]
    assert len(a) == len(b) == 40
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "ref" / "adapter_model.safetensors"))
    wb = load_file(str(out / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # resuming with different settings is refused with a clear message
    bad = run_in_process(*_fit_args(teach_run, tmp_path / "ref"), "--resume", "--batch-size", "4", "--overwrite",
                  env=_env())
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --resume: ") and "batch_size=2" in bad.stderr


def test_sigterm_saves_the_current_step_and_resume_finishes(teach_run, tmp_path, tiny_llama_path):
    """SIGTERM (kill, a scheduler's preemption; also what reaches a background job whose SIGINT is ignored) stops
    the fit after the step in progress and saves that step, so nothing trained since the last checkpoint is lost."""
    out, ck = tmp_path / "run", tmp_path / "run.checkpoints"
    args = _fit_args(teach_run, out, steps=400)
    args[args.index("--save-every") + 1] = "1000"  # no periodic checkpoint: only the SIGTERM one can exist
    exe = Path(sys.executable).with_name("lorasp")
    proc = subprocess.Popen([str(exe), *args, "--tracker", "tensorboard"], env=dict(os.environ, **_env()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(ck.glob("logs/**/events*")):  # the tracker's first write: training has started
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    steps = [int(d.name[5:]) for d in ck.glob("step-*")]
    assert len(steps) == 1 and 0 < steps[0] < 400, (steps, err)
    assert f"interrupted: saved step {steps[0]}" in err and "Traceback" not in err
    res = run_in_process(*args, "--resume", "--max-steps", str(steps[0] + 2), env=_env())
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "lorasp.json").read_text())["train"]["resumed_from"] == steps[0]


def test_resumed_fit_keeps_the_heldout_predictions_of_before_the_cut(teach_run, tmp_path, tiny_llama_path):
    """The held-out predictions are journaled beside the checkpoints as each evaluation ends: a fit cut after its
    step-2 evaluation and resumed writes the predictions of steps 0, 2 and 4 (each once), not only the steps after
    the resume; a stale row of an evaluation whose checkpoint was never saved is dropped, and so is a torn one."""
    out, ck = tmp_path / "run", tmp_path / "run.checkpoints"
    args = _fit_args(teach_run, out, steps=4)
    args[args.index("--save-every") + 1] = "2"
    args += ["--eval-every", "2", "--in-dist", "auto;limit=3;mode=zs_answer;max_new_tokens=3",
             "--ood", "none", "--generic", "none", "--select-by", "in_dist"]
    first = run_in_process(*args, env=_env())
    assert first.returncode == 0, first.stderr
    journal = ck / "heldout_predictions.jsonl"
    rows = [json.loads(x) for x in journal.read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [0, 2, 4] and len(rows) == 9
    import shutil

    # cut after the last checkpoint, before the artifact: the resume trains nothing and still reports a speed
    shutil.rmtree(out)
    again = run_in_process(*args, "--resume", env=_env())
    assert again.returncode == 0, again.stderr
    train = json.loads((out / "lorasp.json").read_text())["train"]
    assert train["resumed_from"] == 4 and train["tokens_per_second"] > 0
    # cut "after the step-4 evaluation, before its checkpoint": the artifact and step 4 are gone, the rows stay
    shutil.rmtree(out)
    shutil.rmtree(ck / "step-000004")
    with journal.open("a") as fh:  # a second step-4 row, as if that evaluation ran twice before a cut ...
        fh.write(json.dumps({**rows[-1], "output": "stale"}) + "\n")
        fh.write('{"step": 4, "outp')  # ... and a row torn by a kill mid-write (the eval journal's rule: dropped)
    res = run_in_process(*args, "--resume", env=_env())
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "lorasp.json").read_text())["train"]["resumed_from"] == 2
    preds = [json.loads(x) for x in (out / "heldout_predictions.jsonl").read_text().splitlines()]
    assert [p["step"] for p in preds] == [0] * 3 + [2] * 3 + [4] * 3
    assert all(p["output"] != "stale" for p in preds)
    assert [p["output"] for p in preds[:6]] == [r["output"] for r in rows[:6]]
    # resuming with other held-out sets (here 2 dev problems, not 3) would mix them in one curve: refused, one line
    shutil.rmtree(out)
    shutil.rmtree(ck / "step-000004")
    other = [a.replace("limit=3;", "limit=2;") for a in args]
    bad = run_in_process(*other, "--resume", env=_env())
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --resume: the held-out sets differ") and "in_dist/arith: 3 problems" in last, last


# --------------------------------------------------------------------------------------------- NaN guard

def test_nan_guard_keeps_last_good_checkpoint(teach_run, tmp_path, monkeypatch, capsys, tiny_llama_path):
    from lora_spec import trainer
    from lora_spec.cli import main

    real = trainer.batch_loss
    calls = {"n": 0}

    def poisoned(model, batch, **kw):
        loss, n = real(model, batch, **kw)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] >= 7 else loss), n

    monkeypatch.setattr(trainer, "batch_loss", poisoned)
    out = tmp_path / "nan"
    args = _fit_args(teach_run, out, steps=12)
    args[args.index("--save-every") + 1] = "3"
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: training stopped at step 7: the loss became nan")
    assert "last good checkpoint is step 6" in err and "--resume" in err
    assert not out.exists()
    ck = tmp_path / "nan.checkpoints"
    assert sorted(d.name for d in ck.glob("step-*")) == ["step-000003", "step-000006"]
    from safetensors.torch import load_file

    w = load_file(str(ck / "step-000006" / "trainable.safetensors"))
    assert w and all(torch.isfinite(t).all() for t in w.values())
    # with a healthy loss the run continues from the good checkpoint
    monkeypatch.setattr(trainer, "batch_loss", real)
    with pytest.raises(SystemExit) as e:
        main(args + ["--resume"])
    assert e.value.code == 0
    m = json.loads((out / "lorasp.json").read_text())
    assert m["train"]["resumed_from"] == 6 and len(m["train"]["loss_history"]) == 12


# --------------------------------------------------------------------------------------------- DDP

@pytest.mark.slow
def test_two_process_cpu_ddp_adapters_identical(teach_run, tmp_path, tiny_llama_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, **_env(ACCELERATE_USE_CPU="true", LORASP_DDP_OUT=str(tmp_path)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "tests" / "ddp_fit.py"), str(teach_run), str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["digest"] == r1["digest"] and r0["n_params"] > 0
    assert r0["changed"] and r1["changed"]  # the adapters did train
    m = json.loads((out / "lorasp.json").read_text())
    assert m["train"]["world_size"] == 2 and len(m["train"]["loss_history"]) == 4


# --------------------------------------------------------------------------------------------- CLI errors

@pytest.mark.parametrize("args,code,msg", [
    (["--method", "full", "--quant", "nf4"], 2, "--method full trains every weight and cannot train a nf4"),
    (["--formats", "zero_shot_cott=1"], 2, "--formats: unknown format 'zero_shot_cott'; did you mean 'zero_shot_cot'"),
    (["--rank", "0"], 2, "--rank"),
    (["--data", "/nonexistent/run"], 1, "/nonexistent/run: teach run directory not found"),
    (["--loss", "mix:2"], 2, "--loss: mix weight must be in [0, 1]"),
    (["--student", "no-such-model"], 1, "model 'no-such-model'"),
    (["--targets", "nope_proj"], 2, "--targets: no linear module named 'nope_proj'"),
])
def test_cli_errors_are_one_line(args, code, msg, tmp_path, teach_run, capsys, tiny_llama_path):
    from lora_spec.cli import main

    base = ["fit", "--student", "tiny-llama", "--data", str(teach_run), "--max-steps", "1", "--out",
            str(tmp_path / "o"), "--no-progress", "--tracker", "none"]
    with pytest.raises(SystemExit) as e:
        main(base + args)
    err = capsys.readouterr().err
    assert e.value.code == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and msg in last, err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_method_full_refuses_quant_through_subprocess(tmp_path):
    r = run_cli("fit", "--method", "full", "--quant", "int8", "--out", str(tmp_path / "o"), env=_env())
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: --method full trains every weight and cannot train a int8-quantized base; "
                                "use --quant none, or --method lora/dora for QLoRA")
