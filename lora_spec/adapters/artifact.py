"""The adapter artifact on disk: PEFT's own files plus ``lorasp.json`` (manifest) and ``README.md`` (model card).

A full fine-tune artifact holds ``model.safetensors`` + config + tokenizer instead of the adapter files. Every
artifact is written into a temporary sibling directory and renamed into place, so that a crash never leaves a
half-written artifact under the final name.

This module is the one home of artifact I/O: writing (:func:`save_adapter`, :func:`save_full`, both through
:func:`finish_artifact`), reading (:func:`read_adapter`, :func:`read_adapter_config`, :func:`read_manifest`), the
base-fingerprint check (:func:`check_fingerprint`, :func:`precheck_base`), the vLLM check (:func:`vllm_problems`)
and loading an artifact onto its base (:func:`load_adapter`). ``swap.AdapterSet`` builds on it.

``lorasp.json`` fields (all optional except ``kind`` and ``base``)::

    lorasp_version, kind ("adapter" | "full" | "merged" | "combined"),
    base {name, path, kind ("causal"|"seq2seq"), fingerprint {config, tokenizer, weights, id}},
    quant, method, peft {r, alpha, dropout, targets}, formats {format: weight}, loss,
    data {source, fingerprint, n_examples}, selection {rule, chosen_step}, checkpoints [{step, loss, scores}],
    train {...}, versions {torch, transformers, peft, bitsandbytes, accelerate}, parents [...], created
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

from .. import __version__
from ..artifact_files import MANIFEST, atomic_dir, read_json_object, read_manifest, write_manifest
from ..errors import ConfigError, DataError, ModelError, one_line
from ..safeload import check_adapter_dir
from ..student import base_fingerprint, hub_id, load_student, resolve_path


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("lorasp", "torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# --------------------------------------------------------------------------------------------- adapters

def warn(msg: str) -> None:
    """A one-line warning on stderr (the CLI's errors are ``error: ...``, its warnings ``warning: ...``)."""
    print(f"warning: {one_line(msg)}", file=sys.stderr, flush=True)



def adapter_digest(directory: str | os.PathLike) -> str:
    """A digest of the weight files of an artifact (adapter or full model): identifies *this* adapter."""
    d = Path(directory)
    h = hashlib.sha256()
    files = sorted(d.glob("adapter_model.*")) or sorted(d.glob("*.safetensors"))
    if not files:
        raise DataError(f"{d}: no adapter_model.safetensors (not a PEFT adapter directory)")
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def base_info(student) -> dict[str, Any]:
    """The ``base`` block of a manifest for a loaded :class:`lora_spec.student.Student`."""

    return {"name": student.name, "path": str(student.path), "kind": student.kind,
            "fingerprint": dict(student.fingerprint), "hub_id": hub_id(student.name)}


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    p = Path(directory) / "adapter_config.json"
    if not p.exists():
        raise DataError(f"{directory}: not a PEFT adapter (no adapter_config.json)")
    return read_json_object(p)


# What vLLM's LoRA loader reads from adapter_config.json (vllm/lora/peft_helper.py, ``PEFTHelper``): it keeps
# these fields, silently drops every other one, and rejects modules_to_save, DoRA and a bias. A field that vLLM
# drops is harmless only while it holds PEFT's neutral value; otherwise vLLM would serve a different adapter from
# the one that was trained. So an adapter is "vLLM-clean" when every field is either read by vLLM with a supported
# value, a pure metadata field, or a dropped field at its neutral value.
VLLM_READ_FIELDS = {"r", "lora_alpha", "target_modules", "bias", "modules_to_save", "use_rslora", "use_dora",
                    "trainable_token_indices", "ensure_weight_tying", "context_length"}
VLLM_METADATA_FIELDS = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
                        "auto_mapping", "peft_version", "lora_dropout", "init_lora_weights", "lora_ga_config",
                        "loftq_config", "eva_config", "corda_config", "megatron_config", "megatron_core",
                        "runtime_config", "arrow_config", "qalora_group_size", "use_qalora"}
# dropped by vLLM: the value that means "not used"
VLLM_NEUTRAL = {"fan_in_fan_out": (False,), "layers_to_transform": (None, []), "layers_pattern": (None, []),
                "rank_pattern": ({}, None), "alpha_pattern": ({}, None), "lora_bias": (False,),
                "exclude_modules": (None, [], ""), "target_parameters": (None, []), "layer_replication": (None, []),
                "use_bdlora": (None, False), "alora_invocation_tokens": (None,)}
VLLM_MAX_RANK = 512  # the largest max_lora_rank vLLM accepts


