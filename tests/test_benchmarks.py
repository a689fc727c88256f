"""The prepared GPU check and the precision-parity experiment keep working on CPU (tiny model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1"}


def _run(args, tmp_path, timeout=600):
    import os

    return subprocess.run([sys.executable, *args], cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_runs_its_stages_on_cpu_with_the_tiny_model(tmp_path):
    p = _run([str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--prompts", "8", "--out", str(tmp_path / "o")],
             tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT name=gpu_check ratio="), last
    fig = dict(kv.split("=", 1) for kv in last.split()[1:])
    assert float(fig["lora_tokens_per_s"]) > 0 and float(fig["qlora_tokens_per_s"]) > 0
    assert int(fig["eval_prompts"]) == 8 and float(fig["eval_tokens_per_s"]) > 0
    assert float(fig["merge_max_logit_diff"]) < 1e-3  # the merged model computes what base + adapter computed
    m = json.loads((tmp_path / "o" / "qlora" / "lorasp.json").read_text())
    assert m["quant"] == "nf4" and m["precision"]["requested"] == "auto"


@pytest.mark.slow
def test_precision_parity_pairs_fp32_and_bf16_on_the_same_problems(tmp_path):
    fit_opt = ("--student tiny-llama --max-steps 2 --first 16 --batch-size 4 --before-after 0 --in-dist none "
               "--ood none --generic none --tracker none")
    p = _run([str(ROOT / "experiments" / "precision_parity.py"), "--force", "--runs", str(tmp_path / "runs"),
              "--limit", "6", "--result", str(tmp_path / "parity.json"), "--fit-opt", fit_opt,
              "--eval-opt", "--max-new-tokens 8"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "parity.json").read_text())
    assert {k: v["used"] for k, v in doc["precision"].items()} == {"fp32": "fp32", "bf16": "bf16"}
    assert all(len(c) == 2 for c in doc["loss_history"].values())
    task = next(iter(doc["compare"]["tasks"].values()))
    assert task["n"] == 6 and 0.0 <= task["p"] <= 1.0 and "within_noise" in task
    # a rerun finds every step done: nothing is trained or evaluated again
    again = _run([str(ROOT / "experiments" / "precision_parity.py"), "--force", "--runs", str(tmp_path / "runs"),
                  "--limit", "6", "--result", str(tmp_path / "parity.json"), "--fit-opt", fit_opt,
                  "--eval-opt", "--max-new-tokens 8"], tmp_path)
    assert again.returncode == 0 and "$ " + str(Path(sys.executable).with_name("lorasp")) + " fit" not in again.stdout


def test_precision_parity_refuses_without_native_bf16(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "experiments"))
    import precision_parity

    import lora_spec.precision as P

    monkeypatch.setattr(P, "native_bf16_units", lambda flags=None: None)
    monkeypatch.setattr(P, "_cuda_bf16", lambda: False)
    monkeypatch.setattr(P, "resolve_precision", lambda *a, **k: P.Precision("fp32", "auto", "test"))
    assert precision_parity.main(["--runs", "unused"]) == 2
    assert "no native bf16 matrix units" in capsys.readouterr().err
