"""AdapterSet: several adapters on one base, switching, hot-swap, mixed-adapter batches; base-fingerprint check."""

from __future__ import annotations

import json

import pytest

from tests.helpers import QUESTION, main_cli, make_adapter, run_in_process, training_prompt

PROMPTS = [
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "Question: A book costs 12 dollars. How much do 4 books cost?\nAnswer:",
    "The capital of France is",
    "Q: What is 17 + 25?\nA:",
]


@pytest.fixture(scope="module")
def smol_adapters(tmp_path_factory, smollm2_path):
    d = tmp_path_factory.mktemp("smol_adapters")
    a = make_adapter(smollm2_path, d / "a", seed=1, r=4)
    b = make_adapter(smollm2_path, d / "b", seed=2, r=8, alpha=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    return {"a": a, "b": b}


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory, tiny_llama_path):
    d = tmp_path_factory.mktemp("tiny_adapters")
    return {"a": make_adapter(tiny_llama_path, d / "a", seed=1, std=0.3),
            "a2": make_adapter(tiny_llama_path, d / "a2", seed=3, std=0.3),
            "b": make_adapter(tiny_llama_path, d / "b", seed=2, r=8, alpha=16, std=0.3,
                              targets=("q_proj", "k_proj", "v_proj", "o_proj"))}


TINY_PROMPTS = ["how many apples does John have", "the total is", "John has 3 cats and 4 dogs", "what is 2 + 3"]


def test_artifact_layout(smol_adapters):
    a = smol_adapters["a"]
    names = {p.name for p in a.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "lorasp.json", "README.md"} <= names
    m = json.loads((a / "lorasp.json").read_text())
    assert m["kind"] == "adapter" and m["quant"] == "none" and m["adapter"]["digest"]
    assert set(m["base"]["fingerprint"]) == {"config", "tokenizer", "weights", "id"}
    assert m["adapter"]["vllm_problems"] == []
    assert not any(p.name.startswith(".") for p in a.parent.iterdir())  # no temp dirs left behind


def test_mixed_batch_equals_one_adapter_at_a_time(smol_adapters, smollm2_path):
    """The real SmolLM2 with two adapters: a mixed batch gives what each adapter gives on its own."""
    from lora_spec.adapters.swap import AdapterSet

    s = AdapterSet(str(smollm2_path), {"math": smol_adapters["a"], "other": smol_adapters["b"]})
    rows = ["math", "other", "base", "math"]
    mixed = s.generate(PROMPTS, adapters=rows, max_new_tokens=8, return_ids=True)
    single = [s.generate([p], adapters=name, max_new_tokens=8, return_ids=True)[0] for p, name in zip(PROMPTS, rows)]
    assert mixed == single
    # logits too: each row of the mixed forward equals the single-adapter forward of the same padded batch
    lm = s.logits(PROMPTS, adapters=rows)
    per = {name: s.logits(PROMPTS, adapters=name) for name in ("math", "other", "base")}
    for i, r in enumerate(rows):
        assert float((lm[i] - per[r][i]).abs().max()) <= 1e-4
    # the adapters really differ from each other and from the base, so the comparisons above can fail
    for x, y in (("math", "other"), ("math", "base"), ("other", "base")):
        assert float((per[x] - per[y]).abs().max()) > 0.1, (x, y)


def test_use_switches_and_base_is_untouched(tiny_adapters, tiny_llama_path):
    from lora_spec.adapters.swap import AdapterSet
    from lora_spec.generation import generate
    from lora_spec.student import load_student

    s = AdapterSet(str(tiny_llama_path), {"math": tiny_adapters["a"], "other": tiny_adapters["b"]})
    assert s.active == "math" and s.names == ["math", "other"]
    s.use("other")
    assert s.generate(TINY_PROMPTS, max_new_tokens=6) == s.generate(TINY_PROMPTS, adapters="other", max_new_tokens=6)
    assert s.generate(TINY_PROMPTS, max_new_tokens=6) != s.generate(TINY_PROMPTS, adapters="math", max_new_tokens=6)
    s.use("base")
    plain = load_student(str(tiny_llama_path))
    assert s.generate(TINY_PROMPTS, max_new_tokens=6) == generate(plain.model, plain.tokenizer, TINY_PROMPTS,
                                                                  max_new_tokens=6, add_special_tokens=True,
                                                                  strip=False, progress=False)
    from lora_spec.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown adapter 'nope'"):
        s.use("nope")
    with pytest.raises(ConfigError, match="reserved"):
        s.add("base", tiny_adapters["a2"])
    s.remove("other")
    assert s.names == ["math"] and s.active == "base"


