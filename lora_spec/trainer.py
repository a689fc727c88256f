"""The training recipe: :func:`setup_training` builds a :class:`TrainState` (accelerator, encoded rows and teacher
top-k, optimizer, schedule, resume), :func:`train_step` runs one optimizer step, and :func:`train` is the loop
around them with its hooks (held-out evaluation, checkpoints, progress, Ctrl-C/SIGTERM). Rows and batches are
``lora_spec.batching``; checkpoint files and save/load are ``lora_spec.checkpoints``; the loss is :func:`batch_loss`.

Determinism: the data order of every epoch is a pure function of ``(seed, epoch)``, and the torch RNG (dropout) is
re-seeded from ``(seed, rank, step)`` at the start of every optimizer step. So a run resumed from a checkpoint
sees exactly the batches and dropout masks of an uninterrupted run, and its loss trajectory is the same (on CPU,
bit for bit). Nothing else needs to be stored besides the trainable weights, the optimizer and the scheduler.

Speed: batches group examples of similar length (little padding); for decoder-only students the output head is
applied only at target positions (prompt and padding positions never reach the ``vocab``-sized matmul nor the
softmax), which is where most of the time of a small model's step goes.

The loss of a micro-batch is computed by one function, :func:`batch_loss` (``(loss_sum, n_tokens)``, see
``lora_spec.losses``); the window's sum is divided by the window's label-token count, so accumulation is exact.

A little over 500 lines: the loop and the hooks it calls (setup, step, evaluation, saving, interrupts) share
the TrainState; encoding/batching, checkpoint files and process helpers already live in their own modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .batching import (IGNORE, Encoded, collate, encode_examples, epoch_batches, split_by_tokens, steps_per_epoch,
                       total_steps)
from .checkpoints import (LEGACY_STATE_FILE, STATE_FILE, STATE_TENSORS, WEIGHTS_FILE, checkpoint_dirs, load_checkpoint,
                          load_state, load_trainable, save_checkpoint, save_state)
from .ckpt_files import remove_stale_tmp, usable
from .errors import ConfigError, DataError, LoraspError
from .losses import LossSpec, batch_loss
from .records import Example
from .train_runtime import FitProgress, StopOnTerm, dist_state, is_fsdp, make_accelerator, say, trackers

LOG_FILE = "train_log.jsonl"


class TrainingDiverged(LoraspError):
    """The loss or the gradient norm became NaN/inf; training stopped and the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------- arguments

@dataclass
class TrainArgs:
    """The loop's settings. ``fit`` takes them from its resolved config by name (:meth:`of`), so each setting has
    one name from the command line to the loop; the Python API may also build one directly."""

    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: float = 0.05  # < 1: fraction of the total steps; >= 1: a number of steps
    schedule: str = "cosine"  # cosine | constant | linear
    batch_size: int = 8  # per device
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0  # 0 or None: no clipping
    max_length: int = 1024
    seed: int = 0
    save_every: int = 0  # 0: only at the end (and at every evaluation)
    eval_every: int = 0  # 0: only at step 0 and at the end (when an evaluator is given)
    group_by_length: bool = True
    mixed_precision: str = "no"  # no | bf16 | fp16 (fit passes lora_spec.precision's choice)
    progress: bool = True
    tracker: str = "auto"  # auto (tensorboard when installed) | none | tensorboard | ...
    loss: Any = "sample"  # a losses.LossSpec or its string
    log_every: int = 1
    micro_batch_tokens: int = 512  # padded tokens per forward/backward pass (0: the whole batch at once)

    @classmethod
    def of(cls, cfg: Any, **derived: Any) -> "TrainArgs":
        """The settings that ``cfg`` (e.g. a resolved ``FitConfig``) has under these names, plus ``derived`` for the
        ones it states otherwise (the parsed loss, the resolved ``eval_every``, ``mixed_precision``)."""
        return cls(**{**{f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}, **derived})


