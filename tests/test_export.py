"""``lorasp export`` (llama.cpp LoRA / model GGUF, Ollama Modelfile), Hub-ready artifacts and ``lorasp push``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import main_cli, make_adapter

SMOL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _reader(path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


# --------------------------------------------------------------------------------------------- tiny, fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_llama_path):
    d = tmp_path_factory.mktemp("export_tiny")
    return {"lora": make_adapter(tiny_llama_path, d / "lora", seed=1, r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj")),
            "dora": make_adapter(tiny_llama_path, d / "dora", seed=2, dora=True, method="dora"),
            "root": d}


def test_lora_gguf_layout(tiny, tiny_llama_path, tmp_path):
    """Keys llama.cpp's loader wants, names from the gguf tensor map, A as is, B of q/k in llama.cpp's row order."""
    from safetensors.numpy import load_file

    from lora_spec.adapters.export import export

    rep = export(tiny["lora"], tmp_path / "out")
    r = _reader(tmp_path / "out" / "adapter.gguf")
    assert _field(r, "general.architecture") == "llama" and _field(r, "general.type") == "adapter"
    assert _field(r, "adapter.type") == "lora" and _field(r, "adapter.lora.alpha") == 8.0
    tensors = {t.name: np.array(t.data) for t in r.tensors}
    assert len(tensors) == 2 * 3 * 2 == rep.tensors and rep.permuted == 4  # 2 layers x q,k,v x A,B; q,k per layer
    src = load_file(str(tiny["lora"] / "adapter_model.safetensors"))
    cfg = json.loads((tiny_llama_path / "config.json").read_text())
    for layer in range(2):
        pre = f"base_model.model.model.layers.{layer}.self_attn"
        for proj, gname, heads in (("q_proj", "attn_q", cfg["num_attention_heads"]),
                                   ("k_proj", "attn_k", cfg["num_key_value_heads"]), ("v_proj", "attn_v", None)):
            a, b = src[f"{pre}.{proj}.lora_A.weight"], src[f"{pre}.{proj}.lora_B.weight"]
            np.testing.assert_array_equal(tensors[f"blk.{layer}.{gname}.weight.lora_a"], a)
            got_b = tensors[f"blk.{layer}.{gname}.weight.lora_b"]
            if heads is None:
                np.testing.assert_array_equal(got_b, b)
                continue
            # within each head HF keeps the rotary pairs as two halves (i, hd/2 + i); llama.cpp's GGUF interleaves
            # them as rows (2i, 2i + 1)
            hd = b.shape[0] // heads
            want = np.empty_like(b)
            for h in range(heads):
                blk = b[h * hd:(h + 1) * hd]
                want[h * hd:(h + 1) * hd][0::2], want[h * hd:(h + 1) * hd][1::2] = blk[:hd // 2], blk[hd // 2:]
            np.testing.assert_array_equal(got_b, want)
            assert not np.array_equal(got_b, b)
    mf = (tmp_path / "out" / "Modelfile").read_text()
    # no GGUF of the tiny base exists: FROM is its safetensors directory (Ollama imports it), said in a note
    assert f"FROM {tiny_llama_path}" in mf and "ADAPTER ./adapter.gguf" in mf and rep.notes


def test_rslora_scale_folded_into_b(tiny_llama_path, tmp_path):
    """llama.cpp scales by alpha/r; PEFT's rsLoRA by alpha/sqrt(r): the difference goes into B exactly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load_file

    from lora_spec.adapters.export import export
    from lora_spec.adapters.artifact import base_info, save_adapter
    from lora_spec.student import load_student

    st = load_student(str(tiny_llama_path))
    pm = get_peft_model(st.model, LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"], use_rslora=True))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    save_adapter(pm, tmp_path / "rs", {"base": base_info(st), "quant": "none", "method": "lora"})
    rep = export(tmp_path / "rs", tmp_path / "out")
    assert rep.folded_scale == 2
    b = load_file(str(tmp_path / "rs" / "adapter_model.safetensors"))[
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"]
    got = {t.name: np.array(t.data) for t in _reader(tmp_path / "out" / "adapter.gguf").tensors}
    # llama.cpp: (alpha / r) * B' A must equal PEFT's (alpha / sqrt(r)) * B A
    np.testing.assert_allclose(got["blk.0.attn_v.weight.lora_b"] * (8 / 4), b * (8 / math.sqrt(4)), rtol=1e-6)


def test_refusals(tiny, tiny_t5_path, capsys, tmp_path):
    code, _, err = main_cli(capsys, "export", str(tiny["dora"]), "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and "DoRA" in err and "merged-gguf" in err
    t5 = make_adapter(tiny_t5_path, tmp_path / "t5", seed=1, targets=("q", "v"))
    code, _, err = main_cli(capsys, "export", str(t5), "--out", str(tmp_path / "y"))
    assert code == 2 and err.count("\n") == 1 and "seq2seq" in err
    # a model GGUF needs the tokenizer of a GGUF of the same base; the tiny fixture has none
    code, _, err = main_cli(capsys, "export", str(tiny["lora"]), "--format", "merged-gguf", "--out", str(tmp_path / "z"))
    assert code == 2 and err.count("\n") == 1 and "--base-gguf" in err
    code, _, err = main_cli(capsys, "export", str(tiny["lora"]), "--base-gguf", str(tmp_path / "nope.gguf"),
                            "--out", str(tmp_path / "w"))
    assert code == 2 and "nope.gguf" in err and err.count("\n") == 1
    code, _, err = main_cli(capsys, "export", str(tmp_path / "missing"), "--out", str(tmp_path / "v"))
    assert code == 1 and "missing" in err and err.count("\n") == 1
    assert not any((tmp_path / n).exists() for n in "xyzwv")  # nothing half-written


def test_modelfile_template_is_the_training_prompt(smollm2_path):
    """Ollama's substitution of {{ .System }} / {{ .Prompt }} gives exactly lorasp's zs_cot training prompt."""
    from transformers import AutoTokenizer

    from lora_spec.adapters.export import ollama_template
    from lora_spec.prompts import DEFAULT_SYSTEM, build_prompt
    from lora_spec.records import Problem

    p = Problem(id="arith/test/1", question="Ana has 3 pens and buys 4 more. How many pens does she have?", answer="7")
    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    tmpl, mode, stops = ollama_template({"chat": True, "formats": {"zero_shot_cot": 8, "zero_shot_answer": 1}}, tok)
    assert mode == "zs_cot" and "<|im_end|>" in stops
    assert tmpl.replace("{{ .System }}", DEFAULT_SYSTEM).replace("{{ .Prompt }}", p.question) == \
        build_prompt(p, "zs_cot", tok)
    plain, mode, _ = ollama_template({"chat": False, "formats": {"zero_shot_answer": 1}}, tok)
    assert mode == "zs_answer"
    assert plain.replace("{{ .Prompt }}", p.question) == build_prompt(p, "zs_answer", tok, chat=False)


# --------------------------------------------------------------------------------------------- Hub-ready


def test_hub_id_in_adapter_config_and_resolution(smollm2_path, tmp_path):
    from lora_spec.adapters.artifact import base_spec, read_adapter_config
    from lora_spec.student import PRESET_HUB_IDS, hub_id, preset_path, resolve_path

    hub = PRESET_HUB_IDS["smollm2-135m"]
    assert hub_id("smollm2-135m") == hub and hub_id(hub) == hub and hub_id("org/model") == "org/model"
    assert hub_id(str(smollm2_path)) is None and hub_id("tiny-llama") is None
    assert resolve_path(hub) == preset_path("smollm2-135m") == smollm2_path  # offline: the preset's cache
    a = make_adapter("smollm2-135m", tmp_path / "a", seed=1, r=2, targets=("q_proj",))
    assert read_adapter_config(a)["base_model_name_or_path"] == hub
    m = json.loads((a / "lorasp.json").read_text())
    assert m["base"]["path"] == str(smollm2_path) and m["base"]["fingerprint"]["id"]  # local facts stay here
    # a plain PEFT copy (no lorasp.json) finds its base through the Hub id, offline
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (plain / f).write_bytes((a / f).read_bytes())
    assert base_spec(None, plain) == hub


@pytest.mark.slow
def test_auto_peft_loads_by_hub_id_offline(smollm2_path, tmp_path):
    """AutoPeftModelForCausalLM.from_pretrained(DIR) with nothing but a Hub cache holding the base (offline)."""
    a = make_adapter("smollm2-135m", tmp_path / "a", seed=1, r=2, targets=("q_proj", "v_proj"))
    snap = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in smollm2_path.iterdir():
        if f.is_file():
            (snap / f.name).symlink_to(f)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("0" * 40)
    code = ("import sys, torch\nfrom peft import AutoPeftModelForCausalLM\n"
            f"m = AutoPeftModelForCausalLM.from_pretrained({str(a)!r})\n"
            "print(type(m).__name__, m.peft_config['default'].base_model_name_or_path)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": ""}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "PeftModelForCausalLM HuggingFaceTB/SmolLM2-135M-Instruct" in res.stdout


def _fit_like_manifest(base: dict) -> dict:
    return {"kind": "adapter", "base": base, "quant": "none", "method": "lora", "chat": True,
            "prompting": {"mode": "zs_cot", "chat": True, "system": "Be brief.", "n_shots": 2}, "formats": {"zero_shot_cot": 8, "zero_shot_answer": 1},
            "data": {"kind": "dataset", "dataset": "gsm8k", "split": "train", "teacher": "gold", "n_examples": 64},
            "selection": {"rule": "in_dist", "chosen_step": 20,
                          "sets": {"in_dist": {"datasets": ["gsm8k:dev"], "limit": 16, "mode": "zs_cot", "seed": 0,
                                               "tasks": {"gsm8k:dev": 16}},
                                   "ood": {"datasets": ["svamp"], "limit": 9, "mode": "zs_cot", "seed": 0,
                                           "tasks": {"svamp": 9}}}},
            "checkpoints": [{"step": 0, "loss": None, "scores": {"in_dist": 0.0625, "ood": 0.0}},
                            {"step": 20, "loss": 0.5, "scores": {"in_dist": 0.4375, "ood": 1 / 9}},
                            {"step": 30, "loss": 0.3, "scores": {"in_dist": 0.375, "ood": 0.0}}],
            "before_after": {"before": {"gsm8k:test": {"accuracy": 0.04, "n": 50, "correct": 2, "mode": "zs_cot"}},
                             "after": {"gsm8k:test": {"accuracy": 0.38, "n": 50, "correct": 19, "mode": "zs_cot"}}}}


def test_model_card_metadata():
    from lora_spec.adapters.card import model_card

    card = model_card(_fit_like_manifest({"name": "smollm2-135m", "fingerprint": {"id": "abc"}}),
                      {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"]}, "my-adapter")
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["library_name"] == "peft"
    assert meta["license"] == "apache-2.0" and meta["datasets"] == ["openai/gsm8k"]
    assert "lora" in meta["tags"] and "base_model:adapter:HuggingFaceTB/SmolLM2-135M-Instruct" in meta["tags"]
    results = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "my-adapter"
    got = [(r["dataset"]["type"], r["metrics"][0]["value"]) for r in results]
    assert got == [("gsm8k", 43.8), ("svamp", 11.1), ("gsm8k", 38.0)]  # chosen step's in_dist, ood; test after
    assert results[2]["dataset"]["split"] == "test" and "step 20" in results[0]["metrics"][0]["name"]
    body = card.split("---\n", 2)[2]
    assert "Be brief." in body and "Let's think step by step" in body  # the training system message and trigger
    assert "| gsm8k:test | 50 | 4.0% (2/50) | 38.0% (19/50) |" in body
    assert "**chosen**" in body  # the specialization report's table
    assert "https://github.com/)" not in card
    # a base loaded from a local directory has no Hub id: no base_model field rather than a private path
    local = yaml.safe_load(model_card({"kind": "adapter", "base": {"name": "/data/my-model"}}, None).split("---\n")[1])
    assert "base_model" not in local and "model-index" not in local


# --------------------------------------------------------------------------------------------- push


class _FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls and 'uploads' into a local folder."""

    calls: list = []
    remote: Path | None = None

    def __init__(self, endpoint=None, token=None):
        self.calls.append(("init", endpoint, token))

    def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, repo_type=None, revision=None, commit_message=None):
        import shutil

        self.calls.append(("upload_folder", repo_id, revision, commit_message))
        shutil.copytree(folder_path, self.remote / repo_id, dirs_exist_ok=True)

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/abc"
        return Info()


def test_push_mocked_hub(tiny, monkeypatch, capsys, tmp_path):
    import huggingface_hub

    _FakeHfApi.calls, _FakeHfApi.remote = [], tmp_path / "remote"
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    monkeypatch.setenv("MY_TOKEN", "secret-token")
    art = tiny["lora"]
    before = {p.name: p.read_bytes() for p in art.iterdir()}
    # the tiny fixture's base is a local directory: on the Hub the adapter could not find it
    code, _, err = main_cli(capsys, "push", str(art), "me/tiny-adapter")
    assert code == 2 and err.count("\n") == 1 and "--base-model" in err and "adapter_config.json" in err
    assert not any(c[0] == "upload_folder" for c in _FakeHfApi.calls)
    code, out, err = main_cli(capsys, "push", str(art), "me/tiny-adapter", "--base-model", "me/tiny-base",
                              "--private", "--token-env", "MY_TOKEN")
    assert code == 0, err
    assert "https://huggingface.co/me/tiny-adapter/commit/abc" in out
    assert ("init", None, "secret-token") in _FakeHfApi.calls
    assert ("create_repo", "me/tiny-adapter", True, True) in _FakeHfApi.calls
    up = _FakeHfApi.remote / "me" / "tiny-adapter"
    assert json.loads((up / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/tiny-base"
    meta = yaml.safe_load((up / "README.md").read_text().split("---\n")[1])
    assert meta["base_model"] == "me/tiny-base" and meta["library_name"] == "peft"
    assert {"adapter_model.safetensors", "lorasp.json"} <= {p.name for p in up.iterdir()}
    assert {p.name: p.read_bytes() for p in art.iterdir()} == before  # the artifact itself is unchanged
    code, _, err = main_cli(capsys, "push", str(art), "not a repo")
    assert code == 2 and "ORG/NAME" in err


# --------------------------------------------------------------------------------------------- llama.cpp (real)


@pytest.fixture(scope="module")
def smol_lora(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_smol")
    return make_adapter("smollm2-135m", d / "a", seed=3, r=8, alpha=16, targets=SMOL_TARGETS, std=0.02,
                        extra={"chat": True, "formats": {"zero_shot_cot": 1}})


@pytest.mark.slow
def test_lora_and_model_gguf_match_peft_on_f32(smol_lora, smollm2_path, tmp_path):
    """llama.cpp (F32 model GGUF written by lorasp + the exported LoRA GGUF) vs transformers + PEFT: the same logits
    up to float rounding, far below the adapter's own effect; a LoRA with the q/k rows left in HF order is off."""
    import torch
    from llama_cpp import Llama
    from peft import PeftModel

    import lora_spec.adapters.export as E
    from lora_spec.student import load_student, smollm2_gguf

    E.export(smol_lora, tmp_path / "lora")
    # a full-model artifact holding the base's own weights, exported as an F32 model GGUF (tokenizer and
    # hyper-parameters copied from the preset's Q4_1 GGUF)
    full = tmp_path / "full"
    full.mkdir()
    for f in smollm2_path.iterdir():
        if f.is_file() and not f.name.startswith("lorasp"):
            (full / f.name).symlink_to(f)
    (full / "lorasp.json").write_text(json.dumps({"kind": "full", "chat": True, "formats": {"zero_shot_cot": 1},
                                                  "base": json.loads((smol_lora / "lorasp.json").read_text())["base"]}))
    rep = E.export(full, tmp_path / "model", outtype="f32")
    f32 = tmp_path / "model" / "model.gguf"
    assert rep.kind == "model" and rep.permuted == 60 and rep.base_gguf == str(smollm2_gguf())
    mf = (tmp_path / "model" / "Modelfile").read_text()
    assert "FROM ./model.gguf" in mf and "\nADAPTER " not in mf
    r = _reader(f32)
    assert _field(r, "general.type") == "model" and _field(r, "tokenizer.ggml.pre") == "smollm"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 49152
    st = load_student("smollm2-135m")
    pm = PeftModel.from_pretrained(st.model, str(smol_lora)).eval()
    ids = st.tokenizer("Question: Tom has 3 apples and buys 5 more. How many apples does he have?\n"
                       "Let's think step by step\n")["input_ids"]
    with torch.no_grad():
        ref = pm(torch.tensor([ids])).logits[0].numpy()
        with pm.disable_adapter():
            base = pm(torch.tensor([ids])).logits[0].numpy()

    def cpp(lora):
        llm = Llama(model_path=str(f32), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=128,
                    n_threads=2, verbose=False)
        llm.eval(ids)
        out = np.array(llm.scores[:len(ids)])
        llm.close()
        return out

    effect = np.abs(ref - base).max()
    assert effect > 1.0
    assert np.abs(cpp(None) - base).max() < 0.1  # the model GGUF is the base (q/k reordered, tokenizer copied)
    assert np.abs(cpp(tmp_path / "lora" / "adapter.gguf") - ref).max() < 0.1
    orig = E._rope_rows
    try:
        E._rope_rows = lambda w, n: w  # what a converter without the RoPE row order writes
        E.export(smol_lora, tmp_path / "noperm")
    finally:
        E._rope_rows = orig
    assert np.abs(cpp(tmp_path / "noperm" / "adapter.gguf") - ref).max() > 0.3


@pytest.mark.slow
def test_llama_server_runs_the_exported_lora(smol_lora, tmp_path):
    """The stock Q4_1 SmolLM2 GGUF on the real llama.cpp server, with and without the exported LoRA, asked through
    lorasp's openai teacher with lorasp eval's own prompts: the LoRA changes the server's answers, and moves them
    towards what lorasp eval (transformers + PEFT, fp32) answers for the same adapter."""
    import difflib

    from tests.gguf_compare import compare

    r = compare(smol_lora, tmp_path, n=4, max_new_tokens=40, threads=1, log=lambda s: None)
    assert r["n"] == 4 and r["texts_changed_by_lora"] >= 2, r

    def sim(a, b):
        return difflib.SequenceMatcher(None, a.split(), b.split()).ratio()

    with_lora = np.mean([sim(o["server_lora"], o["eval"]) for o in r["outputs"]])
    without = np.mean([sim(o["server_base"], o["eval"]) for o in r["outputs"]])
    assert with_lora > without + 0.1, (with_lora, without, r["outputs"])
