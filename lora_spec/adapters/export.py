"""``lorasp export``: artifacts for llama.cpp, Ollama and LM Studio (GGUF).

- **LoRA adapter -> llama.cpp LoRA GGUF** (``--format gguf``): ``general.type = adapter``, ``adapter.type = lora``,
  ``adapter.lora.alpha``, the base's ``general.architecture``; each adapted weight becomes two tensors named after
  the base tensor's GGUF name (from the ``gguf`` package's tensor name map, the table llama.cpp's own converter
  uses) plus ``.lora_a`` / ``.lora_b``. PEFT's A (r x in) and B (out x r) are stored as they are, except that
  llama.cpp's HF->GGUF conversion reorders the rows of Llama's ``q_proj``/``k_proj`` weights per head (the rotary
  layout), so the B matrices of those adapters get the same row order. llama.cpp scales by ``alpha / r`` with one
  alpha per file; PEFT's own per-module scale (rsLoRA's ``alpha / sqrt(r)``, ``rank_pattern``/``alpha_pattern``)
  is folded into B, so the product is exactly PEFT's.
- **Merged model / full fine-tune -> model GGUF** (``--format gguf`` on a ``merged``/``full`` artifact, or
  ``--format merged-gguf`` on an adapter, which runs ``lorasp merge`` first): the tokenizer and hyper-parameters
  are copied from a GGUF of the same base (the ``smollm2-135m`` preset's own GGUF, or ``--base-gguf FILE``), the
  weights are the artifact's, renamed and reordered as above; the tensor set and shapes must equal the base
  GGUF's, and the chat template is the artifact tokenizer's.
- **Ollama ``Modelfile``**: ``FROM`` the base GGUF (or the model GGUF), ``ADAPTER`` the LoRA GGUF, a ``TEMPLATE``
  that reproduces the training prompt exactly (it is :func:`lora_spec.prompts.build_prompt`'s zero-shot text with
  the question and system message replaced by Ollama's placeholders), the ``SYSTEM`` message the adapter was
  trained with, the mode's stop strings and temperature 0 (greedy, as lorasp evaluates).

Refused with one line: DoRA (llama.cpp has no weight-magnitude vector), LoRA biases, ``modules_to_save``,
embedding or ``lm_head`` adapters on a tied-embedding base, non-LoRA PEFT types, ``fan_in_fan_out``, seq2seq
bases, and architectures whose llama.cpp conversion lorasp does not reproduce (Llama, Mistral and Gemma-3 are
verified). Gemma-3's conversion keeps the q/k rows in HF order (llama.cpp runs its rotary embedding in the NeoX
layout) and stores every RMSNorm weight plus one (Gemma's norm multiplies by ``1 + w``); LoRA tensors need neither.

Why one long module: the GGUF layout rules (tensor names, llama.cpp's row order for rotary projections, scale
folding) are shared by the adapter, merged-model and Modelfile writers, and are easiest to check side by side.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ..artifact_files import atomic_dir
from ..errors import ConfigError, DataError, ModelError, one_line
from ..outputs import EXPORT_FORMAT, claim_output
from ..prompts import build_prompt, stop_sequences
from ..records import Problem
from ..student import gemma3_gguf, preset_of, resolve_path, smollm2_gguf
from .artifact import base_spec, precheck_base, read_adapter, read_adapter_config, versions

FORMATS = ("gguf", "merged-gguf")
OUTTYPES = ("f32", "f16", "q8_0")
ADAPTER_FILE = "adapter.gguf"
MODEL_FILE = "model.gguf"
MODELFILE = "Modelfile"
# HF architecture -> (gguf MODEL_ARCH name, whether llama.cpp's converter reorders the q/k rows for RoPE)
ARCHS = {"LlamaForCausalLM": ("LLAMA", True), "MistralForCausalLM": ("LLAMA", True),
         "Gemma3ForCausalLM": ("GEMMA3", False)}
_QUESTION = "\x00lorasp-question\x00"
_SYSTEM = "\x00lorasp-system\x00"


@dataclass
class ExportReport:
    out: str
    kind: str  # "lora" | "model"
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes
    tensors: int = 0
    base_gguf: str | None = None
    alpha: float | None = None
    permuted: int = 0  # tensors whose rows were reordered for RoPE
    folded_scale: int = 0  # tensors whose B carries PEFT's own per-module scale
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- helpers

def _base_config(manifest: dict[str, Any], artifact: Path, model: str | None) -> tuple[dict[str, Any], Path, str]:
    """The base model's config.json, its directory and the spec it was found by."""

    spec = model or base_spec(manifest, artifact)
    path = resolve_path(spec)
    cfgp = path / "config.json"
    try:
        return json.loads(cfgp.read_text(encoding="utf-8")), path, spec
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{cfgp}: cannot read the base model's config ({one_line(exc)[:200]})") from None


