"""--precision: detection of native bf16 units, what each stage holds in which dtype, and what is recorded."""

from __future__ import annotations

import json

import pytest
import torch

from lora_spec.errors import ConfigError
from lora_spec.precision import cpu_flags, native_bf16_units, resolve_precision
from tests.helpers import main_cli

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n")
    assert cpu_flags(info) == {"fpu", "sse", "avx2", "amx_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "missing") == frozenset()  # not Linux: no flags, so auto is fp32


@pytest.mark.parametrize("flags, unit", [(AMX, "amx_bf16"), (AVX512_BF16, "avx512_bf16"), (AVX2, None),
                                         (frozenset(), None)])
def test_auto_picks_bf16_only_with_native_bf16_units(flags, unit):
    assert native_bf16_units(flags) == unit
    p = resolve_precision("auto", "cpu", flags=flags)
    assert p.name == ("bf16" if unit else "fp32") and p.requested == "auto"
    assert p.mixed_precision == ("bf16" if unit else "no")
    assert (unit or "no native bf16 matrix units") in p.line()
    assert p.record() == {"used": p.name, "requested": "auto", "reason": p.reason}


def test_explicit_choices_and_errors(monkeypatch):
    assert resolve_precision("fp32", "cpu", flags=AMX).name == "fp32"
    slow = resolve_precision("bf16", "cpu", flags=AVX2)
    assert slow.name == "bf16" and "slower than fp32" in slow.reason  # allowed, and said
    assert "slower" not in resolve_precision("bf16", "cpu", flags=AMX).reason
    with pytest.raises(ConfigError, match="fp16 is for CUDA devices"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="expected one of auto, fp32, bf16, fp16"):
        resolve_precision("int4", "cpu")
    import lora_spec.precision as P

    monkeypatch.setattr(P, "_cuda_bf16", lambda: True)
    assert resolve_precision("auto", "cuda:0").name == "bf16"
    monkeypatch.setattr(P, "_cuda_bf16", lambda: False)
    assert resolve_precision("auto", "cuda").name == "fp16"
    assert resolve_precision("fp16", "cuda").name == "fp16"


def test_cli_refuses_bad_precision_and_the_old_key(tmp_path, capsys):
    code, out, err = main_cli(capsys, "fit", "--precision", "fp64", "--dry-run")
    assert code == 2 and "fp64" in err and len(err.strip().splitlines()) <= 3, err
    code, out, err = main_cli(capsys, "fit", "--compute-dtype", "bf16", "--dry-run")
    assert code != 0 and "'precision'" in err and "Traceback" not in err, err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("student: tiny-llama\ncompute_dtype: bf16\n")
    code, out, err = main_cli(capsys, "fit", "--config", str(cfg), "--dry-run")
    assert code != 0 and "'compute_dtype' is now 'precision'" in err and len(err.strip().splitlines()) == 1, err


def test_bf16_lora_fit_holds_the_base_in_bf16_and_the_adapter_in_fp32(tmp_path, monkeypatch):
    """bf16 done properly: frozen weights bf16 once, trainable weights and AdamW state fp32, autocast forward;
    the artifact records the precision, and an eval in bf16 runs the adapter in bf16 too."""
    from lora_spec.fit import fit
    from lora_spec.trainer import TrainState

    seen = {}
    orig = TrainState.__init__

    def spy(self, *a, **k):
        orig(self, *a, **k)
        seen["frozen"] = {p.dtype for p in self.model.parameters() if not p.requires_grad}
        seen["trainable"] = {p.dtype for p in self.model.parameters() if p.requires_grad}
        seen["mp"] = self.accelerator.mixed_precision

    monkeypatch.setattr(TrainState, "__init__", spy)
    monkeypatch.chdir(tmp_path)
    res = fit(student="tiny-llama", dataset="arith", teacher="gold", first=16, max_steps=2, batch_size=4,
              precision="bf16", tracker="none", progress=False, out=str(tmp_path / "a"), before_after=0,
              in_dist="none", ood="none", generic="none")
    assert seen == {"frozen": {torch.bfloat16}, "trainable": {torch.float32}, "mp": "bf16"}
    m = json.loads((res.out / "lorasp.json").read_text())
    assert m["precision"]["used"] == "bf16" and m["precision"]["requested"] == "bf16"
    assert all(v == v for v in m["train"]["loss_history"])  # finite losses

    from lora_spec.adapters.artifact import load_adapter

    st = load_adapter(res.out, dtype=torch.bfloat16)
    assert st.precision == "bf16" and {p.dtype for p in st.model.parameters()} == {torch.bfloat16}


def test_full_fine_tune_in_bf16_keeps_fp32_master_weights(tmp_path, monkeypatch):
    from lora_spec.fit import fit
    from lora_spec.trainer import TrainState

    seen = {}
    orig = TrainState.__init__

    def spy(self, *a, **k):
        orig(self, *a, **k)
        seen["params"] = {p.dtype for p in self.model.parameters()}
        seen["mp"] = self.accelerator.mixed_precision

    monkeypatch.setattr(TrainState, "__init__", spy)
    monkeypatch.chdir(tmp_path)
    fit(student="tiny-llama", dataset="arith", teacher="gold", first=8, max_steps=1, batch_size=4, method="full",
        precision="bf16", tracker="none", progress=False, out=str(tmp_path / "f"), before_after=0,
        in_dist="none", ood="none", generic="none")
    assert seen == {"params": {torch.float32}, "mp": "bf16"}


def test_two_fits_in_one_process_may_use_two_precisions(tmp_path, monkeypatch):
    """The Python API: an fp32 fit, then a bf16 fit, then fp32 again, in one process (accelerate keeps one state)."""
    from lora_spec.fit import fit

    monkeypatch.chdir(tmp_path)
    for i, p in enumerate(("fp32", "bf16", "fp32")):
        res = fit(student="tiny-llama", dataset="arith", teacher="gold", first=8, max_steps=1, batch_size=4,
                  precision=p, tracker="none", progress=False, out=str(tmp_path / f"a{i}"), before_after=0,
                  in_dist="none", ood="none", generic="none")
        assert res.manifest["precision"]["used"] == p