@dataclass
class TrainResult:
    steps: int
    history: list[dict]  # one row per optimizer step: step, loss, lr, grad_norm, tokens
    checkpoints: list[dict]  # {step, loss, scores, path}
    chosen: dict | None
    train_seconds: float
    eval_seconds: float
    tokens: int  # non-padding tokens processed (this rank)
    tokens_per_second: float
    examples: int
    truncated: int
    resumed_from: int | None = None
    world_size: int = 1
    align: dict | None = None  # distribution matching: aligned fraction of the teacher top-k (align.attach_topk)


# --------------------------------------------------------------------------------------------- the loss

def _loss_module_class():
    import torch

    class LossModule(torch.nn.Module):
        """Wraps the model so that DDP sees one forward call whose output is the loss of a micro-batch."""

        def __init__(self, model, kind: str, loss_spec: Any):
            super().__init__()
            self.model = model
            # FSDP's auto-wrap (accelerate) shards the transformer blocks that the model names here
            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            self._no_split_modules = list(getattr(inner, "_no_split_modules", None) or [])
            self.kind = kind
            self.loss_spec = loss_spec

        def forward(self, input_ids, attention_mask, labels, topk=None):
            inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "topk": topk}
            loss_sum, n = batch_loss(inner, batch, kind=self.kind, loss_spec=self.loss_spec)
            return loss_sum, torch.tensor(n, dtype=torch.long, device=loss_sum.device)

    return LossModule


# --------------------------------------------------------------------------------------------- schedule

def lr_factor(step: int, total: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_of(warmup: float, total: int) -> int:
    if warmup < 0:
        raise ConfigError(f"--warmup: must be >= 0, got {warmup}")
    return int(round(warmup * total)) if warmup < 1 else int(warmup)


# --------------------------------------------------------------------------------------------- setup

def _signature(args: TrainArgs, n_examples: int, data_fp: str, world: int) -> dict:
    return {"seed": args.seed, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "epochs": args.epochs, "max_steps": args.max_steps, "lr": args.lr, "schedule": args.schedule,
            "warmup": args.warmup, "max_length": args.max_length, "group_by_length": args.group_by_length,
            "n_examples": n_examples, "data": data_fp, "world_size": world, "loss": str(args.loss)}


@dataclass
class TrainState:
    """Everything the loop reads and writes. :func:`setup_training` fixes the first part; :func:`train_step`
    advances the progress part, which a checkpoint stores with the optimizer and scheduler (``lora_spec.checkpoints``).
    """

    model: Any
    tokenizer: Any
    kind: str
    args: TrainArgs
    accelerator: Any
    wrapper: Any  # the loss module around ``model``, prepared by accelerate (DDP-wrapped when distributed)
    optimizer: Any
    scheduler: Any
    params: list  # the trainable parameters (clipped together)
    encoded: list[Encoded]
    truncated: int
    align: dict | None
    steps_per_epoch: int
    total: int
    pad_id: int
    ckpt_root: Path
    signature: dict  # the settings a checkpoint must share to be resumed
    log_with: list[str] | None
    evaluator: Callable[[Any, Any, int], dict] | None = None
    select: Callable[[list[dict]], dict] | None = None
    prune: Callable[[list[dict]], Any] | None = None
    on_step: Callable[[dict], None] | None = None
    # progress (stored in every checkpoint)
    step: int = 0
    history: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    tokens: int = 0
    resumed_from: int | None = None
    last_saved: int | None = None
    # derived while running (never stored): the current epoch's batch order and the throughput window
    epoch: int = -1
    batches: list[list[int]] = field(default_factory=list)
    window_t: float = 0.0
    window_tok: int = 0

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _check_args(args: TrainArgs) -> None:
    if args.batch_size < 1 or args.grad_accum < 1:
        raise ConfigError("--batch-size and --grad-accum must be >= 1")
    if args.micro_batch_tokens < 0:
        raise ConfigError(f"--micro-batch-tokens: must be >= 0 (0: whole batches), got {args.micro_batch_tokens}")
    if args.schedule not in ("cosine", "constant", "linear"):
        raise ConfigError(f"--schedule: expected cosine, constant or linear, got {args.schedule!r}")


def truncated_summary(examples: list[Example], encoded: list[Encoded], max_length: int) -> str:
    """One line: how many rows ``max_length`` cut, per format, and what to do about it."""
    per: dict[str, int] = {}
    for e, x in zip(examples, encoded):
        if x.truncated:
            per[e.format] = per.get(e.format, 0) + 1
    n = sum(per.values())
    return (f"{n:,} of {len(encoded):,} training rows ({100 * n / max(1, len(encoded)):.1f}%: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
            + f") are longer than --max-length {max_length} and lose prompt tokens from the left (targets longer "
              "than the budget lose their end); raise --max-length to keep them whole")


def _encode(examples: list[Example], tokenizer, kind: str, args: TrainArgs, accelerator):
    """``(encoded rows, n_truncated, alignment summary)``; distribution matching attaches the teacher's top-k."""

    encoded, truncated = encode_examples(examples, tokenizer, kind, args.max_length)
    if truncated and accelerator.is_main_process:
        say(f"warning: {truncated_summary(examples, encoded, args.max_length)}")
    if not LossSpec.parse(args.loss).needs_teacher_topk:
        return encoded, truncated, None
    from .align import attach_topk

    s = attach_topk(encoded, examples, tokenizer, kind)
    if accelerator.is_main_process:
        accelerator.print(f"distribution matching: {s['aligned_tokens']:,} of "
                          f"{s['student_tokens']:,} target tokens of "
                          f"{s['with_teacher_topk']} teacher samples carry the teacher's top-k "
                          f"(aligned fraction {s['aligned_fraction']:.3f}); the rest use the NLL")
    return encoded, truncated, s


def _make_optimizer(model, args: TrainArgs, total: int):
    """AdamW (no weight decay on biases and norms) and the warmup + cosine/constant/linear schedule."""
    import torch

    warm = warmup_steps_of(args.warmup, total)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm, args.schedule))
    return params, optimizer, scheduler