def _arch(config: dict[str, Any], where: str) -> tuple[Any, bool, str]:
    import gguf

    archs = config.get("architectures") or []
    name = archs[0] if archs else config.get("model_type", "?")
    if config.get("is_encoder_decoder"):
        raise ConfigError(f"{where}: a seq2seq base ({name}): llama.cpp LoRA export supports decoder-only "
                          f"{', '.join(ARCHS)} bases")
    if name not in ARCHS:
        raise ConfigError(f"{where}: base architecture {name!r}: lorasp exports GGUF only for "
                          f"{', '.join(ARCHS)} (the conversions verified against llama.cpp); use llama.cpp's "
                          f"convert_lora_to_gguf.py for others")
    arch_name, permute = ARCHS[name]
    return getattr(gguf.MODEL_ARCH, arch_name), permute, name


def _rope_rows(w, n_head: int):
    """Reorder the rows of a q/k projection (or of its LoRA B) the way llama.cpp's converter does: within each
    head, HF's two halves of the rotary dimensions (rows i and hd/2 + i) become interleaved pairs (2i, 2i + 1)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ModelError(f"cannot reorder {rows} rows into {n_head} heads for RoPE")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _heads_for(module: str, config: dict[str, Any]) -> int | None:
    """Number of heads whose rows llama.cpp reorders for this HF module (q: attention heads, k: KV heads)."""
    n_head = int(config["num_attention_heads"])
    if module.endswith("self_attn.q_proj"):
        return n_head
    if module.endswith("self_attn.k_proj"):
        return int(config.get("num_key_value_heads") or n_head)
    return None


def _gguf_name(tmap, hf_name: str, where: str) -> str:
    name = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ConfigError(f"{where}: no llama.cpp tensor for {hf_name!r} (the gguf package's tensor map has none)")
    return name


def find_base_gguf(manifest: dict[str, Any], base_path: Path | None, explicit: str | None) -> Path | None:
    """A GGUF of the artifact's base: ``--base-gguf``, the preset's own GGUF (smollm2-135m), or the GGUF a cached
    preset was converted from (``lorasp-source.json``)."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ConfigError(f"--base-gguf {explicit}: file not found")
        return p.resolve()

    name = (manifest.get("base") or {}).get("name")
    own = {"smollm2-135m": smollm2_gguf, "gemma3-270m": gemma3_gguf}.get(preset_of(name) if name else None)
    if own is not None:
        return own()
    if base_path is not None and (base_path / "lorasp-source.json").exists():
        try:
            src = json.loads((base_path / "lorasp-source.json").read_text()).get("gguf")
        except (OSError, json.JSONDecodeError):
            src = None
        if src and Path(src).is_file():
            return Path(src)
    return None


def _check_base_gguf(reader, config: dict[str, Any], arch, path: Path) -> None:
    """The base GGUF must be the same architecture and shape as the base model's config."""
    import gguf

    arch_name = gguf.MODEL_ARCH_NAMES[arch]

    def field_value(key):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    got_arch = field_value("general.architecture")
    if got_arch != arch_name:
        raise ConfigError(f"{path}: architecture {got_arch!r}, but the base model is {arch_name!r}")
    want = {f"{arch_name}.block_count": config.get("num_hidden_layers"),
            f"{arch_name}.embedding_length": config.get("hidden_size"),
            f"{arch_name}.attention.head_count": config.get("num_attention_heads"),
            f"{arch_name}.attention.head_count_kv": config.get("num_key_value_heads") or config.get("num_attention_heads"),
            f"{arch_name}.feed_forward_length": config.get("intermediate_size")}
    for k, v in want.items():
        have = field_value(k)
        if v is not None and have is not None and int(have) != int(v):
            raise ConfigError(f"{path}: {k} = {have}, but the base model's config has {v}: not a GGUF of this base")


