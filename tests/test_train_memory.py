"""Training memory: passes of a token budget (same update as the whole batch), the allocator setting, --threads."""

from __future__ import annotations

import pytest
import torch


def _rows(lengths):
    from lora_spec.trainer import Encoded

    return [Encoded(list(range(n)), [-100] * (n // 2) + list(range(n - n // 2)), n - n // 2) for n in lengths]


def test_split_by_tokens_respects_the_budget_and_keeps_every_row():
    from lora_spec.trainer import split_by_tokens

    rows = _rows([30, 70, 12, 55, 300, 8, 41, 64])
    parts = split_by_tokens(rows, 128)
    assert sorted(id(r) for p in parts for r in p) == sorted(id(r) for r in rows)
    for p in parts:
        longest = max(len(r.input_ids) for r in p)
        assert len(p) * longest <= 128 or len(p) == 1
    assert [len(p) for p in parts if len(p[0].input_ids) == 300] == [1]  # longer than the budget: alone
    assert len(parts) > 1
    assert split_by_tokens(rows, 0) == [rows]
    assert split_by_tokens(rows, 10_000) == [sorted(rows, key=lambda r: -len(r.input_ids))]
    seq2seq = split_by_tokens(rows, 128, "seq2seq")  # encoder + decoder tokens count
    assert all(len(p) * max(r.length for r in p) <= 128 or len(p) == 1 for p in seq2seq)
    assert len(seq2seq) > len(parts)


def _one_step(tmp_path, budget, monkeypatch, kind_preset):
    from lora_spec import trainer
    from lora_spec.adapters.peft_setup import MethodSpec, apply_method
    from lora_spec.records import Example
    from lora_spec.student import load_student

    torch.manual_seed(0)
    st = load_student(kind_preset)
    model = apply_method(st, MethodSpec("lora", rank=4, alpha=8, dropout=0.0))
    for m in model.modules():  # tiny-t5 has dropout: masks drawn per pass differ from one whole-batch mask
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout", None), float):  # T5 attention: functional dropout of this rate
            m.dropout = 0.0
    ex = [Example("zero_shot_cot", "Q: " + "what is 12 plus 30? " * (1 + i % 5), f"12 + 30 = 42. The answer is {i}.",
                  str(i)) for i in range(8)]
    grads: list[dict] = []
    passes = []
    monkeypatch.undo()  # the real step and loss, not the previous call's wrappers
    real_step, real_loss = torch.optim.AdamW.step, trainer.batch_loss

    def recording_step(self, *a, **kw):
        grads.append({id(p): p.grad.detach().clone() for g in self.param_groups for p in g["params"]
                      if p.grad is not None})
        return real_step(self, *a, **kw)

    def counting_loss(model, batch, **kw):
        passes.append(int(batch["input_ids"].numel()))
        return real_loss(model, batch, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    monkeypatch.setattr(trainer, "batch_loss", counting_loss)
    res = trainer.train(model, st.tokenizer, ex, kind=st.kind, ckpt_dir=tmp_path / f"b{budget}",
                        args=trainer.TrainArgs(max_steps=1, batch_size=8, lr=1e-3, warmup=0, progress=False,
                                               tracker="none", micro_batch_tokens=budget))
    names = {id(p): n for n, p in model.named_parameters()}
    return res.history[0], {names[k]: v for k, v in grads[0].items()}, passes


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-t5"])
def test_token_budget_passes_give_the_whole_batch_gradient(tmp_path, monkeypatch, preset):
    whole, g_whole, p_whole = _one_step(tmp_path, 0, monkeypatch, preset)
    split, g_split, p_split = _one_step(tmp_path, 64, monkeypatch, preset)
    assert len(p_whole) == 1 and len(p_split) >= 3  # the budget really cut the batch into passes
    assert max(p_split) <= max(64, max(p_split[:1]))
    assert whole["tokens"] == split["tokens"]
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert split["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
    assert g_whole.keys() == g_split.keys() and g_whole
    for n, g in g_whole.items():
        torch.testing.assert_close(g_split[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_negative_budget_is_a_config_error(tmp_path):
    from lora_spec.errors import ConfigError
    from lora_spec.trainer import TrainArgs, train

    with pytest.raises(ConfigError, match="--micro-batch-tokens"):
        train(None, None, [], kind="causal", ckpt_dir=tmp_path, args=TrainArgs(micro_batch_tokens=-1))


def test_allocator_choice(monkeypatch, tmp_path):
    """jemalloc where installed (the conda/venv prefix or a system lib dir), nothing with LORASP_MALLOC=glibc, a
    given library path as is; LD_PRELOAD keeps what the user had."""
    import lora_spec.memory as mem

    lib = tmp_path / "lib" / "libjemalloc.so.2"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    monkeypatch.setattr(mem, "_LIB_DIRS", ())
    monkeypatch.setattr(mem.sys, "platform", "linux")
    env = {"CONDA_PREFIX": str(tmp_path)}
    assert mem.find_jemalloc(env) == str(lib) and mem.preload_library(env) == str(lib)
    assert mem.preload_library({**env, "LORASP_MALLOC": "glibc"}) is None
    other = tmp_path / "libtcmalloc.so.4"
    other.write_bytes(b"")
    assert mem.preload_library({"LORASP_MALLOC": str(other)}) == str(other)
    assert mem.preload_library({"LORASP_MALLOC": str(tmp_path / "missing.so")}) is None
    assert mem.with_allocator({**env, "LD_PRELOAD": "/x/libfoo.so"})["LD_PRELOAD"] == f"{lib}:/x/libfoo.so"
    once = mem.with_allocator(env)
    assert mem.with_allocator(once)["LD_PRELOAD"] == str(lib)
    monkeypatch.setattr(mem.sys, "platform", "darwin")
    assert mem.preload_library(env) is None  # not glibc's malloc there: nothing to fix


def test_entry_point_reexecs_model_commands_once(monkeypatch, tmp_path):
    import lora_spec.memory as mem

    calls = []
    monkeypatch.setattr(mem.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    monkeypatch.setattr(mem, "preload_library", lambda env=None: str(tmp_path / "libjemalloc.so.2"))
    monkeypatch.setattr(mem, "loaded_allocator", lambda: "glibc")
    monkeypatch.delenv(mem._GUARD, raising=False)
    for args in (["adapters", "list"], ["fit", "--help"], ["--version"]):
        mem.reexec_with_allocator(args)
    assert calls == []
    mem.reexec_with_allocator(["fit", "--max-steps", "3"])
    (exe, argv, env), = calls
    assert env["LD_PRELOAD"].startswith(str(tmp_path / "libjemalloc.so.2")) and env[mem._GUARD] == "1"
    monkeypatch.setenv(mem._GUARD, "1")  # the re-executed process never re-executes again
    mem.reexec_with_allocator(["fit"])
    assert len(calls) == 1


def test_a_real_lorasp_process_runs_on_jemalloc_where_installed(tmp_path):
    """The installed entry point, for real: a model command's dry run says which allocator its process runs on."""
    import os

    from lora_spec.memory import find_jemalloc
    from tests.conftest import run_cli

    r = run_cli("fit", "--dry-run", "--student", "tiny-llama", "--dataset", "arith", "--first", "8", "--out",
                str(tmp_path / "a"), env={k: v for k, v in os.environ.items() if k != "LORASP_MALLOC"})
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("memory:"))
    if find_jemalloc():
        assert "allocator jemalloc (preloaded by the lorasp entry point)" in line, line
    else:
        assert "allocator glibc malloc (no jemalloc installed" in line, line
    r = run_cli("fit", "--dry-run", "--student", "tiny-llama", "--dataset", "arith", "--first", "8", "--out",
                str(tmp_path / "a"), env={**os.environ, "LORASP_MALLOC": "glibc"})
    assert "memory:      allocator glibc malloc (LORASP_MALLOC=glibc)" in r.stdout, r.stdout + r.stderr
