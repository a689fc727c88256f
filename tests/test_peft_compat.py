"""Compatibility: a lorasp adapter is a plain PEFT adapter, and its config holds only what vLLM's loader accepts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.helpers import make_adapter


def test_plain_peft_loads_a_lorasp_adapter(tmp_path, tiny_llama_path):
    """A separate interpreter with no lorasp import loads base + adapter with peft and gets lorasp's logits."""
    import torch

    from lora_spec import load_adapter

    adapter = make_adapter(tiny_llama_path, tmp_path / "ad", seed=21, r=4, std=0.3)
    prompt = "Question: how many apples does John have? Answer:"
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained({str(tiny_llama_path)!r}, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, {str(adapter)!r}).eval()
        tok = AutoTokenizer.from_pretrained({str(tiny_llama_path)!r})
        with torch.inference_mode():
            logits = model(**tok({prompt!r}, return_tensors="pt")).logits[0, -1]
        assert not any(m.startswith("lora_spec") for m in sys.modules), "lora_spec was imported"
        print(json.dumps(logits.tolist()))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    plain = torch.tensor(json.loads(r.stdout.strip().splitlines()[-1]))
    st = load_adapter(adapter)
    with torch.inference_mode():
        ours = st.model(**st.tokenizer(prompt, return_tensors="pt")).logits[0, -1]
        with st.model.disable_adapter():
            bare = st.model(**st.tokenizer(prompt, return_tensors="pt")).logits[0, -1]
    assert float((plain - ours).abs().max()) <= 1e-4
    assert float((plain - bare).abs().max()) > 1e-3  # the adapter was applied by plain peft


def test_vllm_field_check():
    from lora_spec.adapters.artifact import vllm_problems

    base = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "v_proj"], "bias": "none", "modules_to_save": None, "use_rslora": False,
            "use_dora": False, "rank_pattern": {}, "alpha_pattern": {}, "fan_in_fan_out": False,
            "layers_to_transform": None, "base_model_name_or_path": "x", "init_lora_weights": True}
    assert vllm_problems(base) == []
    cases = {"use_dora": True, "bias": "lora_only", "modules_to_save": ["lm_head"], "rank_pattern": {"q_proj": 4},
             "layers_to_transform": [0, 1], "r": 1024, "fan_in_fan_out": True, "some_new_field": 3}
    for k, v in cases.items():
        probs = vllm_problems({**base, k: v})
        assert len(probs) == 1 and k.split("_")[0] in probs[0], (k, probs)
    assert vllm_problems({**base, "peft_type": "IA3"})
    assert vllm_problems({k: v for k, v in base.items() if k != "target_modules"}) == ["missing field 'target_modules'"]


def test_saved_adapters_are_vllm_clean(tmp_path, tiny_llama_path):
    """What lorasp writes (peft's own adapter_config.json) passes the check; a DoRA adapter is flagged."""
    from lora_spec.adapters.artifact import read_adapter_config, vllm_problems

    a = make_adapter(tiny_llama_path, tmp_path / "a", seed=1)
    assert vllm_problems(read_adapter_config(a)) == []
    d = make_adapter(tiny_llama_path, tmp_path / "d", seed=1, dora=True)
    assert any("DoRA" in p for p in vllm_problems(read_adapter_config(d)))
    assert json.loads((d / "lorasp.json").read_text())["adapter"]["vllm_problems"]
