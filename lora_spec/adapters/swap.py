"""``AdapterSet``: several adapters on one base model, switching, hot-swap, mixed-adapter batched generation.

Reading, writing and loading one artifact (with the base-fingerprint check) is :mod:`lora_spec.adapters.artifact`;
generation is :func:`lora_spec.generation.generate`, the decoder ``lorasp eval`` uses. Every adapter is checked
against the base's fingerprint before it is loaded (an error naming both bases unless ``ignore_fingerprint=True``);
a plain PEFT adapter directory (no ``lorasp.json``) can be loaded too, unchecked, which is said on stderr.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, List, Literal, Mapping, Optional, Sequence

from pydantic import Field

from ..artifact_files import MANIFEST, read_manifest
from ..config import RunConfig
from ..errors import ConfigError, DataError
from ..generation import chat_wrap, cut_at_stop, generate
from ..precision import PRECISION_HELP, PrecisionName
from ..prompts import artifact_prompting, check_mode, question_prompt, stop_sequences
from ..student import Student, base_fingerprint, load_student, resolve_path
from .artifact import base_spec, check_fingerprint, is_full_model, peft_error, read_adapter, read_adapter_config

BASE = "base"  # the adapter name that means "the base model, no adapter" (peft calls it "__base__")
_PEFT_BASE = "__base__"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


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

        path = resolve_path(base)
        fake = SimpleNamespace(name=base, path=str(path), fingerprint=base_fingerprint(path))
        for name, adapter in items:
            self._check_name(name)
            manifest = read_adapter(adapter)
            if manifest is not None and not is_full_model(manifest):
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
        if is_full_model(manifest):
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
            raise peft_error(path, exc) from None
        self.model.eval()
        if self.student.quant == "none" and self.student.precision != "fp32":
            self.model.to(self.student.model.dtype)  # the adapter in the base's reduced dtype (lora_spec.precision)
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
                raise peft_error(path, exc) from None
        else:  # load under a fresh slot name, then drop the old slot (peft cannot rename adapters)
            self._serial += 1
            new_slot = f"{name}__{self._serial}"
            try:
                self.model.load_adapter(str(path), adapter_name=new_slot)
            except Exception as exc:
                raise peft_error(path, exc) from None
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
                out.append(Prepared(chat_wrap(self.tokenizer, p, chat=c, system=sys_msg), name, "raw", c, []))
                continue
            text = question_prompt(p, m, self.tokenizer, chat=c, index=i, n_shots=pr["n_shots"],
                                   dataset=pr["dataset"], data_dir=data_dir, system=sys_msg)
            used_chat = bool(getattr(self.tokenizer, "chat_template", None)) if c is None else bool(c)
            out.append(Prepared(text, name, m, used_chat, stop_sequences(m, used_chat)))
        return out

    def generate(self, prompts: Sequence[str], *, adapters: str | Sequence[str] | None = None,
                 max_new_tokens: int = 64, batch_size: int = 8, stop: Sequence[str] | None = None,
                 chat: bool | None = None, return_ids: bool = False, mode: str | None = "auto",
                 system: Any = "auto", data_dir: str | os.PathLike | None = None, calculator: bool = False) -> list:
        """Greedy completions. ``adapters``: one name for all rows (default: the active one) or one per row
        (``"base"`` for no adapter) -- a mixed-adapter batch. ``mode``/``chat``/``system``: how each prompt is
        turned into the model's input (see :meth:`prepare`; default: as the row's adapter was trained).
        ``stop``: cut completions there (default: the mode's stop strings, none for ``raw``). ``calculator``: the
        result of each equation is written exactly (:mod:`lora_spec.calculator`)."""
        prompts = list(prompts)
        rows = self._rows(prompts, adapters)
        prepared = self.prepare(prompts, adapters=rows, mode=mode, chat=chat, system=system, data_dir=data_dir)
        texts = [p.text for p in prepared]
        outs = self._generate(texts, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              return_ids=return_ids, calculator=calculator)
        if return_ids:
            return outs
        res = []
        for o, p in zip(outs, prepared):
            cut = cut_at_stop(o, stop if stop else p.stop)
            res.append(cut.strip() if p.mode != "raw" else cut)
        return res

    def _generate(self, prompts: list[str], rows: list[str], *, max_new_tokens: int, batch_size: int,
                  return_ids: bool, calculator: bool = False) -> list:
        # stop strings are cut per row afterwards (rows may differ in mode); texts unstripped (raw mode keeps them);
        # prompts tokenized as in training (generate's default: batching.encode_prompts)
        kw = dict(kind=self.student.kind, max_new_tokens=max_new_tokens, batch_size=batch_size, stop=None,
                  return_ids=return_ids, progress=False, strip=False, calculator=calculator)
        if not self.entries:
            return generate(self.model, self.tokenizer, prompts, **kw)
        if len(set(rows)) == 1:
            return self._one(rows[0], lambda: generate(self.model, self.tokenizer, prompts, **kw))
        if self._mixable(rows):
            return generate(self.model, self.tokenizer, prompts, adapter_names=self._peft_names(rows), **kw)
        out: list = [None] * len(prompts)
        for name in dict.fromkeys(rows):  # DoRA: peft has no mixed batches; run each group with its adapter
            idx = [i for i, r in enumerate(rows) if r == name]
            sub = [prompts[i] for i in idx]
            res = self._one(name, lambda: generate(self.model, self.tokenizer, sub, **kw))
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
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True).to(next(self.model.parameters()).device)
        with torch.inference_mode():
            if not self.entries:
                return self.model(**enc).logits
            if len(set(rows)) == 1:
                return self._one(rows[0], lambda: self.model(**enc).logits)
            if not self._mixable(rows):
                raise ConfigError("mixed-adapter logits are not available for DoRA adapters (peft limitation)")
            return self.model(**enc, adapter_names=self._peft_names(rows)).logits


# --------------------------------------------------------------------------------------------- lorasp generate


class GenerateConfig(RunConfig):
    """``lorasp generate``: its flags (``lora_spec.commands``) and config-file keys."""

    model: Optional[str] = Field(None, description="Base model (preset, directory, Hub id); default: the base of "
                                                   "the first --adapter.")
    adapter: List[str] = Field(default_factory=list, description="NAME=DIR: load the adapter at DIR as NAME.")
    use: List[str] = Field(default_factory=list, description="Adapter to use ('base' for none): once for all "
                                                             "prompts, or once per prompt for a mixed batch.")
    prompt: List[str] = Field(default_factory=list, description="A prompt.")
    prompts_file: Optional[str] = Field(None, description="A file with one prompt per line (or JSONL with a "
                                                          "'prompt' and optional 'adapter' field).")
    quant: Literal["auto", "nf4", "int8", "none"] = Field(
        "auto", description="Quantize the base; auto = what the first adapter was trained against.")
    precision: PrecisionName = Field("auto", description=PRECISION_HELP)
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Greedy tokens per prompt.")
    batch_size: int = Field(8, ge=1, le=1024, description="Prompts per forward batch.")
    mode: Literal["auto", "zs_cot", "icl_cot", "zs_answer", "icl_answer", "raw"] = Field(
        "auto", description="How a prompt (a question) becomes the model's input: auto = as the adapter was "
                            "trained (its main format in lorasp.json; raw without one); zs_cot/icl_cot/zs_answer/"
                            "icl_answer = the training prompt of that format (chat template, system message, "
                            "'Let's think step by step' pre-filled in the answer); raw = the text as given.")
    chat: Optional[bool] = Field(None, description="Use the tokenizer's chat template; default: what the adapter "
                                                   "was trained with (lorasp.json).")
    stop: List[str] = Field(default_factory=list, description="Cut a completion at this string (default: the "
                                                              "mode's stop strings; none for raw).")
    data_dir: Optional[str] = Field(None, description="Data directory for the exemplars of the icl_* modes "
                                                      "(default: $LORASP_DATA_DIR).")
    ignore_fingerprint: bool = Field(False, description="Load adapters even onto a base with another fingerprint.")
    calculator: bool = Field(False, description="Write the result of each equation a completion writes "
                                                "('48 / 2 =') exactly instead of letting the model guess it "
                                                "(lora_spec.calculator).")

