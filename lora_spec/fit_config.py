"""``FitConfig``, the one settings object of ``lorasp fit`` (flags, YAML, the Python API), from the command line to
the training loop (``trainer.TrainArgs.of``), and the defaults that depend on other fields (``resolve_defaults``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from .config import FIRST_MEANS, RunConfig
from .errors import ConfigError
from .precision import PRECISION_HELP, PrecisionName
from .selection import SelectionOptions, as_rule

QUICKSTART_PROBLEMS = 512
QUICKSTART_HELD_OUT = 50  # arith test problems scored before and after on the quickstart


class FitConfig(RunConfig, SelectionOptions):
    """``lorasp fit``: tune a student on teacher chain-of-thought with the four-format mixture."""

    renamed: ClassVar[dict[str, tuple[str, str]]] = {
        "limit": ("first", FIRST_MEANS),
        "compute_dtype": ("precision", "auto now picks bf16 on a CPU with native bf16 matrix units too, and the "
                                       "choice is recorded in lorasp.json")}

    student: str = Field("smollm2-135m", description="Student: preset (lorasp models), local directory or Hub id.")
    data: str | None = Field(None, description="Teach run directory (lorasp teach --out DIR) to train on.")
    dataset: str | None = Field(None, description="Dataset plugin to teach in-process when --data is not given "
                                                  "(default: arith, the embedded quickstart).")
    dataset_opt: list[str] = Field(default_factory=list, description="Dataset plugin parameter KEY=VALUE.")
    split: str = Field("train", description="Split to train on (with --dataset).")
    teacher: str = Field("gold", description="Teacher plugin for --dataset (gold: the reference rationales).")
    teacher_opt: list[str] = Field(default_factory=list, description="Teacher plugin parameter KEY=VALUE.")
    samples: int = Field(1, ge=1, le=64, description="Teacher samples per problem (with --dataset).")
    first: int | None = Field(None, ge=1, description="Train on the first N problems of the split (or of --data's "
                                                      f"run), in file order (quickstart default: {QUICKSTART_PROBLEMS}).")
    data_dir: str | None = Field(None, description="Data directory (default: $LORASP_DATA_DIR).")
    quant: Literal["nf4", "int8", "none"] = Field("none", description="Quantize the frozen base (bitsandbytes).")
    double_quant: bool = Field(True, description="nf4 double quantization.")
    precision: PrecisionName = Field("auto", description=PRECISION_HELP)
    method: Literal["lora", "dora", "full"] = Field("lora", description="lora, dora, or full fine-tuning.")
    rank: int = Field(16, ge=1, le=4096, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    targets: str = Field("all-linear", description="LoRA target modules: all-linear or e.g. q_proj,v_proj.")
    formats: str = Field("zero_shot_cot=8,in_context_cot=1,zero_shot_answer=1",
                         description="Format mixture weights, e.g. in_context_cot=4,zero_shot_cot=2,"
                                     "in_context_answer=1,zero_shot_answer=1.")
    n_shots: int = Field(2, ge=1, le=16, description="Exemplars in the in-context formats.")
    chat: bool | None = Field(None, description="Use the tokenizer's chat template (default: when it has one).")
    loss: str = Field("sample", description="sample | distribution | mix:ALPHA (ALPHA = weight of the "
                      "distribution loss; distribution needs a teach run with --top-logprobs).")
    loss_temperature: float = Field(1.0, gt=0, description="Distribution matching: softmax temperature of the KL.")
    loss_renormalize: bool = Field(False, description="Distribution matching: renormalise the teacher's top-k "
                                   "to sum to 1 (default: its missing mass is one 'other' bucket).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows.")
    max_steps: int | None = Field(None, ge=1, description="Stop after N optimizer steps (overrides --epochs).")
    lr: float | None = Field(None, gt=0, description="Peak learning rate (default: 1e-3 lora/dora, 2e-5 full).")
    batch_size: int = Field(8, ge=1, le=65536, description="Examples per device per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    max_length: int = Field(512, ge=8, le=131072, description="Longest training row in tokens.")
    warmup: float = Field(0.05, ge=0, description="Warmup: a fraction of the steps (< 1) or a number of steps.")
    schedule: Literal["cosine", "constant", "linear"] = Field("cosine", description="Learning-rate schedule.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: off).")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    micro_batch_tokens: int = Field(512, ge=0, le=16_777_216,
                                    description="Padded tokens per forward/backward pass: a batch runs in passes "
                                                "of at most this many tokens (same update, less memory; "
                                                "0: the whole batch in one pass).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice; 1 is much "
                                                        "faster on an oversubscribed CPU).")
    group_by_length: bool = Field(True, description="Batch rows of similar length together.")
    seed: int = Field(0, description="Seed of the data order, the formats, exemplars and the adapter init.")
    save_every: int = Field(50, ge=0, description="Write a checkpoint every N steps (0: only evaluations and end).")
    resume: bool = Field(False, description="Continue from the last checkpoint in <out>.checkpoints.")
    out: str | None = Field(None, description="Artifact directory (default: adapters/<dataset>-<method>).")
    before_after: int | None = Field(None, ge=0, description="Held-out test problems of the training dataset "
                                                             "scored before and after (0: off; quickstart: 50).")
    tracker: str = Field("auto", description="accelerate tracker: auto (tensorboard if installed), none, ...")
    progress: bool = Field(True, description="Progress bars on a terminal.")
    overwrite: bool = Field(False, description="Replace an earlier fit's artifact at --out (only a lorasp "
                                               "adapter/full artifact; removed once the new one is complete).")

    def resolved(self) -> "FitConfig":
        return resolve_defaults(self)


def is_quickstart(cfg: FitConfig) -> bool:
    return cfg.data is None and cfg.dataset is None


def resolve_defaults(cfg: FitConfig) -> FitConfig:
    """Fill the defaults that depend on other fields (quickstart, lr by method, out)."""
    upd: dict[str, Any] = {}
    if cfg.data is None and cfg.dataset is None:
        upd["dataset"] = "arith"
        if cfg.first is None:
            upd["first"] = QUICKSTART_PROBLEMS
        if cfg.before_after is None:
            upd["before_after"] = QUICKSTART_HELD_OUT
        from .selection import quickstart_sets

        injected = quickstart_sets(cfg)  # small and fast; real runs get the larger default sets
        upd.update(injected)
        if "select_by" not in cfg.model_fields_set and cfg.in_dist.enabled:
            # the quickstart teaches one skill and reports it on held-out arith test problems: export the
            # checkpoint that is best on that skill's dev split (OOD and BBH are still scored and reported);
            # with --in-dist none the ordinary default rule (and its fallback to a scored set) applies
            upd["select_by"] = "in_dist"
    if cfg.lr is None:
        upd["lr"] = 2e-5 if cfg.method == "full" else 1e-3
    if cfg.out is None:
        src = Path(cfg.data).name if cfg.data else (cfg.dataset or "arith")
        upd["out"] = f"adapters/{src}-{cfg.method}" + (f"-{cfg.quant}" if cfg.quant != "none" else "")
    if cfg.before_after is None and "before_after" not in upd:
        upd["before_after"] = 0
    if cfg.method == "full" and cfg.quant != "none":
        raise ConfigError(f"--method full trains every weight and cannot train a {cfg.quant}-quantized base; "
                          "use --quant none, or --method lora/dora for QLoRA")
    if not upd:
        return cfg
    new = cfg.model_copy(update=upd)
    if cfg.data is None and cfg.dataset is None:
        # the quickstart's sets are still defaults (not the user's): a default set whose data is missing is skipped
        new.model_fields_set.difference_update(injected)
    return new


QUICKSTART_EVALS = 3  # the quickstart evaluates at step 0 and 3 more times (the last at the end)


def resolve_eval_every(cfg: Any, *, quickstart: bool, total: int) -> int:
    """``eval_every`` as the trainer needs it. An explicit value wins. Unset, it is ``ceil(total / 4)`` on the
    quickstart and whenever ``--select-by`` names a held-out score explicitly (asking to select on OOD accuracy
    asks for the evaluation), and 0 (no held-out evaluation, export the last step) otherwise."""
    if cfg.eval_every is not None:
        return int(cfg.eval_every)
    explicit = "select_by" in cfg.model_fields_set and as_rule(cfg.select_by).kind in ("score", "heldout_loss")
    return max(1, int(math.ceil(total / QUICKSTART_EVALS))) if (quickstart or explicit) else 0
