"""Which floating-point precision a run computes in: ``--precision auto|fp32|bf16|fp16``.

``auto`` picks what is fast *and* safe on the device at hand:

- a CUDA device: bf16 where it supports it (Ampere and later), else fp16;
- a CPU: bf16 where the CPU has native bf16 matrix units (Intel AMX ``amx_bf16`` or ``avx512_bf16``, read from the
  CPU flags), fp32 elsewhere. On a CPU with only AVX2, bf16 matrix products are emulated and are many times *slower*
  than fp32 (measured on a 2-core AMD EPYC with AVX2: fp32 ~63 GFLOP/s, bf16 ~1.2 GFLOP/s), so auto never picks it
  there; on a Xeon with AMX the same product runs ~9.5x faster in bf16 than in fp32.

What a precision means for each stage (one rule, applied by the loaders):

- **Training, LoRA/DoRA**: the frozen base weights are held in the precision's dtype once (no per-step casts); the
  adapter weights, their gradients and the optimizer state stay fp32 (master weights); the forward runs under
  autocast. NF4/int8 bases compute in the precision's dtype (bitsandbytes' compute dtype).
- **Training, full fine-tuning**: the weights stay fp32 (master weights, fp32 AdamW) and the forward runs under
  autocast in the reduced dtype: every weight changes every step, so there is no frozen copy to keep in bf16.
- **Evaluation and generation**: the whole model (adapter included) is held in the precision's dtype, so the KV
  buffers and every matrix product use it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .errors import ConfigError

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
PRECISION_HELP = ("Compute precision: auto (bf16 on a GPU that has it or a CPU with native bf16 matrix units, "
                  "AMX/AVX512-BF16; fp32 on other CPUs), fp32, bf16 or fp16.")
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs whose matrix units compute bf16


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32|bf16|fp16), what was asked for, and why (one line)."""

    name: str
    requested: str
    reason: str

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def mixed_precision(self) -> str:
        """accelerate's ``mixed_precision`` for training (autocast in the reduced dtype; fp32 is ``no``)."""
        return "no" if self.name == "fp32" else self.name

    def line(self) -> str:
        """``bf16 (auto: ...)`` or ``fp32 (asked for)``: for run headers and dry runs."""
        return f"{self.name} ({self.reason})"

    def record(self) -> dict:
        """What ``lorasp.json`` and result files keep: requested, used, why."""
        d = asdict(self)
        return {"used": d["name"], "requested": d["requested"], "reason": d["reason"]}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where that file is not there (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_units(flags: frozenset[str] | None = None) -> str | None:
    """The flag that says this CPU computes bf16 matrix products natively (``amx_bf16`` first), or None."""
    flags = _host_flags() if flags is None else flags
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


@functools.lru_cache(maxsize=1)
def _host_flags() -> frozenset[str]:
    return cpu_flags()


def _cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


def resolve_precision(requested: str = "auto", device: str | None = None, *,
                      flags: frozenset[str] | None = None) -> Precision:
    """Resolve ``requested`` (auto|fp32|bf16|fp16) on ``device`` (default: cuda when available, else cpu).

    ``flags`` replaces the host's CPU flags (tests). Raises :class:`ConfigError` for an unknown name and for fp16
    on a CPU (torch has no fast fp16 kernels there and training in it underflows without a loss scaler).
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {requested!r}")
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = str(device).startswith("cuda")
    if requested == "fp16" and not on_gpu:
        raise ConfigError("--precision fp16: fp16 is for CUDA devices; on a CPU use bf16 (with AMX/AVX512-BF16) "
                          "or fp32")
    if requested != "auto":
        note = ""
        if requested == "bf16" and not on_gpu and native_bf16_units(flags) is None:
            note = "; this CPU has no native bf16 matrix units (no AMX/AVX512-BF16): bf16 is slower than fp32 here"
        return Precision(requested, requested, "asked for" + note)
    if on_gpu:
        if _cuda_bf16():
            return Precision("bf16", "auto", "auto: this CUDA device supports bf16")
        return Precision("fp16", "auto", "auto: this CUDA device has no bf16; fp16 with loss scaling")
    unit = native_bf16_units(flags)
    if unit:
        return Precision("bf16", "auto", f"auto: this CPU has native bf16 matrix units ({unit})")
    return Precision("fp32", "auto", "auto: this CPU has no native bf16 matrix units (no AMX/AVX512-BF16), "
                                     "where bf16 is slower than fp32")
