"""``lorasp merge``: fold an adapter into its base and write a full model that ``AutoModel*.from_pretrained`` loads.

Base weights to merge into (``base=``):

- ``original``: the full-precision base weights.
- ``dequantized``: the round-trip of the base weights through the quantization the adapter was trained against
  (NF4 or int8, as bitsandbytes stores them, double-quantized absmax included). That is the weight a QLoRA adapter
  was actually trained on top of, so the merged model reproduces the quantized base+adapter more closely than a
  merge into the original weights. The quantized weights are taken from a real bitsandbytes load of the base and
  de-quantized with ``bitsandbytes.functional``.
- ``quantized``: merge into the still-quantized model and re-quantize (peft's ``merge_and_unload`` on a
  bitsandbytes model). This rounds the adapter's update onto the quantization grid and loses part of it, so it is
  refused unless ``force_quantized=True`` (``--force-quantized``), and then warned about.
- ``auto`` (default): ``dequantized`` for an adapter trained on a quantized base, else ``original``.

After the merge the written model is loaded back from disk and compared with base+adapter (same base weights, same
dtype) on a few prompts: the maximum absolute logit difference over prompt and greedy continuation, and whether the
greedy continuations are identical. ``safe=True`` refuses NaN/inf (peft's safe merge plus a check of every tensor).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from pydantic import Field

from ..artifact_files import atomic_dir
from ..config import RunConfig
from ..errors import ConfigError, ModelError, one_line
from ..generation import generate
from ..outputs import claim_output
from ..precision import PrecisionName, resolve_precision
from ..prompts import artifact_prompting, chat_template_with_system
from ..student import load_student
from .artifact import adapter_digest, base_spec, finish_artifact, precheck_base, read_adapter, read_adapter_config, warn

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BASES = ("auto", "original", "dequantized", "quantized")
PARITY_PROMPTS = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?\nAnswer: Let's think step by step.",
    "Question: A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it "
    "take?\nAnswer:",
    "Q: What is 17 + 25?\nA:",
    "The capital of France is",
)


@dataclasses.dataclass
class ParityRow:
    prompt: str
    max_logit_diff: float
    greedy_equal: bool
    reference: str
    merged: str


@dataclasses.dataclass
class MergeReport:
    out: str
    base_mode: str
    dtype: str
    max_logit_diff: float
    greedy_equal: int
    n_prompts: int
    rows: list[ParityRow]
    # merged vs the real bitsandbytes base+adapter on the prompts; on CPU this includes bitsandbytes' own
    # reduced-precision 4-bit matmul (about bf16 rounding), not only the weight difference
    max_logit_diff_vs_quantized: float | None = None
    adapter_effect: float = 0.0  # max logit difference between base+adapter and the bare base
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rows"] = [dataclasses.asdict(r) for r in self.rows]
        return d


def _torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ConfigError(f"--dtype: {name!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[name])


def _auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM


def dequantized_weights(quant_model) -> dict[str, Any]:
    """``{module name: fp32 weight}`` for every bitsandbytes-quantized Linear of a loaded model."""
    import bitsandbytes as bnb
    import torch

    out = {}
    for name, mod in quant_model.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            w = mod.weight
            out[name] = bnb.functional.dequantize_4bit(w.data, w.quant_state).to(torch.float32).cpu()
        elif isinstance(mod, bnb.nn.Linear8bitLt):
            w = mod.weight
            if getattr(w, "SCB", None) is None:
                raise ModelError(f"{name}: int8 weight has no scale statistics (SCB); cannot de-quantize it")
            out[name] = (w.data.to(torch.float32) * w.SCB.to(torch.float32)[:, None] / 127.0).cpu()
    return out


def _save_tokenizer(tok, directory, manifest: dict[str, Any] | None) -> None:
    """Save the tokenizer; for an adapter trained with the chat template, that template with training's system
    message as the default one, so the merged model, prompted through ``apply_chat_template`` by anyone, sees the
    system message it was trained under rather than the base template's own default."""

    pr = artifact_prompting(manifest)
    original = getattr(tok, "chat_template", None)
    if pr["chat"] and isinstance(original, str) and pr["system"]:
        tok.chat_template = chat_template_with_system(original, pr["system"])
    try:
        tok.save_pretrained(str(directory))
    finally:
        if pr["chat"] and isinstance(original, str):
            tok.chat_template = original