def _resume(st: TrainState) -> None:
    """Continue from the newest checkpoint under ``st.ckpt_root`` that verifies (``--resume``)."""

    found = usable(checkpoint_dirs(st.ckpt_root), warn=lambda m: say(f"warning: {m}") if st.main else None)
    if not found and st.main:
        say(f"--resume: no complete checkpoint in {st.ckpt_root}; starting from step 0")
    if found:
        step0, d = found[-1]
        load_checkpoint(st, d, step0)
        if st.main:
            say(f"resuming from {d} (step {step0} of {st.total})")


def setup_training(model, tokenizer, examples: list[Example], *, kind: str, args: TrainArgs,
                   ckpt_dir: str | os.PathLike, resume: bool = False, data_fingerprint: str = "", accelerator=None,
                   **hooks: Any) -> TrainState:
    """Everything before the first step: check the settings, the accelerator, the encoded rows (and the teacher's
    top-k), the step count, optimizer and schedule, the checkpoint directory (and ``resume``), the trackers.
    ``hooks``: ``evaluator``, ``select``, ``prune``, ``on_step`` (see :func:`train`)."""
    _check_args(args)
    ckpt_root = Path(ckpt_dir).resolve()
    log_with = trackers(args.tracker)
    if accelerator is None:
        accelerator = make_accelerator(args.mixed_precision, ckpt_root / "logs", log_with)
    world = accelerator.num_processes
    encoded, truncated, align = _encode(examples, tokenizer, kind, args, accelerator)
    per_epoch = steps_per_epoch(len(encoded), args.batch_size, args.grad_accum, world)
    if per_epoch < 1:
        raise DataError(f"{len(encoded)} training examples are fewer than one optimizer step needs "
                        f"(batch size {args.batch_size} x grad accum {args.grad_accum} x {world} processes = "
                        f"{args.batch_size * args.grad_accum * world}); lower --batch-size or add data")
    total = total_steps(len(encoded), args.batch_size, args.grad_accum, world, args.epochs, args.max_steps)
    params, optimizer, scheduler = _make_optimizer(model, args, total)
    wrapper, optimizer = accelerator.prepare(_loss_module_class()(model, kind, args.loss), optimizer)
    if is_fsdp(accelerator):  # fully_shard replaced the parameters by sharded ones (the optimizer holds those)
        params = [p for p in wrapper.parameters() if p.requires_grad]
        if accelerator.is_main_process:
            from torch.distributed.fsdp import FSDPModule

            units = sum(isinstance(m, FSDPModule) for m in wrapper.modules())
            sharded = sum(hasattr(p, "device_mesh") for p in wrapper.parameters())
            say(f"FSDP2 full shard over {world} processes: {units} units, {sharded} parameter tensors sharded")
    st = TrainState(model, tokenizer, kind, args, accelerator, wrapper, optimizer, scheduler, params, encoded,
                    truncated, align, per_epoch, total,
                    tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                    ckpt_root, _signature(args, len(encoded), data_fingerprint, world), log_with, **hooks)
    if st.main:
        remove_stale_tmp(ckpt_root, warn=lambda m: say(f"warning: {m}"))
    if resume:
        _resume(st)
    if log_with and st.main:
        accelerator.init_trackers("lorasp-fit", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                                        for k, v in asdict(args).items()})
    return st


