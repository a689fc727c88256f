"""Each training mode (QLoRA-nf4, int8-LoRA, DoRA, full) trains a few steps on the real SmolLM2 and on tiny-t5,
and its artifact loads with plain PeftModel.from_pretrained / AutoModel*.from_pretrained and reproduces the
trained model's logits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lora_spec.fit import FitConfig, fit


@pytest.fixture(scope="module")
def teach_run(tmp_path_factory, data_dir):
    from lora_spec.teach import teach

    return teach(dataset="arith", split="train", first=24, teacher="gold", samples=1,
                 out=str(tmp_path_factory.mktemp("teach") / "arith"), progress=False)


MODES = [("nf4", "lora"), ("int8", "lora"), ("none", "dora"), ("none", "full")]


def _logits(model, tok, kind, text="Question: Tom has 3 apples. He buys 4 more. How many apples?"):
    enc = tok([text], return_tensors="pt")
    with torch.no_grad():
        if kind == "seq2seq":
            dec = torch.tensor([[model.config.decoder_start_token_id, 5, 6]])
            return model(**enc, decoder_input_ids=dec).logits.float()
        return model(**enc).logits.float()


@pytest.mark.slow
@pytest.mark.parametrize("student", ["smollm2-135m", "tiny-t5"])
@pytest.mark.parametrize("quant,method", MODES, ids=[f"{q}-{m}" for q, m in MODES])
def test_mode_trains_and_loads(student, quant, method, teach_run, tmp_path, smollm2_path, tiny_t5_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    out = tmp_path / "art"
    cfg = FitConfig(student=student, data=str(teach_run), quant=quant, method=method, rank=4, alpha=8,
                    max_steps=2, batch_size=1, max_length=96, save_every=0, tracker="none", progress=False,
                    lr=1e-3 if method != "full" else 1e-4, out=str(out),
                    formats="zero_shot_cot=1,zero_shot_answer=1")
    res = fit(cfg)
    res.model.eval()
    m = json.loads((out / "lorasp.json").read_text())
    losses = m["train"]["loss_history"]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert m["quant"] == quant and m["method"] == method
    assert m["base"]["fingerprint"]["id"] and m["checkpoints"][-1]["step"] == 2
    kind = res.kind
    assert kind == ("seq2seq" if student == "tiny-t5" else "causal")
    trained = _logits(res.model, res.tokenizer, kind)
    Auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    if method == "full":
        assert (out / "model.safetensors").exists() and (out / "config.json").exists()
        loaded = Auto.from_pretrained(str(out))
        assert m["kind"] == "full"
    else:
        from peft import PeftModel

        from lora_spec.student import load_student

        cfgj = json.loads((out / "adapter_config.json").read_text())
        assert cfgj["r"] == 4 and bool(cfgj.get("use_dora")) == (method == "dora")
        assert cfgj["target_modules"]  # all-linear resolved by peft
        base = load_student(student, quant).model
        loaded = PeftModel.from_pretrained(base, str(out))
    got = _logits(loaded, res.tokenizer, kind)
    assert torch.allclose(trained, got, atol=1e-3, rtol=1e-3), (trained - got).abs().max()
    if kind == "seq2seq":  # T5 keeps the FFN output projection in fp32
        wo = [mod for n, mod in res.model.named_modules() if n.endswith(".wo") and hasattr(mod, "weight")]
        assert wo and all(w.weight.dtype == torch.float32 for w in wo)