def _logits_over(model, tokenizer, kind: str, prompt: str, continuation_ids: list[int]):
    """Logits (fp32) of ``model`` over prompt + continuation (teacher-forced), one row."""
    import torch

    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    with torch.inference_mode():
        if kind == "seq2seq":
            start = model.config.decoder_start_token_id
            dec = torch.tensor([[start] + continuation_ids], device=device)
            return model(input_ids=ids, decoder_input_ids=dec).logits[0].float()
        full = torch.cat([ids, torch.tensor([continuation_ids], dtype=ids.dtype, device=device)], dim=1) \
            if continuation_ids else ids
        return model(input_ids=full).logits[0].float()


def _greedy_ids(model, tokenizer, kind: str, prompt: str, max_new_tokens: int) -> list[int]:
    """The greedy continuation of ``prompt`` (ids up to EOS), tokenized as :func:`_logits_over` tokenizes it."""
    return generate(model, tokenizer, [prompt], kind=kind, max_new_tokens=max_new_tokens, return_ids=True,
                    add_special_tokens=True, progress=False)[0]


def _reference(model, tokenizer, kind: str, prompts: Sequence[str], max_new_tokens: int):
    """Greedy continuation ids and teacher-forced logits of the reference (base+adapter) for each prompt."""
    refs = []
    for p in prompts:
        ids = _greedy_ids(model, tokenizer, kind, p, max_new_tokens)
        refs.append((ids, _logits_over(model, tokenizer, kind, p, ids)))
    return refs


def _adapter_effect(peft_model, tokenizer, kind: str, prompts: Sequence[str], refs) -> float:
    """Max logit difference between base+adapter and the bare base: the scale against which parity is judged."""
    with peft_model.disable_adapter():
        return max(float((_logits_over(peft_model, tokenizer, kind, p, ids) - lg).abs().max())
                   for p, (ids, lg) in zip(prompts, refs))


def _compare(model, tokenizer, kind: str, prompts: Sequence[str], refs, max_new_tokens: int) -> list[ParityRow]:
    rows = []
    for p, (ref_ids, ref_logits) in zip(prompts, refs):
        ids = _greedy_ids(model, tokenizer, kind, p, max_new_tokens)
        logits = _logits_over(model, tokenizer, kind, p, ref_ids)
        diff = float((logits - ref_logits).abs().max())
        rows.append(ParityRow(prompt=p, max_logit_diff=diff, greedy_equal=ids == ref_ids,
                              reference=tokenizer.decode(ref_ids, skip_special_tokens=True),
                              merged=tokenizer.decode(ids, skip_special_tokens=True)))
    return rows


def _nonfinite_adapter_tensor(adapter) -> str | None:
    import torch
    from safetensors import safe_open

    f = Path(adapter) / "adapter_model.safetensors"
    if not f.exists():
        return None
    with safe_open(str(f), "pt") as fh:
        for k in fh.keys():
            t = fh.get_tensor(k)
            if torch.is_floating_point(t) and not torch.isfinite(t).all():
                return k
    return None


def _all_finite(model) -> str | None:
    import torch

    for name, p in model.state_dict().items():
        if torch.is_floating_point(p) and not torch.isfinite(p).all():
            return name
    return None