# --------------------------------------------------------------------------------------------- one step

def step_batches(st: TrainState) -> list[dict]:
    """The collated micro-batches of optimizer step ``st.step`` on this process (every rank takes its own share of
    the epoch's seeded batch order; a batch over the token budget runs in several passes)."""
    a = st.args
    epoch, in_epoch = divmod(st.step, st.steps_per_epoch)
    if epoch != st.epoch:
        st.batches = epoch_batches([e.length for e in st.encoded], a.batch_size, a.seed, epoch, a.group_by_length)
        st.epoch = epoch
    micro = []
    for k in range(a.grad_accum):
        g = (in_epoch * a.grad_accum + k) * st.world + st.rank
        micro.extend(collate(part, st.pad_id, st.kind)
                     for part in split_by_tokens([st.encoded[i] for i in st.batches[g]], a.micro_batch_tokens, st.kind))
    return micro


def _check_finite(st: TrainState, loss: float, grad_norm: float | None) -> None:
    """A NaN/inf loss or gradient norm stops training before the update is applied (:class:`TrainingDiverged`)."""
    if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
        return
    st.optimizer.zero_grad(set_to_none=True)
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    val = loss if what == "loss" else grad_norm
    if st.last_saved is not None:
        keep = f"the last good checkpoint is step {st.last_saved} ({st.ckpt_root / f'step-{st.last_saved:06d}'})"
        hint = "; lower --lr and continue with --resume"
    else:
        keep = "no checkpoint was written yet (set --save-every to keep intermediate ones)"
        hint = "; lower --lr"
    raise TrainingDiverged(f"training stopped at step {st.step + 1}: the {what} became {val}; "
                           f"the update was not applied and {keep}{hint}")