def vllm_problems(cfg: dict[str, Any]) -> list[str]:
    """Why vLLM would refuse, or silently change, this ``adapter_config.json`` (empty list: none)."""
    probs = []
    if cfg.get("peft_type", "LORA") != "LORA":
        probs.append(f"peft_type {cfg.get('peft_type')!r}: vLLM serves LoRA adapters only")
    for req in ("r", "lora_alpha", "target_modules"):
        if req not in cfg:
            probs.append(f"missing field {req!r}")
    r = cfg.get("r")
    if isinstance(r, int) and not 0 < r <= VLLM_MAX_RANK:
        probs.append(f"r={r}: vLLM supports 1..{VLLM_MAX_RANK} (and the server needs --max-lora-rank >= r)")
    if cfg.get("bias", "none") != "none":
        probs.append(f"bias={cfg.get('bias')!r}: vLLM supports only 'none'")
    if cfg.get("modules_to_save"):
        probs.append(f"modules_to_save={cfg.get('modules_to_save')}: vLLM requires none")
    if cfg.get("use_dora"):
        probs.append("use_dora=true: vLLM does not serve DoRA (merge it with 'lorasp merge' instead)")
    for k, v in cfg.items():
        if k in VLLM_READ_FIELDS or k in VLLM_METADATA_FIELDS:
            continue
        if k in VLLM_NEUTRAL:
            if v not in VLLM_NEUTRAL[k]:
                probs.append(f"{k}={v!r}: vLLM ignores this field, so it would serve a different adapter")
        elif v not in (None, False, {}, [], ""):
            probs.append(f"{k}={v!r}: not a field vLLM's LoRA loader reads")
    return probs


def _model_card(manifest: dict[str, Any], adapter_cfg: dict[str, Any] | None, name: str = "lorasp-adapter") -> str:
    from .card import model_card

    return model_card(manifest, adapter_cfg, name)


