"""``lorasp combine``: a weighted combination of LoRA adapters trained on the same base, through peft's
``add_weighted_adapter``.

- ``cat``: concatenates the (weighted) low-rank factors; the result has rank sum(r) and its update is exactly
  ``sum_i w_i * delta_i``.
- ``svd``: the exact weighted sum ``sum_i w_i * delta_i``, re-factored by SVD to rank ``svd_rank`` (default: the
  largest parent rank); exact when ``svd_rank`` reaches the rank of the sum, a best low-rank approximation
  otherwise.
- ``linear``: weights the A and B factors separately (peft's ``linear``); needs equal ranks; cheap but only an
  approximation of the weighted sum, as peft documents.

The parents must share one base (their fingerprints are compared). The combined artifact's manifest records the
parents (path, digest, weight), the method and the resulting rank.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

from pydantic import Field

from ..artifact_files import read_manifest
from ..config import RunConfig
from ..errors import ConfigError, ModelError, one_line
from ..outputs import claim_output
from ..student import load_student
from .artifact import (adapter_digest, base_info, base_spec, precheck_base, read_adapter, read_adapter_config,
                       save_adapter)

HOWS = ("linear", "cat", "svd")


def parse_weights(text: str | Sequence[float] | None, n: int) -> list[float]:
    if text is None or text == "":
        return [1.0 / n] * n
    if isinstance(text, str):
        try:
            ws = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--weights: {text!r} is not a comma-separated list of numbers") from None
    else:
        ws = [float(x) for x in text]
    if len(ws) != n:
        raise ConfigError(f"--weights: {len(ws)} weights for {n} adapters")
    return ws


def combine(adapters: Sequence[str | os.PathLike], out: str | os.PathLike, *, weights=None, how: str = "cat",
            svd_rank: int | None = None, model: str | None = None, quant: str | None = None,
            ignore_fingerprint: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Combine ``adapters`` with ``weights`` into one adapter at ``out``; returns its manifest."""

    # before anything is loaded: never into a file, a foreign directory, a parent or a folder holding one; one
    # writer per output (the lock is held until the combined adapter is in place)
    with claim_output(out, "combine", overwrite=overwrite, inputs=[("ADAPTER", a) for a in adapters]
                      + [("--model", model)]) as res:
        return _combine(adapters, res, weights=weights, how=how, svd_rank=svd_rank, model=model, quant=quant,
                        ignore_fingerprint=ignore_fingerprint)


def _combine(adapters: Sequence[str | os.PathLike], out: str | os.PathLike, *, weights=None, how: str = "cat",
             svd_rank: int | None = None, model: str | None = None, quant: str | None = None,
             ignore_fingerprint: bool = False) -> dict[str, Any]:
    if len(adapters) < 2:
        raise ConfigError("combine needs at least two adapters")
    if how not in HOWS:
        raise ConfigError(f"--how: {how!r} is not one of {', '.join(HOWS)}")
    ws = parse_weights(weights, len(adapters))
    from peft import PeftModel

    manifests = [read_adapter(a) for a in adapters]
    configs = [read_adapter_config(a) for a in adapters]
    for a, m in zip(adapters, manifests):
        if m and m.get("kind") in ("full", "merged"):
            raise ConfigError(f"{a}: a {m.get('kind')} model is not an adapter")
    for a, c in zip(adapters, configs):
        if c.get("peft_type", "LORA") != "LORA":
            raise ConfigError(f"{a}: peft_type {c.get('peft_type')!r}; only LoRA adapters can be combined")
        if c.get("use_dora"):
            raise ConfigError(f"{a}: a DoRA adapter; peft cannot combine DoRA adapters (merge them instead)")
    if how == "linear" and len({c.get("r") for c in configs}) > 1:
        raise ConfigError(f"--how linear needs equal ranks, got r={[c.get('r') for c in configs]}; "
                          f"use --how cat or --how svd")
    quants = {(m or {}).get("quant", "none") for m in manifests}
    q = quant or (manifests[0] or {}).get("quant") or "none"
    spec = model or base_spec(manifests[0], adapters[0])
    for a, m in zip(adapters, manifests):  # every parent on the same base, checked before loading weights
        precheck_base(m, spec, a, ignore=ignore_fingerprint)
    student = load_student(spec, q)
    names = [f"p{i}" for i in range(len(adapters))]
    try:
        pm = PeftModel.from_pretrained(student.model, str(adapters[0]), adapter_name=names[0])
        for n, a in zip(names[1:], adapters[1:]):
            pm.load_adapter(str(a), adapter_name=n)
        pm.add_weighted_adapter(names, ws, "default", combination_type=how, svd_rank=svd_rank)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ModelError(f"combine ({how}) failed: {type(exc).__name__}: {one_line(exc)[:300]}") from None
    new_cfg = pm.peft_config["default"]
    m0 = manifests[0] or {}
    manifest: dict[str, Any] = {
        "kind": "combined",
        "base": dict(m0.get("base") or base_info(student)),
        "quant": q if len(quants) == 1 else q,
        "method": "lora",
        "peft": {"r": new_cfg.r, "alpha": new_cfg.lora_alpha, "targets": sorted(map(str, new_cfg.target_modules))
                 if not isinstance(new_cfg.target_modules, str) else new_cfg.target_modules},
        "combination": {"how": how, "weights": ws, "svd_rank": svd_rank},
        "parents": [{"path": str(Path(a).resolve()), "digest": adapter_digest(a), "weight": w,
                     "r": c.get("r"), "lora_alpha": c.get("lora_alpha"),
                     "method": (m or {}).get("method"), "data": ((m or {}).get("data") or {}).get("source")}
                    for a, m, c, w in zip(adapters, manifests, configs, ws)],
    }
    if len(quants) > 1:
        manifest["note"] = f"parents were trained against different quantizations: {sorted(quants)}"
    save_adapter(pm, out, manifest, adapter_name="default")

    return read_manifest(out)


# --------------------------------------------------------------------------------------------- lorasp combine


class CombineConfig(RunConfig):
    """``lorasp combine``: its flags (``lora_spec.commands``) and config-file keys."""

    out: str = Field(description="Directory to write the combined adapter to.")
    weights: Optional[str] = Field(None, description="Comma-separated weights, one per adapter (default: equal).")
    how: Literal["linear", "cat", "svd"] = Field(
        "cat", description="cat: exact weighted sum, rank = sum of ranks; svd: exact sum re-factored to "
                           "--svd-rank; linear: weights the factors (equal ranks; an approximation).")
    svd_rank: Optional[int] = Field(None, ge=1, description="Rank of an svd combination (default: largest parent).")
    model: Optional[str] = Field(None, description="Base model; default: the first adapter's recorded base.")
    ignore_fingerprint: bool = Field(False, description="Combine even if a parent's base fingerprint differs.")
    overwrite: bool = Field(False, description="Replace an earlier combined adapter at --out (only a lorasp "
                                               "combined adapter; removed once the new one is complete).")