# --------------------------------------------------------------------------------------------- LoRA GGUF

def _adapter_problems(cfg: dict[str, Any], config: dict[str, Any]) -> list[str]:
    probs = []
    if cfg.get("peft_type", "LORA") != "LORA":
        probs.append(f"peft_type {cfg.get('peft_type')!r}: llama.cpp runs LoRA adapters only")
    if cfg.get("use_dora"):
        probs.append("DoRA (use_dora=true): llama.cpp has no weight-magnitude vector; merge it with 'lorasp merge' "
                     "and export the merged model (--format merged-gguf)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        probs.append(f"bias={cfg.get('bias')!r}/lora_bias={cfg.get('lora_bias')!r}: llama.cpp LoRA has no bias")
    if cfg.get("modules_to_save"):
        probs.append(f"modules_to_save={cfg.get('modules_to_save')}: fully trained modules are not LoRA; export the "
                     f"merged model (--format merged-gguf)")
    if cfg.get("fan_in_fan_out"):
        probs.append("fan_in_fan_out=true (Conv1D layers): not a Llama layout")
    for k in ("layer_replication", "target_parameters", "alora_invocation_tokens", "trainable_token_indices"):
        if cfg.get(k):
            probs.append(f"{k}={cfg.get(k)!r}: not supported by llama.cpp LoRA export")
    return probs


def _peft_scale(cfg: dict[str, Any], module: str, r: int) -> float:
    """The scale PEFT applies to B @ A of ``module`` (alpha / r, or alpha / sqrt(r) for rsLoRA; patterns honoured)."""
    alpha = float(cfg.get("lora_alpha", 8))
    ap = cfg.get("alpha_pattern") or {}
    if ap:
        from peft.utils.other import get_pattern_key

        key = get_pattern_key(list(ap), module)
        alpha = float(ap.get(key, alpha))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def write_lora_gguf(adapter: Path, out_file: Path, manifest: dict[str, Any], cfg: dict[str, Any],
                    config: dict[str, Any], arch, permute: bool, base_reader=None) -> ExportReport:
    """Write ``adapter``'s LoRA as a llama.cpp adapter GGUF at ``out_file``."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    st = adapter / "adapter_model.safetensors"
    if not st.exists():
        raise DataError(f"{adapter}: no adapter_model.safetensors (lorasp export reads safetensors adapters)")
    n_layers = int(config["num_hidden_layers"])
    tmap = gguf.get_tensor_name_map(arch, n_layers)
    pairs: dict[str, dict[str, Any]] = {}
    with safe_open(str(st), "np") as fh:
        for key in fh.keys():
            name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
            for part, tag in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
                if name.endswith(part):
                    module = name[: -len(part)]
                    pairs.setdefault(module, {})[tag] = fh.get_tensor(key)
                    break
            else:
                if "lora_magnitude_vector" in key:
                    raise ConfigError(f"{adapter}: DoRA magnitude tensor {key!r}: llama.cpp cannot run DoRA")
                if "lora_embedding" in key:
                    raise ConfigError(f"{adapter}: embedding LoRA {key!r}: not supported by lorasp's GGUF export")
                raise ConfigError(f"{adapter}: tensor {key!r} is neither a LoRA A nor B matrix; llama.cpp cannot "
                                  f"run it as an adapter")
    if not pairs:
        raise DataError(f"{st}: no LoRA tensors")
    tied = bool(config.get("tie_word_embeddings", False))
    base_tensors = {t.name: tuple(int(x) for x in t.shape) for t in base_reader.tensors} if base_reader else None
    alpha = float(cfg.get("lora_alpha", 8))
    rep = ExportReport(out=str(out_file.parent), kind="lora", alpha=alpha)
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(f"{adapter.name} (lorasp LoRA)")
    for module in sorted(pairs):
        ab = pairs[module]
        if set(ab) != {"A", "B"}:
            raise DataError(f"{st}: {module} has only lora_{''.join(ab)} (both A and B are needed)")
        if module.endswith("lm_head") and tied:
            raise ConfigError(f"{adapter}: adapter on lm_head, but the base ties it to the token embeddings; "
                              f"llama.cpp has no separate output tensor to adapt (merge instead)")
        a = np.ascontiguousarray(ab["A"], dtype=np.float32)
        b = np.asarray(ab["B"], dtype=np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise DataError(f"{st}: {module}: lora_A {a.shape} and lora_B {b.shape} do not form a rank-r product")
        r = a.shape[0]
        scale = _peft_scale(cfg, module, r)
        if not math.isclose(scale, alpha / r, rel_tol=1e-7):
            b = b * np.float32(scale * r / alpha)  # llama.cpp multiplies by alpha / r: fold the rest into B
            rep.folded_scale += 1
        heads = _heads_for(module, config) if permute else None
        if heads:
            b = _rope_rows(b, heads)
            rep.permuted += 1
        gname = _gguf_name(tmap, module + ".weight", str(adapter))
        if base_tensors is not None:
            shape = base_tensors.get(gname)
            if shape is None:
                raise ConfigError(f"{adapter}: {module} maps to {gname!r}, which the base GGUF does not have")
            if shape[:2] != (a.shape[1], b.shape[0]):
                raise ConfigError(f"{adapter}: {module}: adapter shape {b.shape[0]}x{a.shape[1]} does not match the "
                                  f"base GGUF's {gname} ({shape[1]}x{shape[0]})")
        writer.add_tensor(gname + ".lora_a", a)
        writer.add_tensor(gname + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
        rep.tensors += 2
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return rep


# --------------------------------------------------------------------------------------------- model GGUF

_SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version",
              "general.name", "general.type", "tokenizer.chat_template")


def _copy_kv(reader, writer) -> None:
    """Every key/value of ``reader`` (tokenizer, hyper-parameters, ...) except file-type keys."""
    import gguf

    for key, f in reader.fields.items():
        if key.startswith(_SKIP_KEYS) or not f.types:
            continue
        vtype = f.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, f.contents(), vtype, sub_type=f.types[-1])
        else:
            writer.add_key_value(key, f.contents(), vtype)


def _chat_template(model_dir: Path) -> str | None:
    """The artifact tokenizer's chat template (chat_template.jinja or tokenizer_config.json)."""
    j = model_dir / "chat_template.jinja"
    if j.exists():
        return j.read_text(encoding="utf-8")
    tc = model_dir / "tokenizer_config.json"
    if tc.exists():
        try:
            t = json.loads(tc.read_text(encoding="utf-8")).get("chat_template")
        except json.JSONDecodeError:
            return None
        return t if isinstance(t, str) else None
    return None


def write_model_gguf(model_dir: Path, out_file: Path, config: dict[str, Any], arch, permute: bool, base_reader,
                     outtype: str = "f16", name: str | None = None) -> ExportReport:
    """Write the full model in ``model_dir`` (safetensors) as a llama.cpp model GGUF, with the tokenizer and
    hyper-parameters of ``base_reader`` (a GGUF of the same base)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise DataError(f"{model_dir}: no *.safetensors weights")
    tmap = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    base_tensors = {t.name: tuple(int(x) for x in t.shape) for t in base_reader.tensors}
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or model_dir.name)
    _copy_kv(base_reader, writer)
    writer.add_file_type(ftype)
    if outtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tmpl = _chat_template(model_dir)
    if tmpl is None and "tokenizer.chat_template" in base_reader.fields:
        tmpl = base_reader.fields["tokenizer.chat_template"].contents()
    if tmpl:
        writer.add_chat_template(tmpl)
    rep = ExportReport(out=str(out_file.parent), kind="model")
    written: set[str] = set()
    for f in files:
        with safe_open(str(f), "np") as fh:
            for key in fh.keys():
                if key == "lm_head.weight" and config.get("tie_word_embeddings", False):
                    continue  # tied to token_embd: llama.cpp reuses it
                if key.endswith("rotary_emb.inv_freq"):
                    continue
                gname = _gguf_name(tmap, key, str(f))
                if gname not in base_tensors:
                    raise ConfigError(f"{f}: {key} maps to {gname!r}, which the base GGUF does not have")
                data = np.asarray(fh.get_tensor(key), dtype=np.float32)
                if arch == gguf.MODEL_ARCH.GEMMA3 and key.endswith("norm.weight"):
                    data = data + np.float32(1)  # llama.cpp's Gemma norms hold 1 + w (HF's Gemma adds the 1 itself)
                module = key.rsplit(".", 1)[0]
                heads = _heads_for(module, config) if permute and key.endswith(".weight") else None
                if heads:
                    data = _rope_rows(data, heads)
                    rep.permuted += 1
                if tuple(reversed(data.shape)) != base_tensors[gname]:
                    raise ConfigError(f"{f}: {key} has shape {tuple(data.shape)}, the base GGUF's {gname} "
                                      f"{tuple(reversed(base_tensors[gname]))}")
                data = np.ascontiguousarray(data)
                if data.ndim == 1 or outtype == "f32":
                    writer.add_tensor(gname, data)
                elif outtype == "f16":
                    writer.add_tensor(gname, data.astype(np.float16))
                else:
                    q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
                    writer.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                written.add(gname)
                rep.tensors += 1
    missing = sorted(set(base_tensors) - written)
    if missing:
        raise ConfigError(f"{model_dir}: the base GGUF has tensors the model does not ({', '.join(missing[:4])}"
                          f"{' ...' if len(missing) > 4 else ''})")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return rep


# --------------------------------------------------------------------------------------------- Modelfile

def _go_quote(s: str) -> str:
    if '"""' in s:
        raise ConfigError('the text contains """, which an Ollama Modelfile cannot quote')
    return f'"""{s}"""'


def ollama_template(manifest: dict[str, Any], tokenizer) -> tuple[str, str, list[str]]:
    """``(TEMPLATE, prompt mode, stop strings)`` that make Ollama build exactly lorasp's zero-shot training prompt:
    :func:`lora_spec.prompts.build_prompt` with placeholders for the question and system message."""
    from .card import training_system

    fmts = manifest.get("formats") or {}
    cot = any(k.endswith("_cot") and v for k, v in fmts.items()) if fmts else True
    mode = "zs_cot" if cot else "zs_answer"
    chat = bool(manifest.get("chat"))
    system = training_system(manifest)
    text = build_prompt(Problem(id="x/0", question=_QUESTION, answer="0"), mode, tokenizer, chat=chat,
                        system=_SYSTEM if (chat and system) else None)
    if "{{" in text.replace(_QUESTION, "").replace(_SYSTEM, ""):
        raise ConfigError("the training prompt contains '{{', which an Ollama template cannot hold literally")
    text = text.replace(_QUESTION, "{{ .Prompt }}").replace(_SYSTEM, "{{ .System }}")
    return text, mode, stop_sequences(mode, chat)


def render_modelfile(*, base_from: str, adapter_file: str | None, template: str, system: str | None,
                     stops: list[str], comment: list[str]) -> str:
    lines = [f"# {c}" for c in comment]
    lines += [f"FROM {base_from}"]
    if adapter_file:
        lines.append(f"ADAPTER {adapter_file}")
    lines.append(f"TEMPLATE {_go_quote(template)}")
    if system:
        lines.append(f"SYSTEM {_go_quote(system)}")
    for s in stops:
        lines.append(f"PARAMETER stop {json.dumps(s)}")
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- command

def export(artifact: str | os.PathLike, out: str | os.PathLike, *, fmt: str = "gguf", base_gguf: str | None = None,
           model: str | None = None, outtype: str = "f16", ignore_fingerprint: bool = False,
           log: Callable[[str], None] | None = None, overwrite: bool = False) -> ExportReport:
    """Export ``artifact`` for llama.cpp / Ollama into the directory ``out`` (written atomically). The steps in the
    order they run: checks (artifact and base, before any weights load), the adapter or model GGUF, the Modelfile
    and export.json."""

    # before any work: never into a file, a foreign directory, the artifact or a folder holding it; an earlier
    # export is replaced (atomically) only with --overwrite, keeping the files lorasp did not write; one writer
    # per output (the lock is held until the export is in place)
    with claim_output(out, "export", overwrite=overwrite,
                      inputs=[("ARTIFACT", artifact), ("--base-gguf", base_gguf)]) as res:
        return _export(artifact, res, fmt=fmt, base_gguf=base_gguf, model=model, outtype=outtype,
                       ignore_fingerprint=ignore_fingerprint, log=log)


def _export(artifact: str | os.PathLike, out: str | os.PathLike, *, fmt: str, base_gguf: str | None,
            model: str | None, outtype: str, ignore_fingerprint: bool,
            log: Callable[[str], None] | None) -> ExportReport:
    log = log or (lambda s: None)
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if outtype not in OUTTYPES:
        raise ConfigError(f"--outtype: {outtype!r} is not one of {', '.join(OUTTYPES)}")
    src = Path(artifact)
    manifest, full, config, base_path, cfg = _export_source(src, fmt, model, ignore_fingerprint)
    arch, permute, arch_name = _arch(config, str(src))
    base_file = find_base_gguf(manifest, base_path, base_gguf)
    reader = None
    # a model GGUF copies the base GGUF's tokenizer; a LoRA GGUF is checked against a GGUF the user names (the
    # preset's own GGUF is the source of the fingerprint-checked base, and parsing its 49k-token vocabulary in
    # Python takes seconds)
    if base_file is not None and (full or fmt == "merged-gguf" or base_gguf):
        reader = _read_base_gguf(base_file, config, arch)

    out = Path(out)
    with atomic_dir(out, replace=("export",)) as tmp:
        if not full and fmt == "gguf":
            rep = write_lora_gguf(src, tmp / ADAPTER_FILE, manifest, cfg, config, arch, permute, reader)
            log(f"LoRA GGUF: {rep.tensors} tensors ({rep.permuted} q/k B matrices reordered for llama.cpp's RoPE "
                f"layout), alpha {rep.alpha:g}")
            model_for_tmpl = base_path
            from_line = str(base_file) if base_file else str(base_path)
            if base_file is None:
                rep.notes.append(f"no GGUF of the base is known: the Modelfile's FROM is the base's safetensors "
                                 f"directory {base_path} (Ollama imports it); pass --base-gguf FILE to use a GGUF")
            adapter_line = f"./{ADAPTER_FILE}"
        else:
            if reader is None:
                raise ConfigError(f"{src}: a model GGUF takes its tokenizer and hyper-parameters from a GGUF of the "
                                  f"same base, and none is known for {manifest.get('base', {}).get('name')!r}: "
                                  f"pass --base-gguf FILE")
            merged_dir = src
            scratch = None
            if not full:  # merged-gguf of an adapter: lorasp merge first (with its parity check)
                from .merge import merge

                # named as atomic_dir's temporaries are: a kill -9 leaves residue the next export removes
                scratch = tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-merge", dir=str(out.parent))
                mrep = merge(src, Path(scratch) / "merged", model=model, ignore_fingerprint=ignore_fingerprint,
                             log=log)
                log(f"merged: max logit diff vs base+adapter {mrep.max_logit_diff:.3g}, identical greedy "
                    f"{mrep.greedy_equal}/{mrep.n_prompts}")
                merged_dir = Path(scratch) / "merged"
            try:
                rep = write_model_gguf(merged_dir, tmp / MODEL_FILE, config, arch, permute, reader, outtype,
                                       name=src.name)
            finally:
                if scratch:
                    shutil.rmtree(scratch, ignore_errors=True)
            log(f"model GGUF ({outtype}): {rep.tensors} tensors, tokenizer and hyper-parameters from {base_file}")
            model_for_tmpl = merged_dir if merged_dir.exists() else base_path
            from_line = f"./{MODEL_FILE}"
            adapter_line = None
        rep.base_gguf = str(base_file) if base_file else None
        mode, system = _write_modelfile(tmp / MODELFILE, src, manifest, src if full else model_for_tmpl, from_line,
                                        adapter_line)
        meta = {"source": str(src.resolve()), "format": fmt, "kind": rep.kind, "architecture": arch_name,
                "base_gguf": rep.base_gguf, "outtype": outtype if rep.kind == "model" else "f32",
                "tensors": rep.tensors, "permuted_qk": rep.permuted, "folded_scale": rep.folded_scale,
                "alpha": rep.alpha, "prompt_mode": mode, "system": system, "notes": rep.notes,
                "versions": {**versions(), "gguf": _version("gguf")},
                "format_id": EXPORT_FORMAT,  # the marker: lorasp wrote this directory (lora_spec.outputs)
                "files": sorted([p.name for p in tmp.iterdir()] + ["export.json"])}
        (tmp / "export.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        rep.files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
    rep.out = str(out)
    return rep


def _export_source(src: Path, fmt: str, model: str | None, ignore_fingerprint: bool):
    """What is exported: (manifest, full model or adapter, the model's config, the base's local path or None, the
    adapter's config or None). An adapter that llama.cpp cannot run, or on the wrong base, is refused here."""

    manifest = read_adapter(src)
    if manifest is None:
        manifest = {"base": {"name": model or read_adapter_config(src).get("base_model_name_or_path")},
                    "kind": "adapter"}
    if manifest.get("kind", "adapter") in ("merged", "full"):
        try:
            config = json.loads((src / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{src / 'config.json'}: cannot read the model's config ({one_line(exc)[:200]})") from None
        try:
            base_path = resolve_path(model or base_spec(manifest, src))
        except Exception:  # the base is only needed to find its GGUF; --base-gguf covers a missing one
            base_path = None
        return manifest, True, config, base_path, None
    cfg = read_adapter_config(src)
    probs = _adapter_problems(cfg, {})
    if probs and fmt == "gguf":
        raise ConfigError(f"{src}: llama.cpp cannot run this adapter: {probs[0]}")
    config, base_path, spec = _base_config(manifest, src, model)
    if manifest.get("base", {}).get("fingerprint"):
        precheck_base(manifest, spec, src, ignore=ignore_fingerprint)
    return manifest, False, config, base_path, cfg


def _read_base_gguf(base_file: Path, config: dict, arch: str):
    """The base GGUF, parsed and checked against the model's config (same architecture and shapes)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(base_file))
    except Exception as exc:
        raise DataError(f"{base_file}: not a readable GGUF ({type(exc).__name__}: {one_line(exc)[:200]})") from None
    _check_base_gguf(reader, config, arch, base_file)
    return reader


def _write_modelfile(path: Path, src: Path, manifest: dict, tok_dir, from_line: str, adapter_line: str | None):
    """The Ollama Modelfile: the training prompt layout, system message and stops. Returns (prompt mode, system)."""
    from transformers import AutoTokenizer

    from .card import training_system

    try:
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
    except Exception as exc:
        raise ModelError(f"{tok_dir}: cannot load the tokenizer ({type(exc).__name__}: {one_line(exc)[:200]})") \
            from None
    template, mode, stops = ollama_template(manifest, tok)
    system = training_system(manifest)
    comment = [f"Ollama Modelfile written by `lorasp export` for {src.resolve()}",
               f"TEMPLATE = lorasp's {mode} training prompt ({'chat template' if manifest.get('chat') else 'plain text'}"
               f"), with the question as {{{{ .Prompt }}}}" + (" and the system message as {{ .System }}"
                                                              if system else ""),
               "ollama create NAME -f Modelfile && ollama run NAME 'QUESTION'"]
    path.write_text(render_modelfile(base_from=from_line, adapter_file=adapter_line, template=template,
                                     system=system, stops=stops, comment=comment), encoding="utf-8")
    return mode, system


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"