def train_step(st: TrainState, micro: list[dict]) -> dict:
    """One optimizer step over ``micro`` (the step's micro-batches): forward/backward pass by pass (DDP syncs on the
    last), the loss summed over all processes, clipping, the divergence guard, the update. Returns the history row."""
    import torch

    a, acc = st.args, st.accelerator
    device = acc.device
    window_n = sum(int((m["labels"][:, 1:] if st.kind == "causal" else m["labels"]).ne(IGNORE).sum()) for m in micro)
    torch.manual_seed(a.seed * 7919 + st.rank * 104_729 + st.step)
    t0 = time.perf_counter()
    loss_sum_total = torch.zeros((), device=device)
    n_local = 0
    for k, mb in enumerate(micro):
        ctx = acc.no_sync(st.wrapper) if k < len(micro) - 1 else contextlib.nullcontext()
        with ctx, acc.autocast():
            loss_sum, n = st.wrapper(mb["input_ids"].to(device), mb["attention_mask"].to(device),
                                     mb["labels"].to(device),
                                     mb["topk"].to(device) if mb.get("topk") is not None else None)
            loss = loss_sum / max(1, window_n)
        acc.backward(loss)
        loss_sum_total += loss_sum.detach().float()
        n_local += int(n)
        st.window_tok += mb["n_tokens"]
        st.tokens += mb["n_tokens"]
    stats = acc.reduce(torch.tensor([loss_sum_total.item(), float(n_local)], device=device), reduction="sum")
    step_loss = float(stats[0] / max(stats[1], 1.0))
    grad_norm = None
    if a.max_grad_norm:
        gn = acc.clip_grad_norm_(st.params, a.max_grad_norm)
        if hasattr(gn, "full_tensor"):  # FSDP: the norm of sharded gradients is a DTensor
            gn = gn.full_tensor()
        grad_norm = float(gn) if gn is not None else None
    _check_finite(st, step_loss, grad_norm)
    st.optimizer.step()
    st.scheduler.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    dt = time.perf_counter() - t0
    st.train_seconds += dt
    row = {"step": st.step, "loss": step_loss, "lr": st.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
           "tokens": sum(m["n_tokens"] for m in micro), "seconds": round(dt, 4), "epoch": st.epoch}
    st.history.append(row)
    return row


# --------------------------------------------------------------------------------------------- hooks

def evaluate_step(st: TrainState, step: int) -> dict:
    """The evaluator's scores at ``step`` (main process; the others wait), sent to the trackers."""
    import torch

    scores: dict = {}
    if st.evaluator is not None and st.main:
        t = time.perf_counter()
        was_training = st.model.training
        st.model.eval()
        with torch.no_grad(), st.accelerator.autocast(), fsdp_unsharded(st):  # the training precision
            scores = dict(st.evaluator(st.model, st.tokenizer, step) or {})
        if was_training:
            st.model.train()
        st.eval_seconds += time.perf_counter() - t
        if st.log_with and scores:  # held-out scores to the trackers (eval/in_dist, eval/ood/svamp, ...)
            st.accelerator.log({f"eval/{k}": float(v) for k, v in scores.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)
    elif st.evaluator is not None and is_fsdp(st.accelerator):
        with fsdp_unsharded(st):  # the gathers are collective: every rank takes part, the main one evaluates
            pass
    st.accelerator.wait_for_everyone()
    if st.evaluator is not None and st.world > 1:
        # every process keeps the same checkpoint records, so that all of them select (and load) the same one
        from accelerate.utils import broadcast_object_list

        box = [scores]
        broadcast_object_list(box, from_process=0)
        scores = box[0]
    return scores


# --------------------------------------------------------------------------------------------- FSDP

def _fsdp_modules(st: TrainState) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in st.wrapper.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def fsdp_unsharded(st: TrainState):
    """FSDP: every sharded block gathered (collectively, on every rank) and kept whole until the block ends, so that
    the main process can run held-out generation on ``st.model`` alone; then sharded again. Without FSDP: nothing."""
    if not is_fsdp(st.accelerator):
        yield
        return
    mods = _fsdp_modules(st)
    # the root's one-time setup (done by its first forward) before any block runs outside the root's forward
    st.wrapper._get_fsdp_state()._lazy_init()
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)
        # forget the order in which the evaluation ran the blocks: FSDP2 prefetches the next backward's gathers by
        # the recorded forward order, and only the main process evaluated (a stale order desynchronizes the ranks)
        st.wrapper._get_fsdp_state()._comm_ctx.post_forward_order.clear()
        for m in mods:
            for g in m._get_fsdp_state()._fsdp_param_groups:
                g._post_forward_indices.clear()


