"""What lorasp agrees to load: files are data, never code.

Models, tokenizers and adapters are read from safetensors and JSON (plus the tokenizer's own vocabulary files);
training checkpoints from safetensors + JSON (``lora_spec.checkpoints.save_state``). Two things are refused unless
the user opts in, per process:

* **pickle weight files** (``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``, ...): unpickling can run
  arbitrary code. With ``--allow-pickle`` transformers/peft load them (through ``torch.load(weights_only=True)``,
  torch's restricted unpickler; it has had bypasses before, so the file must still come from someone you trust).
* **remote code** (a ``config.json`` or ``tokenizer_config.json`` with an ``auto_map``): transformers would import
  Python files shipped with the model. ``trust_remote_code`` is passed as ``False`` to every
  ``from_pretrained`` (students, the ``hf`` teacher, tokenizers) unless ``--trust-remote-code`` is given.

The opt-ins are command-line flags (``lorasp fit --allow-pickle ...``) or :func:`set_policy` in Python, never YAML
config keys: a config file someone hands you cannot switch them on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import DataError, ModelError

# file name endings of pickle-based weight files that transformers / peft would unpickle
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOW_PICKLE_HELP = ("Also load pickle weight files (pytorch_model.bin, adapter_model.bin) when a model or adapter "
                     "has no safetensors. RISK: unpickling a crafted file can run code on this machine; use only "
                     "for files from a source you trust.")
TRUST_REMOTE_CODE_HELP = ("Let transformers import and run the Python code a model directory ships (config "
                          "'auto_map'), for the student, the hf teacher and tokenizers. RISK: that code runs with "
                          "your permissions; use only for models from a source you trust.")

_policy = {"allow_pickle": False, "trust_remote_code": False}


def set_policy(*, allow_pickle: bool | None = None, trust_remote_code: bool | None = None) -> dict[str, bool]:
    """Opt in (or back out) for this process; returns the policy now in force."""
    if allow_pickle is not None:
        _policy["allow_pickle"] = bool(allow_pickle)
    if trust_remote_code is not None:
        _policy["trust_remote_code"] = bool(trust_remote_code)
    return dict(_policy)


def allow_pickle() -> bool:
    return _policy["allow_pickle"]


def trust_remote_code() -> bool:
    return _policy["trust_remote_code"]


def _pickles(directory: Path, prefix: str) -> list[Path]:
    return sorted(f for f in directory.iterdir()
                  if f.is_file() and f.name.startswith(prefix) and f.name.endswith(PICKLE_SUFFIXES))


def _auto_map(f: Path) -> Any:
    if not f.exists():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # transformers reports a broken config with its own error
    return data.get("auto_map") if isinstance(data, dict) else None


def model_load_kwargs(path: str | os.PathLike) -> dict[str, Any]:
    """Check a local model directory against the policy and return the ``from_pretrained`` keyword arguments that
    enforce it (``use_safetensors``, ``trust_remote_code``). Raises a one-line :class:`ModelError` for a directory
    whose weights are only pickles, or whose config or tokenizer config asks for remote code."""
    path = Path(path)
    if not trust_remote_code():
        for name in ("config.json", "tokenizer_config.json"):
            amap = _auto_map(path / name)
            if amap:
                first = next(iter(amap.values())) if isinstance(amap, dict) else amap
                raise ModelError(f"{path / name}: asks for remote code (auto_map -> {first!r}); lorasp does not run "
                                 "code shipped with a model unless you pass --trust-remote-code")
    if not allow_pickle() and path.is_dir() and not any(path.glob("*.safetensors")):
        pickles = _pickles(path, "pytorch_model")
        if pickles:
            raise ModelError(f"{pickles[0]}: pickle weights (no .safetensors in {path}); lorasp loads only "
                             "safetensors by default because unpickling can run code: convert the model to "
                             "safetensors, or pass --allow-pickle if you trust the file")
    return {"use_safetensors": None if allow_pickle() else True, "trust_remote_code": trust_remote_code()}


def check_adapter_dir(path: str | os.PathLike) -> None:
    """Refuse a PEFT adapter directory whose weights are only a pickle (``adapter_model.bin``) unless opted in."""
    path = Path(path)
    if allow_pickle() or (path / "adapter_model.safetensors").exists():
        return
    pickles = _pickles(path, "adapter_model")
    if pickles:
        raise DataError(f"{pickles[0]}: pickle adapter weights (no adapter_model.safetensors); lorasp loads only "
                        "safetensors by default because unpickling can run code: re-save the adapter with "
                        "safe_serialization=True, or pass --allow-pickle if you trust the file")


__all__ = ["set_policy", "allow_pickle", "trust_remote_code", "model_load_kwargs", "check_adapter_dir",
           "ALLOW_PICKLE_HELP", "TRUST_REMOTE_CODE_HELP", "PICKLE_SUFFIXES"]
