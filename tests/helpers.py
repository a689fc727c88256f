"""Helpers shared by the test modules: the CLI in a subprocess (:func:`run_cli`) and in-process (:func:`run_in_process`,
:func:`main_cli`),
seeded real adapters (:func:`make_adapter`), and the prompt training builds for a question
(:func:`training_prompt`). The fixtures are in ``tests/conftest.py``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, cwd: str | os.PathLike | None = None, timeout: int = 600):
    """Run the real ``lorasp`` console script in a subprocess; returns CompletedProcess (text)."""
    import subprocess
    import sys

    e = dict(os.environ)
    if env:
        e.update(env)
    exe = Path(sys.executable).with_name("lorasp")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lora_spec.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout)


def run_in_process(*args: str, env: dict | None = None, cwd: str | os.PathLike | None = None):
    """What :func:`run_cli` runs, in this process: the CLI entry point ``lora_spec.cli.main`` with ``env`` added to
    the environment and ``cwd`` as the working directory (both restored after), its stdout and stderr captured.
    Returns a CompletedProcess like :func:`run_cli`'s.

    It saves the ~8 s a new interpreter spends importing torch, transformers and peft, so the tests use it for
    the model commands whose subject is not the process itself; signals, kills, exit by a fatal signal and what a
    fresh interpreter imports stay with :func:`run_cli` and ``subprocess``."""
    import contextlib
    import io
    import subprocess

    from lora_spec.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(["lorasp", *args], code, out.getvalue(), err.getvalue())


def main_cli(capsys, *args: str):
    """The real CLI entry point (``lora_spec.cli.main``) in-process, for error paths that load no model:
    returns (exit code, stdout, stderr)."""
    from lora_spec.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def make_adapter(base: str | Path, out: Path, *, seed: int, r: int = 4, alpha: int = 8, quant: str = "none",
                 targets=("q_proj", "v_proj"), std: float = 0.05, dora: bool = False, method: str = "lora",
                 extra: dict | None = None, poison: bool = False) -> Path:
    """A real PEFT adapter with seeded non-zero A and B, written as a lorasp artifact by ``save_adapter``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lora_spec.adapters.artifact import base_info, save_adapter
    from lora_spec.student import load_student

    st = load_student(str(base), quant)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, use_dora=dora,
                     task_type="SEQ_2_SEQ_LM" if st.kind == "seq2seq" else "CAUSAL_LM")
    pm = get_peft_model(st.model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)
        if poison:
            next(p for n, p in pm.named_parameters() if "lora_B" in n)[0, 0] = float("nan")
    manifest = {"base": base_info(st), "quant": quant, "method": method,
                "peft": {"r": r, "alpha": alpha, "dropout": 0.0, "targets": list(targets)}}
    manifest.update(extra or {})
    save_adapter(pm, out, manifest)
    return out


QUESTION = ("Tom has 12 marbles. He buys 3 bags with 5 marbles each and then gives away 7. How many marbles "
            "does he have?")


def training_prompt(question: str, fmt: str, tokenizer, **kw) -> str:
    """The prompt that training (formats.build_examples) builds for ``question`` in format ``fmt``."""
    from lora_spec.formats import TrainingItem, build_examples
    from lora_spec.records import Problem

    item = TrainingItem(Problem("arith/q", question, "20", meta={"dataset": "arith"}), "3 * 5 = 15.\nThe answer is 20.")
    weights = {f: 1.0 if f == fmt else 0.0 for f in ("in_context_cot", "in_context_answer", "zero_shot_cot",
                                                     "zero_shot_answer")}
    (ex,) = build_examples([item], weights, tokenizer, **kw)
    assert ex.format == fmt
    return ex.prompt



def tree_hashes(root: Path) -> dict[str, str]:
    """Every path under ``root`` (directories too, so a new empty directory shows) -> content hash; symlinks by their
    target. Two calls compare a workspace before and after a command, byte for byte."""
    out = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        out[str(d.relative_to(root)) + "/"] = "dir"
        for f in filenames:
            p = d / f
            out[str(p.relative_to(root))] = ("link:" + os.readlink(p)) if p.is_symlink() else \
                hashlib.sha256(p.read_bytes()).hexdigest()
    return out
