"""Turn a loaded student into a trainable model: LoRA / DoRA through peft, or full fine-tuning.

- Quantized (bitsandbytes nf4/int8) students go through ``prepare_model_for_kbit_training`` first (freezes the
  base, upcasts norms to fp32, makes input embeddings' outputs require grad for gradient checkpointing).
- ``targets="all-linear"`` is peft's own resolution (every linear layer except the output head).
- T5-family students keep their feed-forward output projection ``wo`` in fp32 (the known fp16/bf16/int8
  overflow in T5's last FFN layer); transformers already lists it in ``_keep_in_fp32_modules`` and we enforce it
  for any dtype the user chose.
- ``method="full"`` trains every weight and refuses a quantized student with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

METHODS = ("lora", "dora", "full")


@dataclass
class MethodSpec:
    method: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] | str = "all-linear"
    gradient_checkpointing: bool = False

    def peft_params(self) -> dict[str, Any]:
        if self.method == "full":
            return {}
        return {"r": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": self.targets, "use_dora": self.method == "dora"}


def parse_targets(targets: str | list[str] | None) -> str | list[str]:
    """``"all-linear"`` (default), or a comma-separated / list of module-name suffixes (``q_proj,v_proj``)."""
    if targets is None or targets == "" or targets == "all-linear" or targets == ["all-linear"]:
        return "all-linear"
    if isinstance(targets, str):
        items = [t.strip() for t in targets.split(",") if t.strip()]
    else:
        items = [t.strip() for x in targets for t in str(x).split(",") if t.strip()]
    if not items:
        raise ConfigError("--targets: expected 'all-linear' or a comma-separated list of module names")
    return items


def keep_t5_wo_fp32(model) -> list[str]:
    """Cast every T5-style ``wo`` linear (not quantized) to fp32; returns the module names cast."""
    import torch

    names = []
    for name, mod in model.named_modules():
        if name.endswith(".wo") and isinstance(mod, torch.nn.Linear) and type(mod) is torch.nn.Linear:
            if mod.weight.dtype != torch.float32:
                mod.float()
            names.append(name)
    return names


def _check_targets_exist(model, targets: list[str]) -> None:
    import torch

    linear_names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                    or m.__class__.__name__ in ("Linear4bit", "Linear8bitLt")}
    missing = [t for t in targets if t not in linear_names and not any(n.endswith(t) for n in linear_names)]
    if missing:
        raise ConfigError(f"--targets: no linear module named {missing[0]!r} in this student "
                          f"(linear modules: {', '.join(sorted(linear_names))})")


def apply_method(student, spec: MethodSpec):
    """Return a trainable model for ``student`` (a ``lora_spec.student.Student``) according to ``spec``."""
    import torch

    model = student.model
    if spec.method not in METHODS:
        raise ConfigError(f"--method: expected one of {', '.join(METHODS)}, got {spec.method!r}")
    if student.kind == "seq2seq":
        keep_t5_wo_fp32(model)
    if spec.method == "full":
        if student.quant != "none":
            raise ConfigError(f"--method full trains every weight and cannot train a {student.quant}-quantized "
                              "student; use --quant none (or --method lora/dora for QLoRA)")
        for p in model.parameters():
            p.requires_grad_(True)
        if spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return model

    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if student.quant != "none":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    if spec.gradient_checkpointing:
        model.config.use_cache = False
    targets = parse_targets(spec.targets)
    if isinstance(targets, list):
        _check_targets_exist(model, targets)
    if spec.rank < 1:
        raise ConfigError(f"--rank: must be >= 1, got {spec.rank}")
    cfg = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
        use_dora=spec.method == "dora", bias="none",
        task_type=TaskType.SEQ_2_SEQ_LM if student.kind == "seq2seq" else TaskType.CAUSAL_LM)
    try:
        model = get_peft_model(model, cfg)
    except ValueError as exc:
        raise ConfigError(f"peft could not apply {spec.method} to {student.name}: {' '.join(str(exc).split())[:300]}") \
            from None
    # LoRA weights train in fp32 even when the base computes in bf16 (stable optimizer state).
    for n, p in model.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def trainable_state_dict(model) -> dict:
    """The trainable weights only (adapter weights for peft, everything for full FT), detached on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def count_params(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": train, "total": total}


__all__ = ["METHODS", "MethodSpec", "apply_method", "parse_targets", "keep_t5_wo_fp32", "trainable_state_dict",
           "count_params"]
