"""Shared fixtures. Real data comes from $LORASP_DATA_DIR (default: ../shared/data beside the repo). Shared helpers
are in ``tests/helpers.py`` (``run_cli`` and ``ROOT`` stay importable from here).

Under pytest-xdist (``make test`` runs ``-n 2``) each worker computes with its share of the cores
(``OMP_NUM_THREADS``, which the ``lorasp`` subprocesses of the tests inherit), so that two workers do not each
start one thread per core and slow each other down."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli  # noqa: F401  (imported from here by test modules)

_default_data = ROOT.parent / "shared" / "data"
if not os.environ.get("LORASP_DATA_DIR") and _default_data.exists():
    os.environ["LORASP_DATA_DIR"] = str(_default_data)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def pytest_configure(config):
    import sys

    if _WORKERS > 1 and "torch" in sys.modules:  # imported before this file set OMP_NUM_THREADS
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