def fsdp_gather_model(st: TrainState) -> None:
    """At the end of an FSDP fit: the full weights (torch's ``get_model_state_dict``, gathered on every rank) put back
    into ``st.model`` as plain parameters and FSDP's hooks removed, so that the artifact, the after-scores and a merge
    see an ordinary model on every rank. Uses FSDP2's hook handles (torch 2.13); tests/test_fsdp.py checks it."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    full = get_model_state_dict(st.wrapper, options=StateDictOptions(full_state_dict=True))
    for m in _fsdp_modules(st):
        state = m._get_fsdp_state()
        for h in {id(h): h for h in (state._pre_forward_hook_handle, state._post_forward_hook_handle)
                  if h is not None}.values():
            h.remove()
        for g in state._fsdp_param_groups:
            for hooks in (g._module_to_pre_save_state_dict_hook_handle, g._module_to_pre_load_state_dict_hook_handle):
                for h in hooks.values():
                    h.remove()
                hooks.clear()
        m.__class__ = next(c for c in type(m).__mro__[1:] if not issubclass(c, FSDPModule))
    plain: dict[int, torch.nn.Parameter] = {}  # tied weights stay tied
    with torch.no_grad():
        for mname, mod in st.wrapper.named_modules():
            for k, p in list(mod._parameters.items()):
                if p is None:
                    continue
                if id(p) not in plain:
                    t = full[f"{mname}.{k}" if mname else k]
                    plain[id(p)] = torch.nn.Parameter(t.detach().clone(), requires_grad=p.requires_grad)
                mod._parameters[k] = plain[id(p)]
    st.params = [p for p in st.model.parameters() if p.requires_grad]


def evaluate_base(st: TrainState) -> None:
    """Score the untouched model (step 0): the "before" reference of every curve, never an exported candidate."""
    s0 = evaluate_step(st, 0)
    c0 = s0.pop("correct", None)
    st.checkpoints.append({"step": 0, "loss": None, "scores": s0, "path": None, **({"correct": c0} if c0 else {})})


def log_step(st: TrainState, row: dict) -> None:
    """The per-step hooks: the caller's ``on_step`` and the trackers (every ``log_every`` steps)."""
    if st.on_step is not None:
        st.on_step(row)
    if st.log_with and st.main and st.step % max(1, st.args.log_every) == 0:
        st.accelerator.log({"train/loss": row["loss"], "train/lr": row["lr"],
                            "train/grad_norm": row["grad_norm"] or 0.0}, step=st.step)


def due(step: int, every: int | None, total: int) -> bool:
    """Whether an every-N-steps hook (held-out evaluation, checkpoint) fires after ``step``; the end is apart."""
    return bool(every) and step % every == 0 and step < total


def eval_schedule(total: int, every: int) -> list[int]:
    """The steps a run with an evaluator scores: the base model (0), every ``every`` steps, the end."""
    return [0] + [s for s in range(1, total) if due(s, every, total)] + [total]


def periodic_eval_and_save(st: TrainState) -> None:
    """Every ``eval_every`` steps: score and save; every ``save_every`` steps: save."""
    is_eval = st.evaluator is not None and due(st.step, st.args.eval_every, st.total)
    if is_eval or due(st.step, st.args.save_every, st.total):
        save_checkpoint(st, st.step, evaluate_step(st, st.step) if is_eval else {})
        st.window_t, st.window_tok = time.perf_counter(), 0


def save_interrupted(st: TrainState, start_step: int) -> None:
    """Ctrl-C or SIGTERM between steps: keep what was trained (the state after ``st.step`` updates is consistent)."""
    if st.step > start_step and st.step != st.last_saved:
        save_checkpoint(st, st.step, {})
        say(f"interrupted: saved step {st.step} to {st.ckpt_root / f'step-{st.step:06d}'}; "
             f"continue with --resume")