def _merge_mode(base: str, quant: str, dtype: str, force_quantized: bool) -> str:
    """The base weights to merge into (``--base``, ``auto`` resolved), or a one-line error for a bad combination."""
    if base not in BASES:
        raise ConfigError(f"--base: {base!r} is not one of {', '.join(BASES)}")
    mode = base
    if mode == "auto":
        mode = "quantized" if force_quantized else ("dequantized" if quant in ("nf4", "int8") else "original")
    if mode == "quantized" and not force_quantized:
        raise ConfigError("--base quantized re-quantizes the merged weights and rounds away part of the adapter's "
                          "update; pass --force-quantized to do it anyway (or use --base dequantized)")
    if mode in ("dequantized", "quantized") and quant not in ("nf4", "int8"):
        raise ConfigError(f"--base {mode}: the adapter was trained on an unquantized base (quant={quant!r}); "
                          f"use --base original")
    if mode == "quantized" and dtype != "fp32":
        raise ConfigError("--base quantized writes a bitsandbytes model; --dtype does not apply (leave it fp32)")
    return mode


def _merge_base(spec: str, adapter, quant: str, mode: str, tdtype, prompts: Sequence[str], log, qdtype=None):
    """Step 1: the student whose weights the adapter is merged into, in the target dtype, and (for an adapter
    trained on a quantized base) the prompt logits of the real bitsandbytes base+adapter, which training saw."""
    import torch
    from peft import PeftModel

    if mode == "quantized":
        warn(f"merging into the {quant}-quantized base re-quantizes every adapted weight: the adapter's update is "
             f"rounded onto the {quant} grid and part of it is lost (--force-quantized)")
        return load_student(spec, quant), None
    student = load_student(spec, "none", dtype=torch.float32)
    qrefs = None
    if quant in ("nf4", "int8"):
        # the compute dtype the adapter was trained with (lora_spec.precision; fp32 unless recorded otherwise)
        qstudent = load_student(spec, quant, dtype=qdtype or torch.float32)
        deq = dequantized_weights(qstudent.model) if mode == "dequantized" else {}
        if mode == "dequantized" and not deq:
            raise ModelError(f"{spec}: no bitsandbytes-quantized layers found after loading with quant={quant}")
        qpeft = PeftModel.from_pretrained(qstudent.model, str(adapter)).eval()
        # prompt logits only: bitsandbytes' 4-bit generation on CPU is slow, and one forward per prompt suffices
        qrefs = [_logits_over(qpeft, student.tokenizer, student.kind, p, []) for p in prompts]
        del qpeft, qstudent
        if mode == "dequantized":
            log(f"merging into the de-quantized {quant} round-trip of the base weights")
            mods = dict(student.model.named_modules())
            with torch.no_grad():
                for name, w in deq.items():
                    mods[name].weight.data.copy_(w.to(mods[name].weight.dtype))
    student.model.to(tdtype)
    return student, qrefs


def _reference_precision(precision: str, manifest: dict | None):
    """The precision of the quantized reference: ``auto`` = what the adapter trained in (its ``lorasp.json``),
    fp32 for an adapter that records none (trained before precisions were recorded: fp32 on CPU)."""

    if precision == "auto":
        precision = ((manifest or {}).get("precision") or {}).get("used") or "fp32"
    return resolve_precision(precision)


def _merged_manifest(manifest: dict | None, spec: str, student, adapter, cfg: dict, mode: str, quant: str,
                     safe: bool, report: MergeReport) -> dict[str, Any]:
    """The merged artifact's ``lorasp.json``: its base, the merge and its parity, the parent adapter, and the
    adapter's training facts (formats, prompting, selection...) carried over."""
    m = {"kind": "merged",
         "base": dict((manifest or {}).get("base") or {"name": spec, "path": student.path, "kind": student.kind,
                                                      "fingerprint": student.fingerprint}),
         "quant": quant if mode == "quantized" else "none",
         "method": (manifest or {}).get("method", "lora"),
         "merge": {"base": mode, "dtype": report.dtype, "safe": safe, "trained_quant": quant,
                   "parity": {k: v for k, v in report.as_dict().items() if k not in ("out", "rows")}},
         "parents": [{"path": str(Path(adapter).resolve()), "digest": adapter_digest(adapter), "weight": 1.0,
                      "r": cfg.get("r"), "lora_alpha": cfg.get("lora_alpha")}]}
    for k in ("formats", "loss", "data", "selection", "checkpoints", "chat", "before_after", "prompting", "n_shots"):
        if manifest and k in manifest:
            m[k] = manifest[k]
    return m


