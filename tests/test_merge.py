"""``lorasp merge``: original / dequantized / quantized bases, parity, --safe, --dtype, fingerprint."""

from __future__ import annotations

import json

import pytest

from tests.helpers import main_cli, make_adapter, run_in_process

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _err_line(stderr: str) -> str:
    """The one ``error:`` line, which is the last line of stderr (progress lines may precede it)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errs) == 1 and lines[-1] == errs[0] and "Traceback" not in stderr, stderr
    return errs[0]


def test_merge_smollm2_fp32_parity(tmp_path, smollm2_path):
    """The real SmolLM2 with a rank-8 adapter on every linear layer, merged in fp32. ``merge`` reloads the written
    model with ``AutoModelForCausalLM.from_pretrained`` and compares it with base+adapter."""
    from safetensors import safe_open

    from lora_spec import merge
    from lora_spec.adapters.merge import PARITY_PROMPTS

    adapter = make_adapter(smollm2_path, tmp_path / "ad", seed=11, r=8, alpha=16, targets=ALL_LINEAR, std=0.03)
    out = tmp_path / "merged"
    rep = merge(adapter, out, max_new_tokens=6, prompts=PARITY_PROMPTS[:2])
    assert rep.base_mode == "original" and rep.dtype == "fp32"
    # fp32 round-off of (W + s*B@A) x versus W x + s*B(A x) through 30 layers: measured 1.07e-4 with 1 torch thread
    # and 1.30e-4 with 2 (transformers 5.24, torch 2.13), about 1e-5 of SmolLM2's logit range; a wrong merge (a
    # missing layer, a transposed B, a wrong scale) moves logits by >= 1e-2, and the adapter's own effect is ~5
    assert rep.max_logit_diff <= 2.5e-4, rep
    assert rep.greedy_equal == rep.n_prompts == 2
    assert rep.adapter_effect > 0.05  # the adapter does change the model, so parity means something
    m = json.loads((out / "lorasp.json").read_text())
    assert m["kind"] == "merged" and m["merge"]["base"] == "original" and m["parents"][0]["digest"]
    assert m["merge"]["parity"]["max_logit_diff"] == rep.max_logit_diff
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any("lora" in k for k in keys) and "model.layers.0.self_attn.q_proj.weight" in keys


def test_merge_dequantized_nf4(tmp_path, tiny_llama_path):
    """A QLoRA-style adapter (trained against NF4) merged into the NF4 round-trip of the base weights."""
    import bitsandbytes as bnb
    import torch
    from safetensors.torch import load_file

    from lora_spec.adapters.merge import merge
    from lora_spec.student import load_student

    adapter = make_adapter(tiny_llama_path, tmp_path / "q", seed=5, quant="nf4", std=0.2)
    rep = merge(adapter, tmp_path / "m")  # auto -> dequantized
    assert rep.base_mode == "dequantized"
    assert rep.max_logit_diff <= 1e-4 and rep.greedy_equal == rep.n_prompts
    # the merged weight is dequant(NF4(W)) + scaling * B @ A, not W + scaling * B @ A
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    q = load_student(str(tiny_llama_path), "nf4").model.model.layers[0].self_attn.q_proj
    deq = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state).float()
    ad = load_file(str(adapter / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    delta = (ad[f"{key}.lora_B.weight"] @ ad[f"{key}.lora_A.weight"]) * (8 / 4)
    w = merged["model.layers.0.self_attn.q_proj.weight"]
    assert torch.allclose(w, deq + delta, atol=1e-6)
    orig = load_student(str(tiny_llama_path)).model.model.layers[0].self_attn.q_proj.weight
    assert float((w - (orig + delta)).abs().max()) > 1e-3  # differs from merging into the original weights

    # original into an nf4-trained adapter is allowed and differs from dequantized
    rep_o = merge(adapter, tmp_path / "m_orig", base="original")
    assert rep_o.base_mode == "original" and rep_o.max_logit_diff <= 1e-4
    # against the real bitsandbytes NF4 base + adapter (what the adapter was trained with), the dequantized merge
    # is much closer than the merge into the original weights
    assert rep.max_logit_diff_vs_quantized < rep_o.max_logit_diff_vs_quantized / 5, (rep, rep_o)


def test_merge_quantized_needs_force(tmp_path, tiny_llama_path, capsys):
    adapter = make_adapter(tiny_llama_path, tmp_path / "q", seed=6, quant="nf4", std=0.2)
    code, _, err = main_cli(capsys, "merge", str(adapter), "--out", str(tmp_path / "mq"), "--base", "quantized")
    assert code == 2 and "--force-quantized" in _err_line(err)
    assert not (tmp_path / "mq").exists()
    r = run_in_process("merge", str(adapter), "--out", str(tmp_path / "mq"), "--force-quantized", "--max-new-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr and "rounded" in r.stderr
    assert "merged" in r.stdout and "quantized base weights (nf4)" in r.stdout and "max logit diff" in r.stdout
    m = json.loads((tmp_path / "mq" / "lorasp.json").read_text())
    assert m["quant"] == "nf4" and m["merge"]["base"] == "quantized"
    cfg = json.loads((tmp_path / "mq" / "config.json").read_text())
    assert cfg["quantization_config"]["load_in_4bit"] is True


def test_merge_errors(tmp_path, tiny_llama_path, capsys):
    import torch

    from lora_spec.adapters.merge import merge
    from lora_spec.errors import ConfigError, ModelError
    from lora_spec.student import load_student

    plain = make_adapter(tiny_llama_path, tmp_path / "p", seed=1, std=0.2)
    with pytest.raises(ConfigError, match="unquantized base"):
        merge(plain, tmp_path / "x", base="dequantized")
    bad = make_adapter(tiny_llama_path, tmp_path / "nan", seed=2, poison=True)
    code, _, err = main_cli(capsys, "merge", str(bad), "--out", str(tmp_path / "nanm"), "--safe")
    assert code == 1 and "NaN" in _err_line(err) and "--safe" in err
    assert not (tmp_path / "nanm").exists()
    # another base with the same architecture: the fingerprint check refuses it
    st = load_student(str(tiny_llama_path))
    with torch.no_grad():
        st.model.lm_head.weight.mul_(1.5)
    other = tmp_path / "other"
    st.model.save_pretrained(str(other))
    st.tokenizer.save_pretrained(str(other))
    with pytest.raises(ModelError, match="base mismatch"):
        merge(plain, tmp_path / "y", model=str(other))
    assert not (tmp_path / "y").exists()
    rep = merge(plain, tmp_path / "y", model=str(other), ignore_fingerprint=True, dtype="bf16")
    assert rep.dtype == "bf16"
    cfg = json.loads((tmp_path / "y" / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