def finish_training(st: TrainState) -> TrainResult:
    """After the last step: evaluate and save it (unless done), load the chosen checkpoint, write the step log."""
    if st.last_saved != st.total:
        save_checkpoint(st, st.total, evaluate_step(st, st.total) if st.evaluator is not None else {})
    chosen = None
    if st.checkpoints:
        chosen = st.select(st.checkpoints) if st.select is not None else \
            [c for c in st.checkpoints if c["step"] > 0][-1]
        if chosen and chosen.get("path") and int(chosen["step"]) != st.total:
            load_trainable(st.model, Path(chosen["path"]) / WEIGHTS_FILE)
    if is_fsdp(st.accelerator):
        fsdp_gather_model(st)
    if st.log_with and st.main:
        st.accelerator.end_training()
    run = st.history[(st.resumed_from or 0):]
    tokens_run = sum(h["tokens"] for h in run)
    run_secs = sum(h["seconds"] for h in run)
    if not run_secs:  # resumed at its last step: no step ran now, so the speed is the whole run's
        tokens_run, run_secs = st.tokens, st.train_seconds
    if st.main:
        with (st.ckpt_root / LOG_FILE).open("w") as fh:
            for h in st.history:
                fh.write(json.dumps(h) + "\n")
    return TrainResult(steps=st.total, history=st.history, checkpoints=st.checkpoints, chosen=chosen,
                       train_seconds=st.train_seconds, eval_seconds=st.eval_seconds, tokens=st.tokens,
                       tokens_per_second=tokens_run / run_secs if run_secs else 0.0, examples=len(st.encoded),
                       truncated=st.truncated, resumed_from=st.resumed_from, world_size=st.world, align=st.align)


# --------------------------------------------------------------------------------------------- the loop

def train(model, tokenizer, examples: list[Example], *, kind: str, args: TrainArgs, ckpt_dir: str | os.PathLike,
          evaluator: Callable[[Any, Any, int], dict[str, float]] | None = None,
          select: Callable[[list[dict]], dict] | None = None,
          prune: Callable[[list[dict]], Any] | None = None,
          resume: bool = False, data_fingerprint: str = "", accelerator=None,
          on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model`` (already made trainable by ``adapters.peft_setup.apply_method``) on ``examples``.

    ``evaluator(model, tokenizer, step) -> scores`` runs (main process only) at step 0, every ``eval_every`` steps
    and at the end; every evaluation also writes a checkpoint. ``select(checkpoints) -> record`` picks the chosen
    checkpoint (default: the last); ``prune(checkpoints)`` may delete checkpoint directories (setting ``path`` to
    None). Returns a ``TrainResult``; the chosen weights are loaded into ``model`` on return.
    """
    st = setup_training(model, tokenizer, examples, kind=kind, args=args, ckpt_dir=ckpt_dir, resume=resume,
                        data_fingerprint=data_fingerprint, accelerator=accelerator, evaluator=evaluator,
                        select=select, prune=prune, on_step=on_step)
    if st.step == 0 and evaluator is not None:
        evaluate_base(st)
    start_step = st.step
    progress = FitProgress(args.progress and st.main, st.total, start_step)
    model.train()
    st.window_t, st.window_tok = time.perf_counter(), 0
    stop = StopOnTerm()  # SIGTERM (kill, a scheduler's preemption): finish the step, save it, stop like Ctrl-C
    try:
        while st.step < st.total:
            row = train_step(st, step_batches(st))
            log_step(st, row)
            progress.update(st.step, row["loss"], st.window_tok / max(time.perf_counter() - st.window_t, 1e-9))
            periodic_eval_and_save(st)
            if stop.requested:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        progress.close()
        save_interrupted(st, start_step)
        raise
    finally:
        progress.close()
        stop.restore()
    return finish_training(st)


# the names of lora_spec.batching, .checkpoints and .train_runtime that callers have always imported from here
__all__ = ["TrainArgs", "TrainResult", "TrainState", "TrainingDiverged", "Encoded", "encode_examples",
           "epoch_batches", "collate", "batch_loss", "lr_factor", "warmup_steps_of", "setup_training", "train_step",
           "train", "load_trainable", "checkpoint_dirs", "save_state", "load_state", "split_by_tokens", "IGNORE",
           "STATE_FILE", "STATE_TENSORS", "LEGACY_STATE_FILE", "WEIGHTS_FILE", "dist_state"]