def merge(adapter: str | os.PathLike, out: str | os.PathLike, *, base: str = "auto", dtype: str = "fp32",
          safe: bool = False, force_quantized: bool = False, model: str | None = None,
          ignore_fingerprint: bool = False, prompts: Sequence[str] | None = None, max_new_tokens: int = 16,
          log: Callable[[str], None] | None = None, overwrite: bool = False,
          precision: str = "auto") -> MergeReport:
    """:func:`_merge` under the output's lock (``lora_spec.outputs.claim_output``): one writer per ``--out``."""

    with claim_output(out, "merge", overwrite=overwrite, inputs=[("ADAPTER", adapter), ("--model", model)]) as res:
        return _merge(adapter, res, base=base, dtype=dtype, safe=safe, force_quantized=force_quantized, model=model,
                      ignore_fingerprint=ignore_fingerprint, prompts=prompts, max_new_tokens=max_new_tokens, log=log,
                      overwrite=overwrite, precision=precision)


def _merge(adapter: str | os.PathLike, out: str | os.PathLike, *, base: str = "auto", dtype: str = "fp32",
           safe: bool = False, force_quantized: bool = False, model: str | None = None,
           ignore_fingerprint: bool = False, prompts: Sequence[str] | None = None, max_new_tokens: int = 16,
           log: Callable[[str], None] | None = None, overwrite: bool = False,
           precision: str = "auto") -> MergeReport:
    """Merge ``adapter`` into its base and write the full model (safetensors + config + tokenizer) to ``out``.

    ``model`` overrides the base recorded in the adapter's manifest (fingerprint-checked). Returns the parity
    report (also recorded in the merged artifact's ``lorasp.json``). The steps run in order, each freeing what the
    previous one held: checks (before any weights load), the base weights, base+adapter as the reference, the
    merge, then write, reload from disk and compare.

    Over 80 lines: the steps are one sequence that must drop each model before the next loads (``del merged,
    peft_model`` inside the output's atomic directory); split into functions, a caller would hold them all.
    """
    import torch
    from peft import PeftModel

    t0 = time.time()
    log = log or (lambda s: None)
    # checks (before anything is loaded: never into a file, a foreign directory or the adapter itself) and the
    # output's lock were taken by merge()
    tdtype = _torch_dtype(dtype)
    manifest = read_adapter(adapter)
    if manifest and manifest.get("kind") in ("full", "merged"):
        raise ConfigError(f"{adapter}: a {manifest.get('kind')} model has no adapter to merge")
    cfg = read_adapter_config(adapter)
    quant = (manifest or {}).get("quant") or "none"
    mode = _merge_mode(base, quant, dtype, force_quantized)
    spec = model or base_spec(manifest, adapter)
    prompts = list(prompts or PARITY_PROMPTS)
    precheck_base(manifest, spec, adapter, ignore=ignore_fingerprint)
    if safe:
        bad = _nonfinite_adapter_tensor(adapter)
        if bad:
            raise ModelError(f"{adapter}: adapter tensor {bad} holds NaN or inf; refusing to merge (--safe)")

    # 1. the base weights to merge into
    student, qrefs = _merge_base(spec, adapter, quant, mode, tdtype, prompts, log,
                                 qdtype=_reference_precision(precision, manifest).dtype)
    tok, kind = student.tokenizer, student.kind

    # 2. base + adapter (the reference), then the merge
    try:
        peft_model = PeftModel.from_pretrained(student.model, str(adapter)).eval()
    except Exception as exc:
        raise ModelError(f"{adapter}: cannot load the adapter onto {spec} ({type(exc).__name__}: "
                         f"{one_line(exc)[:300]})") from None
    log(f"reference: base ({mode}, {dtype if mode != 'quantized' else quant}) + adapter on {len(prompts)} prompts")
    refs = _reference(peft_model, tok, kind, prompts, max_new_tokens)
    effect = _adapter_effect(peft_model, tok, kind, prompts, refs)
    try:
        merged = peft_model.merge_and_unload(safe_merge=safe)
    except ValueError as exc:
        raise ModelError(f"{adapter}: merge refused: {one_line(exc)[:300]} (--safe)") from None
    if safe:
        bad = _all_finite(merged)
        if bad:
            raise ModelError(f"{adapter}: merged weight {bad} holds NaN or inf (--safe)")

    # 3. write, reload from disk, compare
    out = Path(out)
    with atomic_dir(out, replace=("merged",)) as tmp:
        if mode != "quantized":
            merged.config.dtype = tdtype
        merged.save_pretrained(str(tmp))
        _save_tokenizer(tok, tmp, manifest)
        del merged, peft_model
        reload_kw: dict[str, Any] = {"dtype": tdtype}
        if mode == "quantized":
            reload_kw = {"device_map": {"": "cpu" if not torch.cuda.is_available() else "cuda"}}
        try:
            loaded = _auto_class(kind).from_pretrained(str(tmp), **reload_kw).eval()
        except Exception as exc:
            raise ModelError(f"the merged model does not load back with from_pretrained ({type(exc).__name__}: "
                             f"{one_line(exc)[:300]})") from None
        rows = _compare(loaded, tok, kind, prompts, refs, max_new_tokens)
        vs_quant = None
        if qrefs is not None:
            vs_quant = max(float((_logits_over(loaded, tok, kind, p, []) - q).abs().max())
                           for p, q in zip(prompts, qrefs))
        report = MergeReport(out=str(out), base_mode=mode, dtype=dtype if mode != "quantized" else quant,
                             max_logit_diff=max(r.max_logit_diff for r in rows),
                             greedy_equal=sum(r.greedy_equal for r in rows), n_prompts=len(rows), rows=rows,
                             max_logit_diff_vs_quantized=vs_quant, adapter_effect=effect,
                             seconds=round(time.time() - t0, 2))
        finish_artifact(tmp, _merged_manifest(manifest, spec, student, adapter, cfg, mode, quant, safe, report),
                        out.name, card_extra=(
            f"\n## Merge\n\n`{adapter}` merged into the {mode} weights of `{spec}` ({report.dtype}). Parity against "
            f"base+adapter on {len(rows)} prompts: max logit difference {report.max_logit_diff:.3g}, identical "
            f"greedy continuations {report.greedy_equal}/{len(rows)}.\n"))
    return report


