"""Shared fixtures. Real data comes from $LORASP_DATA_DIR (default: ../shared/data beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_default_data = ROOT.parent / "shared" / "data"
if not os.environ.get("LORASP_DATA_DIR") and _default_data.exists():
    os.environ["LORASP_DATA_DIR"] = str(_default_data)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = os.environ.get("LORASP_DATA_DIR")
    if not d or not Path(d).exists():
        pytest.fail("the real data is needed: set LORASP_DATA_DIR to a directory in the layout of shared/data")
    return Path(d)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from lora_spec.student import preset_path

    return preset_path("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_llama_path() -> Path:
    from lora_spec.student import preset_path

    return preset_path("tiny-llama")


@pytest.fixture(scope="session")
def tiny_t5_path() -> Path:
    from lora_spec.student import preset_path

    return preset_path("tiny-t5")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, fp32, loaded once per session. Do not train it in place."""
    from lora_spec.student import load_student

    return load_student("smollm2-135m")


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