def set_base_hub_id(directory: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Point ``adapter_config.json``'s ``base_model_name_or_path`` at the base's Hub id (presets and Hub-loaded
    bases), so that plain PEFT (``AutoPeftModelForCausalLM``) finds the base on any machine; the local path and
    the fingerprint stay in ``lorasp.json``. A base loaded from a local directory keeps PEFT's value."""

    from .card import base_hub_id

    cfg = read_adapter_config(directory)
    hub = base_hub_id(manifest)
    if hub and cfg.get("base_model_name_or_path") != hub:
        cfg["base_model_name_or_path"] = hub
        p = Path(directory) / "adapter_config.json"
        tmp = p.with_name(f".adapter_config.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    return cfg


def save_adapter(peft_model, out: str | os.PathLike, manifest: dict[str, Any], *, adapter_name: str = "default",
                 readme: str | None = None, extra_files: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write ``peft_model``'s adapter ``adapter_name`` as a lorasp artifact at ``out`` (atomically).

    ``manifest`` must hold ``base`` (see :func:`base_info`); ``kind`` defaults to ``"adapter"``; ``versions``,
    ``created``, ``lorasp_version`` and ``adapter`` (digest, vLLM compatibility problems) are filled in here.
    ``extra_files`` maps a file name in the artifact to a source file to copy (``report.md``, ``curves.png``).
    """
    if "base" not in manifest:
        raise ValueError("save_adapter: manifest needs a 'base' block (lora_spec.adapters.artifact.base_info(student))")
    out = Path(out)
    with atomic_dir(out) as tmp:
        peft_model.save_pretrained(str(tmp), selected_adapters=[adapter_name], safe_serialization=True)
        if adapter_name != "default":  # peft writes a non-default adapter into a subfolder named after it
            sub = tmp / adapter_name
            for f in sub.iterdir():
                os.replace(f, tmp / f.name)
            sub.rmdir()
        m = {"kind": "adapter", **manifest}
        cfg = set_base_hub_id(tmp, m)
        m["adapter"] = {"digest": adapter_digest(tmp), "vllm_problems": vllm_problems(cfg)}
        finish_artifact(tmp, m, out.name, adapter_cfg=cfg, readme=readme, extra_files=extra_files)
    return out


def save_full(model, tokenizer, out: str | os.PathLike, manifest: dict[str, Any], *,
              extra_files: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write a full model (a full fine-tune: safetensors + config + tokenizer) as a lorasp artifact at ``out``
    (atomically); the manifest, model card and extra files as :func:`save_adapter` writes them."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        finish_artifact(tmp, manifest, out.name, extra_files=extra_files)
    return out


def finish_artifact(tmp: Path, manifest: dict[str, Any], name: str, *, adapter_cfg: dict[str, Any] | None = None,
                    readme: str | None = None, card_extra: str = "",
                    extra_files: Mapping[str, str | os.PathLike] | None = None) -> dict[str, Any]:
    """The part every artifact writer (adapter, full fine-tune, merged, combined) shares, into the temporary
    directory ``tmp`` of :func:`atomic_dir` once the weights are in it: ``lorasp.json`` (``lorasp_version``,
    ``versions`` and ``created`` filled in), the model card ``README.md`` (``readme``, default
    :func:`lora_spec.adapters.card.model_card` followed by ``card_extra``) and ``extra_files``. Returns the
    manifest written."""

    m = {"lorasp_version": __version__, **manifest}
    m.setdefault("versions", versions())
    m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_manifest(tmp, m)
    card = readme if readme is not None else _model_card(m, adapter_cfg, name) + card_extra
    (tmp / "README.md").write_text(card, encoding="utf-8")
    for fname, src in (extra_files or {}).items():
        shutil.copyfile(src, tmp / fname)
    return m


def read_adapter(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of an adapter directory, ``None`` for a plain PEFT adapter; an error for anything else."""

    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: adapter directory not found")
    if (d / MANIFEST).exists():
        manifest = read_manifest(d)
        if not is_full_model(manifest):  # a full/merged model is checked by load_student
            check_adapter_dir(d)
        return manifest
    if (d / "adapter_config.json").exists():
        check_adapter_dir(d)
        return None
    raise DataError(f"{d}: neither a lorasp artifact ({MANIFEST}) nor a PEFT adapter (adapter_config.json)")


def base_spec(manifest: dict[str, Any] | None, adapter: str | os.PathLike) -> str:
    """Where the base of an adapter can be loaded from: its recorded path if it exists, else its name."""
    if manifest is None:
        recorded = read_adapter_config(adapter).get("base_model_name_or_path")
        if isinstance(recorded, str) and recorded:
            return recorded  # a preset's Hub id resolves to the preset's local cache (student.resolve_path)
        raise ConfigError(f"{adapter}: a plain PEFT adapter (no {MANIFEST}) needs the base model: pass --model")
    base = manifest.get("base") or {}
    path, name = base.get("path"), base.get("name")
    if path and Path(path).exists():
        return str(path)
    if name:
        return str(name)
    raise DataError(f"{Path(adapter) / MANIFEST}: field 'base' has neither an existing 'path' nor a 'name'")


def check_fingerprint(manifest: dict[str, Any] | None, student, adapter: str | os.PathLike, *,
                      ignore: bool = False) -> None:
    """Raise a one-line :class:`ModelError` naming both bases when ``adapter`` was trained on another base."""
    if manifest is None:
        warn(f"{adapter}: plain PEFT adapter without {MANIFEST}; its base fingerprint cannot be checked")
        return
    base = manifest.get("base") or {}
    want = base.get("fingerprint") or {}
    have = student.fingerprint or {}
    if not want.get("id"):
        warn(f"{adapter}: {MANIFEST} records no base fingerprint; loading onto {student.name!r} unchecked")
        return
    if want.get("id") == have.get("id"):
        return
    differ = [k for k in ("config", "tokenizer", "weights") if want.get(k) != have.get(k)]
    msg = (f"{adapter}: base mismatch: the adapter was trained on {base.get('name')!r} (fingerprint {want.get('id')}) "
           f"but the base given is {student.name!r} at {student.path} (fingerprint {have.get('id')}; "
           f"{', '.join(differ) or 'id'} differ)")
    if ignore:
        warn(msg + "; loading anyway (--ignore-fingerprint)")
        return
    raise ModelError(msg + "; pass --ignore-fingerprint to load it anyway")


def precheck_base(manifest: dict[str, Any] | None, spec: str, adapter: str | os.PathLike, *,
                  ignore: bool = False) -> None:
    """:func:`check_fingerprint` against the files of base ``spec`` before any weights are loaded."""

    path = resolve_path(spec)
    check_fingerprint(manifest, SimpleNamespace(name=spec, path=str(path), fingerprint=base_fingerprint(path)),
                      adapter, ignore=ignore)


def peft_error(adapter, exc: Exception) -> ModelError:
    return ModelError(f"{adapter}: cannot load the adapter onto the base ({type(exc).__name__}: "
                      f"{one_line(exc)[:300]})")


def is_full_model(manifest: dict[str, Any] | None) -> bool:
    return bool(manifest) and manifest.get("kind") in ("full", "merged")


def load_adapter(adapter: str | os.PathLike, base: str | None = None, *, quant: str | None = None,
                 ignore_fingerprint: bool = False, student=None, adapter_name: str = "default",
                 dtype=None, device: str | None = None):
    """Load a lorasp adapter onto its base and return a :class:`~lora_spec.student.Student` whose ``model`` is a
    ``peft.PeftModel`` in eval mode.

    ``base`` defaults to the base recorded in ``lorasp.json``; ``quant`` defaults to the quantization the adapter
    was trained against (``nf4``/``int8``/``none``). ``student`` reuses an already loaded base (it is modified in
    place by PEFT). A full fine-tune or merged artifact is loaded as a plain model.
    """

    manifest = read_adapter(adapter)
    if is_full_model(manifest):
        return load_student(str(adapter), quant or "none", dtype=dtype, device=device)
    if student is None:
        q = quant or (manifest or {}).get("quant") or "none"
        spec = base or base_spec(manifest, adapter)
        precheck_base(manifest, spec, adapter, ignore=ignore_fingerprint)
        student = load_student(spec, q, dtype=dtype, device=device)
    else:
        check_fingerprint(manifest, student, adapter, ignore=ignore_fingerprint)
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(student.model, str(adapter), adapter_name=adapter_name)
    except Exception as exc:
        raise peft_error(adapter, exc) from None
    model.eval()
    if student.quant == "none" and student.precision != "fp32":
        # inference holds the adapter in the base's reduced dtype too (PEFT loads it in fp32): no casts per step
        model.to(student.model.dtype)
    return dataclasses.replace(student, model=model)
