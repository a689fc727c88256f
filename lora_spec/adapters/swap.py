"""Adapters on a base model: save, load with a base-fingerprint check, and ``AdapterSet`` (several adapters on one
base, switching, hot-swap, mixed-adapter batched generation).

An adapter artifact is PEFT's own files (``adapter_config.json``, ``adapter_model.safetensors``) plus
``lorasp.json`` (see :mod:`lora_spec.adapters.artifact`). ``lorasp.json`` records the fingerprint of the base it
was trained on; loading it onto a base with another fingerprint is an error that names both bases, unless
``ignore_fingerprint=True`` (``--ignore-fingerprint``).

A plain PEFT adapter directory (no ``lorasp.json``) can be loaded too when the base is given; its base cannot be
checked, which is said on stderr.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ConfigError, DataError, ModelError, one_line
from .artifact import MANIFEST, atomic_dir, read_json_object, read_manifest, versions, write_manifest

BASE = "base"  # the adapter name that means "the base model, no adapter" (peft calls it "__base__")
_PEFT_BASE = "__base__"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


def warn(msg: str) -> None:
    """A one-line warning on stderr (the CLI's errors are ``error: ...``, its warnings ``warning: ...``)."""
    print(f"warning: {one_line(msg)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- artifact helpers

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
    from ..student import hub_id

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
    import json

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
    from .. import __version__

    if "base" not in manifest:
        raise ValueError("save_adapter: manifest needs a 'base' block (lora_spec.adapters.swap.base_info(student))")
    out = Path(out)
    with atomic_dir(out) as tmp:
        peft_model.save_pretrained(str(tmp), selected_adapters=[adapter_name], safe_serialization=True)
        if adapter_name != "default":  # peft writes a non-default adapter into a subfolder named after it
            sub = tmp / adapter_name
            for f in sub.iterdir():
                os.replace(f, tmp / f.name)
            sub.rmdir()
        m = {"lorasp_version": __version__, "kind": "adapter"}
        m.update(manifest)
        cfg = set_base_hub_id(tmp, m)
        m["adapter"] = {"digest": adapter_digest(tmp), "vllm_problems": vllm_problems(cfg)}
        m.setdefault("versions", versions())
        m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_manifest(tmp, m)
        (tmp / "README.md").write_text(readme if readme is not None else _model_card(m, cfg, out.name),
                                         encoding="utf-8")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
    return out


def read_adapter(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of an adapter directory, ``None`` for a plain PEFT adapter; an error for anything else."""
    from ..safeload import check_adapter_dir

    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"{d}: adapter directory not found")
    if (d / MANIFEST).exists():
        manifest = read_manifest(d)
        if not _is_full(manifest):  # a full/merged model is checked by load_student
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
    from types import SimpleNamespace

    from ..student import base_fingerprint, resolve_path

    path = resolve_path(spec)
    check_fingerprint(manifest, SimpleNamespace(name=spec, path=str(path), fingerprint=base_fingerprint(path)),
                      adapter, ignore=ignore)


def _peft_error(adapter, exc: Exception) -> ModelError:
    return ModelError(f"{adapter}: cannot load the adapter onto the base ({type(exc).__name__}: "
                      f"{one_line(exc)[:300]})")


def _is_full(manifest: dict[str, Any] | None) -> bool:
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
    from ..student import load_student

    manifest = read_adapter(adapter)
    if _is_full(manifest):
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
        raise _peft_error(adapter, exc) from None
    model.eval()
    return dataclasses.replace(student, model=model)


# --------------------------------------------------------------------------------------------- generation

def _encode(tokenizer, prompts: Sequence[str], chat: bool):
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("--chat: this tokenizer has no chat template")
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    return tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=not chat)


def _cut(text: str, stop: Sequence[str] | None) -> str:
    for s in stop or ():
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text


def greedy_generate(model, tokenizer, prompts: Sequence[str], *, kind: str = "causal", max_new_tokens: int = 64,
                    batch_size: int = 8, stop: Sequence[str] | None = None, chat: bool = False,
                    adapter_names: Sequence[str] | None = None, return_ids: bool = False) -> list:
    """Greedy generation in batches. ``adapter_names`` (one per prompt) is peft's mixed-adapter batch argument."""
    import torch

    outs: list = []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        enc = _encode(tokenizer, chunk, chat).to(device)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        if adapter_names is not None:
            kwargs["adapter_names"] = list(adapter_names[i:i + batch_size])
        with torch.inference_mode():
            gen = model.generate(**enc, **kwargs)
        new = gen if kind == "seq2seq" else gen[:, enc["input_ids"].shape[1]:]
        for row in new:
            ids = [int(t) for t in row if int(t) != tokenizer.pad_token_id]
            if tokenizer.eos_token_id in ids:
                ids = ids[:ids.index(tokenizer.eos_token_id)]
            outs.append(ids if return_ids else _cut(tokenizer.decode(ids, skip_special_tokens=True), stop))
    return outs


# --------------------------------------------------------------------------------------------- AdapterSet

@dataclasses.dataclass
class Prepared:
    """One row of :meth:`AdapterSet.prepare`: the exact model input, its adapter, mode, chat flag, stop strings."""

    text: str
    adapter: str
    mode: str
    chat: bool
    stop: list[str]


@dataclasses.dataclass
class _Entry:
    name: str
    path: str
    manifest: dict[str, Any] | None
    config: dict[str, Any]
    slot: str  # the adapter's name inside the PeftModel (differs from ``name`` after a non-hot-swap replace)


class AdapterSet:
    """Several adapters on one base model (quantized or not).

    >>> s = AdapterSet("smollm2-135m", {"math": "adapters/a", "other": "adapters/b"})
    >>> s.use("math"); s.generate(["2+3="])                    # one adapter for the whole batch
    >>> s.generate(["2+3=", "2+3="], adapters=["math", "base"])  # mixed batch: one adapter (or the base) per row

    All adapters stay resident: ``use`` only switches the active one (no weight copy). ``replace(name, dir)``
    loads another adapter into an existing slot with peft's hot-swap (weights copied in place, so a compiled
    model is not recompiled) when the two configs are compatible, and by loading and unloading otherwise.
    Mixed batches use peft's ``adapter_names=`` path; DoRA adapters, which peft cannot mix in one batch, are run
    group by group instead, with the same result.
    """

    def __init__(self, base=None, adapters: Mapping[str, str | os.PathLike] | Iterable[tuple[str, str]] | None = None,
                 *, quant: str | None = None, ignore_fingerprint: bool = False, dtype=None, device: str | None = None):
        from ..student import Student, load_student

        items = list(adapters.items() if isinstance(adapters, Mapping) else (adapters or []))
        self.ignore_fingerprint = ignore_fingerprint
        self.entries: dict[str, _Entry] = {}
        self._serial = 0
        self._checked: set[str] = set()
        if isinstance(base, Student):
            self.student = base
        else:
            if base is None:
                if not items:
                    raise ConfigError("AdapterSet needs a base model or at least one adapter")
                first = items[0][1]
                base = base_spec(read_adapter(first), first)
            if quant is None and items:
                m = read_adapter(items[0][1])
                quant = (m or {}).get("quant") or "none"
            self._precheck(str(base), items)  # fail on a base mismatch before loading any weights
            self.student = load_student(str(base), quant or "none", dtype=dtype, device=device)
        self.model = self.student.model  # becomes a PeftModel with the first adapter
        # a lorasp full fine-tune or merged model as the base: its lorasp.json says how it was trained to be prompted
        bm = Path(str(self.student.path)) / MANIFEST
        try:
            self.base_manifest = read_manifest(bm.parent) if bm.is_file() else None
        except DataError:
            self.base_manifest = None
        self.active: str = BASE
        for name, path in items:
            self.add(name, path)

    def _precheck(self, base: str, items: list[tuple[str, Any]]) -> None:
        """Compare every adapter's recorded base fingerprint with ``base``'s files (no weights loaded)."""
        from types import SimpleNamespace

        from ..student import base_fingerprint, resolve_path

        path = resolve_path(base)
        fake = SimpleNamespace(name=base, path=str(path), fingerprint=base_fingerprint(path))
        for name, adapter in items:
            self._check_name(name)
            manifest = read_adapter(adapter)
            if manifest is not None and not _is_full(manifest):
                check_fingerprint(manifest, fake, adapter, ignore=self.ignore_fingerprint)
                self._checked.add(str(adapter))

    # ------------------------------------------------------------------ bookkeeping
    @property
    def names(self) -> list[str]:
        return list(self.entries)

    @property
    def tokenizer(self):
        return self.student.tokenizer

    def _check_name(self, name: str) -> None:
        if name in (BASE, _PEFT_BASE, "default"):
            raise ConfigError(f"adapter name {name!r} is reserved ('base' means no adapter, 'default' is peft's "
                              f"own); choose another name")
        if not _NAME_RE.match(name):
            raise ConfigError(f"adapter name {name!r}: use letters, digits, '_' or '-', starting with a letter or "
                              f"'_' (at most 64 characters)")
        if "__" in name:
            raise ConfigError(f"adapter name {name!r}: no '__' (peft uses it in its own names); choose another name")
        if name in "lora_":
            raise ConfigError(f"adapter name {name!r}: peft finds an adapter's weights by looking for its name "
                              f"inside the weight names ('...lora_A.NAME.weight'), and {name!r} is part of "
                              f"'lora_', so it would match every adapter; choose a longer name")

    def _require(self, name: str) -> None:
        if name != BASE and name not in self.entries:
            raise ConfigError(f"unknown adapter {name!r} (loaded: {', '.join([BASE] + self.names)})")

    def _activate(self, name: str) -> None:
        """Point peft at ``name``'s slot (the base needs no switch: it is reached via ``disable_adapter``)."""
        if name != BASE:
            self.model.set_adapter(self.entries[name].slot)

    def add(self, name: str, path: str | os.PathLike) -> None:
        """Load the adapter at ``path`` under ``name`` (after the base-fingerprint check)."""
        self._check_name(name)
        if name in self.entries:
            raise ConfigError(f"adapter name {name!r} is given twice")
        manifest = read_adapter(path)
        if _is_full(manifest):
            raise ConfigError(f"{path}: a {manifest.get('kind')} model, not an adapter; load it as --model")
        if str(path) not in self._checked:
            check_fingerprint(manifest, self.student, path, ignore=self.ignore_fingerprint)
        cfg = read_adapter_config(path)
        from peft import PeftModel

        try:
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.student.model, str(path), adapter_name=name)
            else:
                self.model.load_adapter(str(path), adapter_name=name)
        except Exception as exc:
            raise _peft_error(path, exc) from None
        self.model.eval()
        self.entries[name] = _Entry(name, str(path), manifest, cfg, name)
        if self.active == BASE and len(self.entries) == 1:
            self.active = name
        self._activate(self.active)

    def remove(self, name: str) -> None:
        self._require(name)
        if name == BASE:
            raise ConfigError("the base cannot be removed")
        if len(self.entries) == 1:
            raise ConfigError(f"cannot remove {name!r}: it is the only adapter left")
        slot = self.entries.pop(name).slot
        if self.active == name:
            self.active = BASE
        self.model.set_adapter(next(iter(self.entries.values())).slot)
        self.model.delete_adapter(slot)
        self._activate(self.active)

    def use(self, name: str) -> "AdapterSet":
        """Make ``name`` (or ``"base"``) the adapter that ``generate``/``logits`` use by default."""
        self._require(name)
        self._activate(name)
        self.active = name
        return self

    def replace(self, name: str, path: str | os.PathLike) -> str:
        """Put the adapter at ``path`` into slot ``name``; returns ``"hotswap"`` or ``"reload"``."""
        self._require(name)
        if name == BASE:
            raise ConfigError("the base cannot be replaced")
        manifest = read_adapter(path)
        check_fingerprint(manifest, self.student, path, ignore=self.ignore_fingerprint)
        cfg = read_adapter_config(path)
        from peft import PeftConfig
        from peft.utils.hotswap import check_hotswap_configs_compatible, hotswap_adapter

        old = self.entries[name]
        slot = old.slot
        try:
            check_hotswap_configs_compatible(self.model.peft_config[slot], PeftConfig.from_pretrained(str(path)))
            compatible = (sorted(map(str, old.config.get("target_modules") or []))
                          == sorted(map(str, cfg.get("target_modules") or []))
                          and old.config.get("r") == cfg.get("r")
                          and not cfg.get("use_dora") and not old.config.get("use_dora"))
        except ValueError:
            compatible = False
        how = "reload"
        if compatible:
            self.model.set_adapter(slot)  # hotswap_adapter validates against the active adapter's config
            device = str(next(self.model.parameters()).device)
            try:
                hotswap_adapter(self.model, str(path), adapter_name=slot, torch_device=device)
                how = "hotswap"
            except Exception as exc:
                raise _peft_error(path, exc) from None
        else:  # load under a fresh slot name, then drop the old slot (peft cannot rename adapters)
            self._serial += 1
            new_slot = f"{name}__{self._serial}"
            try:
                self.model.load_adapter(str(path), adapter_name=new_slot)
            except Exception as exc:
                raise _peft_error(path, exc) from None
            self.model.set_adapter(new_slot)
            self.model.delete_adapter(slot)
            slot = new_slot
        self.entries[name] = _Entry(name, str(path), manifest, cfg, slot)
        self.model.eval()
        self._activate(self.active)
        return how

    # ------------------------------------------------------------------ inference
    def _rows(self, prompts: list[str], adapters) -> list[str]:
        if adapters is None or isinstance(adapters, str):
            rows = [adapters or self.active] * len(prompts)
        else:
            rows = list(adapters)
            if len(rows) != len(prompts):
                raise ConfigError(f"{len(rows)} adapter names for {len(prompts)} prompts (give one per prompt, "
                                  f"or one for all)")
        for r in rows:
            self._require(r)
        return rows

    def _peft_names(self, rows: Sequence[str]) -> list[str]:
        return [_PEFT_BASE if r == BASE else self.entries[r].slot for r in rows]

    def _mixable(self, rows: Sequence[str]) -> bool:
        return not any(self.entries[r].config.get("use_dora") for r in set(rows) if r != BASE)

    def prompting(self, name: str | None = None) -> dict[str, Any]:
        """How adapter ``name`` was prompted in training (:func:`lora_spec.prompts.artifact_prompting` of its
        ``lorasp.json``); the base (``None``/``"base"``) gets the first adapter's that has one, so base and adapter
        rows of one batch see the same prompt."""
        from ..prompts import artifact_prompting

        if name in (None, BASE):
            m = next((e.manifest for e in self.entries.values() if e.manifest), self.base_manifest)
        else:
            self._require(name)
            m = self.entries[name].manifest
        return artifact_prompting(m)

    def prepare(self, prompts: Sequence[str], *, adapters: str | Sequence[str] | None = None,
                mode: str | None = "auto", chat: bool | None = None, system: Any = "auto",
                data_dir: str | os.PathLike | None = None) -> list[Prepared]:
        """The exact text each row's model sees, with its mode and stop strings.

        ``mode``: ``"auto"`` (default) = the row adapter's main training format (``lorasp.json``; ``raw`` for an
        adapter without one), one of the four prompt modes, or ``"raw"``/None (the prompt as given). A mode
        builds the prompt with :func:`lora_spec.prompts.question_prompt`, the function training built its rows
        with (chat template, system message, pre-filled CoT trigger, exemplars), so the adapter continues exactly
        the text it was trained to continue. ``chat``/``system``: default what training used (``raw``: the chat
        template only when the adapter was trained with it)."""
        from ..prompts import check_mode, question_prompt, stop_sequences

        prompts = list(prompts)
        rows = self._rows(prompts, adapters)
        if mode not in (None, "auto", "raw"):
            mode = check_mode(mode)
        out: list[Prepared] = []
        for i, (p, name) in enumerate(zip(prompts, rows)):
            pr = self.prompting(name)
            m = (pr["mode"] or "raw") if mode == "auto" else (mode or "raw")
            c = pr["chat"] if chat is None else chat
            sys_msg = pr["system"] if system == "auto" else system
            if self.student.kind == "seq2seq":
                c = False
            if m == "raw":
                c = bool(c)
                text = p
                if c:
                    if not getattr(self.tokenizer, "chat_template", None):
                        raise ConfigError("--chat: this tokenizer has no chat template")
                    msgs = ([{"role": "system", "content": sys_msg}] if sys_msg else []) + \
                        [{"role": "user", "content": p}]
                    text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                out.append(Prepared(text, name, "raw", c, []))
                continue
            text = question_prompt(p, m, self.tokenizer, chat=c, index=i, n_shots=pr["n_shots"],
                                   dataset=pr["dataset"], data_dir=data_dir, system=sys_msg)
            used_chat = bool(getattr(self.tokenizer, "chat_template", None)) if c is None else bool(c)
            out.append(Prepared(text, name, m, used_chat, stop_sequences(m, used_chat)))
        return out

    def generate(self, prompts: Sequence[str], *, adapters: str | Sequence[str] | None = None,
                 max_new_tokens: int = 64, batch_size: int = 8, stop: Sequence[str] | None = None,
                 chat: bool | None = None, return_ids: bool = False, mode: str | None = "auto",
                 system: Any = "auto", data_dir: str | os.PathLike | None = None) -> list:
        """Greedy completions. ``adapters``: one name for all rows (default: the active one) or one per row
        (``"base"`` for no adapter) -- a mixed-adapter batch. ``mode``/``chat``/``system``: how each prompt is
        turned into the model's input (see :meth:`prepare`; default: as the row's adapter was trained).
        ``stop``: cut completions there (default: the mode's stop strings, none for ``raw``)."""
        prompts = list(prompts)
        rows = self._rows(prompts, adapters)
        prepared = self.prepare(prompts, adapters=rows, mode=mode, chat=chat, system=system, data_dir=data_dir)
        texts = [p.text for p in prepared]
        outs = self._generate(texts, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              return_ids=return_ids)
        if return_ids:
            return outs
        res = []
        for o, p in zip(outs, prepared):
            cut = _cut(o, stop if stop else p.stop)
            res.append(cut.strip() if p.mode != "raw" else cut)
        return res

    def _generate(self, prompts: list[str], rows: list[str], *, max_new_tokens: int, batch_size: int,
                  return_ids: bool) -> list:
        kw = dict(kind=self.student.kind, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=None,
                  chat=False, return_ids=return_ids)
        if not self.entries:
            return greedy_generate(self.model, self.tokenizer, prompts, **kw)
        if len(set(rows)) == 1:
            return self._one(rows[0], lambda: greedy_generate(self.model, self.tokenizer, prompts, **kw))
        if self._mixable(rows):
            return greedy_generate(self.model, self.tokenizer, prompts, adapter_names=self._peft_names(rows), **kw)
        out: list = [None] * len(prompts)
        for name in dict.fromkeys(rows):  # DoRA: peft has no mixed batches; run each group with its adapter
            idx = [i for i, r in enumerate(rows) if r == name]
            sub = [prompts[i] for i in idx]
            res = self._one(name, lambda: greedy_generate(self.model, self.tokenizer, sub, **kw))
            for i, o in zip(idx, res):
                out[i] = o
        return out

    def _one(self, name: str, fn):
        """Run ``fn`` with ``name`` (or the base) active, then restore the active adapter."""
        try:
            if name == BASE:
                with self.model.disable_adapter():
                    return fn()
            self._activate(name)
            return fn()
        finally:
            self._activate(self.active)

    def logits(self, prompts: Sequence[str], *, adapters: str | Sequence[str] | None = None):
        """Logits for every position of the (left-padded) prompts: a ``[batch, seq, vocab]`` tensor."""
        import torch

        prompts = list(prompts)
        rows = self._rows(prompts, adapters)
        enc = _encode(self.tokenizer, prompts, False).to(next(self.model.parameters()).device)
        with torch.inference_mode():
            if not self.entries:
                return self.model(**enc).logits
            if len(set(rows)) == 1:
                return self._one(rows[0], lambda: self.model(**enc).logits)
            if not self._mixable(rows):
                raise ConfigError("mixed-adapter logits are not available for DoRA adapters (peft limitation)")
            return self.model(**enc, adapter_names=self._peft_names(rows)).logits