def test_replace_uses_hotswap_when_compatible(tiny_adapters, tiny_llama_path):
    from lora_spec.adapters.swap import AdapterSet

    s = AdapterSet(str(tiny_llama_path), {"math": tiny_adapters["a"], "other": tiny_adapters["b"]})
    before = s.generate(TINY_PROMPTS, adapters="math", max_new_tokens=6, return_ids=True)
    assert s.replace("math", tiny_adapters["a2"]) == "hotswap"
    swapped = s.generate(TINY_PROMPTS, adapters="math", max_new_tokens=6, return_ids=True)
    fresh = AdapterSet(str(tiny_llama_path), {"x": tiny_adapters["a2"]})
    assert swapped == fresh.generate(TINY_PROMPTS, max_new_tokens=6, return_ids=True)
    assert swapped != before
    # a different rank/target set cannot be hot-swapped: it is reloaded under the same name
    assert s.replace("math", tiny_adapters["b"]) == "reload"
    assert s.generate(TINY_PROMPTS, adapters="math", max_new_tokens=6) == \
        s.generate(TINY_PROMPTS, adapters="other", max_new_tokens=6)
    assert s.replace("math", tiny_adapters["a"]) == "reload"
    assert s.generate(TINY_PROMPTS, adapters="math", max_new_tokens=6, return_ids=True) == before
    mixed = s.generate(TINY_PROMPTS, adapters=["math", "other", "base", "math"], max_new_tokens=6, return_ids=True)
    assert mixed[0] == before[0] and mixed[3] == before[3]


def test_quantized_base_mixed_batch(tmp_path, tiny_llama_path):
    """Two adapters on an NF4 base (bitsandbytes on CPU): mixed batch == one at a time."""
    from lora_spec.adapters.swap import AdapterSet

    a = make_adapter(tiny_llama_path, tmp_path / "a", seed=1, quant="nf4", std=0.3)
    b = make_adapter(tiny_llama_path, tmp_path / "b", seed=2, quant="nf4", std=0.3, r=2)
    s = AdapterSet(None, {"qa": a, "qb": b})  # base and quant come from the manifests
    assert s.student.quant == "nf4"
    rows = ["qb", "qa", "base", "qb"]
    prompts = ["how many apples", "the total is", "John has 3 cats", "what is 2 + 3"]
    mixed = s.generate(prompts, adapters=rows, max_new_tokens=6, return_ids=True)
    assert mixed == [s.generate([p], adapters=n, max_new_tokens=6, return_ids=True)[0] for p, n in zip(prompts, rows)]


def test_dora_rows_fall_back_to_grouped_generation(tmp_path, tiny_llama_path):
    from lora_spec.adapters.swap import AdapterSet

    a = make_adapter(tiny_llama_path, tmp_path / "d", seed=4, dora=True, method="dora", std=0.3)
    b = make_adapter(tiny_llama_path, tmp_path / "l", seed=5, std=0.3)
    s = AdapterSet(None, {"dora": a, "plain": b})
    prompts = ["how many apples", "the total is", "John has 3 cats"]
    rows = ["dora", "plain", "base"]
    out = s.generate(prompts, adapters=rows, max_new_tokens=5, return_ids=True)
    assert out == [s.generate([p], adapters=n, max_new_tokens=5, return_ids=True)[0] for p, n in zip(prompts, rows)]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tiny_llama_path):
    """An adapter on tiny-llama, and a second base with the same architecture but other weights."""
    import torch

    from lora_spec.student import load_student

    d = tmp_path_factory.mktemp("tiny_pair")
    a = make_adapter(tiny_llama_path, d / "adapter", seed=7, std=0.3)
    st = load_student(str(tiny_llama_path))
    with torch.no_grad():
        st.model.model.layers[0].mlp.down_proj.weight.add_(0.01)
    other = d / "other-base"
    st.model.save_pretrained(str(other))
    st.tokenizer.save_pretrained(str(other))
    return a, other