# --------------------------------------------------------------------------------------------- lorasp merge


class MergeConfig(RunConfig):
    """``lorasp merge``: its flags (``lora_spec.commands``) and config-file keys."""

    out: str = Field(description="Directory to write the merged model to (safetensors + config + tokenizer).")
    base: Literal["auto", "original", "dequantized", "quantized"] = Field(
        "auto", description="Base weights to merge into: original (full precision), dequantized (the NF4/int8 "
                            "round-trip the adapter was trained against), quantized (re-quantize; needs "
                            "--force-quantized); auto = dequantized for a quantized-trained adapter, else original.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Dtype of the merged weights.")
    precision: PrecisionName = Field("auto", description="Compute precision of the quantized base+adapter "
                                     "reference of the parity check: auto = the precision the adapter was trained "
                                     "in (lorasp.json), else fp32; or fp32, bf16, fp16.")
    safe: bool = Field(False, description="Refuse NaN/inf in the merged weights.")
    force_quantized: bool = Field(False, description="Allow merging into the still-quantized model (rounds the "
                                                     "adapter's update onto the quantization grid).")
    model: Optional[str] = Field(None, description="Base model (preset, directory, Hub id); default: the one "
                                                   "recorded in the adapter's lorasp.json.")
    ignore_fingerprint: bool = Field(False, description="Merge even if the base's fingerprint differs from the "
                                                        "adapter's.")
    max_new_tokens: int = Field(16, ge=1, le=512, description="Greedy tokens per parity prompt.")
    overwrite: bool = Field(False, description="Replace an earlier merged model at --out (only a lorasp merged "
                                               "model; removed once the new one is complete).")