def test_fingerprint_mismatch_is_one_line_error_naming_both(tiny_pair, tiny_llama_path, capsys):
    adapter, other = tiny_pair
    code, _, err = main_cli(capsys, "generate", "--model", str(other), "--adapter", f"math={adapter}", "--use",
                            "math", "--prompt", "how many apples", "--max-new-tokens", "4")
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "base mismatch" in lines[0] and "tiny-llama" in lines[0] and str(other) in lines[0]
    assert "weights differ" in lines[0] and "--ignore-fingerprint" in lines[0]
    # --ignore-fingerprint overrides it, with a warning; the mixed batch runs through the CLI
    r = run_in_process("generate", "--model", str(other), "--adapter", f"math={adapter}", "--ignore-fingerprint",
                "--prompt", "how many apples", "--prompt", "the total is", "--use", "math", "--use", "base",
                "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr and "base mismatch" in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["adapter"] for x in rows] == ["math", "base"] and all(isinstance(x["completion"], str) for x in rows)


def test_load_adapter_api_checks_fingerprint(tiny_pair):
    from lora_spec import load_adapter
    from lora_spec.errors import ModelError

    adapter, other = tiny_pair
    with pytest.raises(ModelError, match="base mismatch"):
        load_adapter(adapter, str(other))
    st = load_adapter(adapter)  # the recorded base: matches
    from peft import PeftModel

    assert isinstance(st.model, PeftModel) and not st.model.training


def test_generate_cli_errors(tiny_pair, tmp_path, capsys):
    adapter, _ = tiny_pair
    code, _, err = main_cli(capsys, "generate", "--adapter", f"math={adapter}", "--use", "nope", "--prompt", "x")
    assert code == 2 and err.count("\n") == 1 and "unknown adapter 'nope' (loaded: base, math)" in err, err
    code, _, err = main_cli(capsys, "generate", "--adapter", f"math={adapter}", "--use", "math", "--use", "base",
                            "--prompt", "x")
    assert code == 2 and "--use given 2 times for 1 prompts" in err, err
    code, _, err = main_cli(capsys, "generate", "--adapter", str(adapter), "--prompt", "x")
    assert code == 2 and "expected NAME=DIR" in err, err
    code, _, err = main_cli(capsys, "generate", "--adapter", f"m={tmp_path / 'missing'}", "--prompt", "x")
    assert code == 1 and "adapter directory not found" in err, err
    code, _, err = main_cli(capsys, "generate", "--adapter", f"math={adapter}")
    assert code == 2 and "no prompt" in err, err
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    code, _, err = main_cli(capsys, "generate", "--adapter", f"math={adapter}", "--prompts-file",
                            str(tmp_path / "p.jsonl"))
    assert code == 1 and "p.jsonl:2: field 'prompt'" in err, err


def test_generate_chat_sends_the_training_prompt(smol_adapters, smollm2_path, capsys):
    """`lorasp generate --chat` on the real SmolLM2 (a chat template with its own default system message): the
    model's input is the prompt training built for the same question (prompts.DEFAULT_SYSTEM, template,
    pre-filled trigger), and a raw prompt is wrapped with training's system message, not the template's."""
    from transformers import AutoTokenizer

    from lora_spec.prompts import DEFAULT_SYSTEM

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    a = smol_adapters["a"]
    for mode, fmt in (("zs_cot", "zero_shot_cot"), ("zs_answer", "zero_shot_answer")):
        code, out, err = main_cli(capsys, "generate", "--adapter", f"math={a}", "--prompt", QUESTION, "--mode", mode,
                                  "--chat", "--max-new-tokens", "1", "--json")
        assert code == 0, err
        sent = json.loads(out)["input"]
        assert sent == training_prompt(QUESTION, fmt, tok, chat=True)
        assert DEFAULT_SYSTEM in sent and "SmolLM" not in sent
    code, out, err = main_cli(capsys, "generate", "--adapter", f"math={a}", "--prompt", QUESTION, "--mode", "raw",
                              "--chat", "--max-new-tokens", "1", "--json")
    assert code == 0, err
    sent = json.loads(out)["input"]
    assert sent == tok.apply_chat_template([{"role": "system", "content": DEFAULT_SYSTEM},
                                            {"role": "user", "content": QUESTION}], tokenize=False,
                                           add_generation_prompt=True)
    assert "SmolLM" not in sent

