"""The training loop: accelerate, gradient accumulation, clipping, warmup + cosine/constant schedule, length-grouped
batches, atomic checkpoints, exact resume, NaN/inf guard, periodic evaluation and checkpoint selection.

Determinism: the data order of every epoch is a pure function of ``(seed, epoch)``, and the torch RNG (dropout) is
re-seeded from ``(seed, rank, step)`` at the start of every optimizer step. So a run resumed from a checkpoint
sees exactly the batches and dropout masks of an uninterrupted run, and its loss trajectory is the same (on CPU,
bit for bit). Nothing else needs to be stored besides the trainable weights, the optimizer and the scheduler.

Speed: batches group examples of similar length (little padding); for decoder-only students the output head is
applied only at target positions (prompt and padding positions never reach the ``vocab``-sized matmul nor the
softmax), which is where most of the time of a small model's step goes.

The loss of a micro-batch is computed by one function, :func:`batch_loss` (``(loss_sum, n_tokens)``, see
``lora_spec.losses``); the window's sum is divided by the window's label-token count, so accumulation is exact.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, DataError, LoraspError
from .records import Example

IGNORE = -100
STATE_FILE = "trainer_state.json"  # everything but tensors, as JSON (see save_state)
STATE_TENSORS = "trainer_state.safetensors"  # the optimizer's (and any other) tensors of the trainer state
LEGACY_STATE_FILE = "trainer_state.pt"  # lorasp <= 0.x pickle; read only through torch's weights-only unpickler
WEIGHTS_FILE = "trainable.safetensors"
LOG_FILE = "train_log.jsonl"


class TrainingDiverged(LoraspError):
    """The loss or the gradient norm became NaN/inf; training stopped and the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------- arguments

@dataclass
class TrainArgs:
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: float = 0.05  # < 1: fraction of the total steps; >= 1: a number of steps
    schedule: str = "cosine"  # cosine | constant | linear
    batch_size: int = 8  # per device
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    max_length: int = 1024
    seed: int = 0
    save_every: int = 0  # 0: only at the end (and at every evaluation)
    eval_every: int = 0  # 0: only at step 0 and at the end (when an evaluator is given)
    keep_checkpoints: int | None = None
    select_by: str = "last"
    group_by_length: bool = True
    mixed_precision: str = "auto"  # auto (bf16 on GPU, no on CPU) | no | bf16 | fp16
    progress: bool = True
    tracker: str = "auto"  # auto (tensorboard when installed) | none | tensorboard | ...
    loss: Any = "sample"  # a losses.LossSpec or its string
    log_every: int = 1
    micro_batch_tokens: int = 1024  # padded tokens per forward/backward pass (0: the whole batch at once)


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


# --------------------------------------------------------------------------------------------- tokenization

@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # causal: same length as input_ids (IGNORE on the prompt); seq2seq: the decoder targets
    n_target: int
    topk: Any = None  # distribution matching: (positions in labels, ids, logprobs), see align.attach_topk

    @property
    def length(self) -> int:
        return len(self.input_ids) + (len(self.labels) if self.labels is not self.input_ids else 0)


def encode_examples(examples: list[Example], tokenizer, kind: str, max_length: int) -> tuple[list[Encoded], int]:
    """Tokenize prompt and target separately (the prompt exactly as eval tokenizes it; the target followed by EOS)
    and mask the prompt out of the labels. Over-long rows lose prompt tokens from the left (the question's end
    and the whole target stay); returns ``(encoded, n_truncated)``."""
    if not examples:
        raise DataError("no training examples (is the teach run empty, or were all samples wrong?)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the student's tokenizer has no EOS token; training targets need one")
    prompts = tokenizer([e.prompt for e in examples], add_special_tokens=True)["input_ids"]
    if kind == "seq2seq":
        targets = tokenizer([e.target for e in examples], add_special_tokens=True)["input_ids"]
    else:
        targets = tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"]
    out: list[Encoded] = []
    truncated = 0
    for p, t in zip(prompts, targets):
        p, t = list(p), list(t)
        if kind == "seq2seq":
            if not t or t[-1] != eos:
                t = t + [eos]
            if len(p) > max_length:
                p, truncated = p[-max_length:], truncated + 1
            if len(t) > max_length:
                t, truncated = t[:max_length - 1] + [eos], truncated + 1
            out.append(Encoded(p, t, len(t)))
            continue
        t = t + [eos]
        if len(p) + len(t) > max_length:
            truncated += 1
            keep_t = min(len(t), max_length - 1)
            t = t[:keep_t]
            p = p[-(max_length - keep_t):] if max_length - keep_t > 0 else []
        ids = p + t
        labels = [IGNORE] * len(p) + t
        out.append(Encoded(ids, labels, len(t)))
    return out, truncated


# --------------------------------------------------------------------------------------------- batching

def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  megabatch: int = 64) -> list[list[int]]:
    """The micro-batches of one epoch, a pure function of its arguments.

    Length grouping: shuffle, cut into mega-batches of ``megabatch`` micro-batches, sort each by length, cut into
    micro-batches, shuffle the batch order. Padding waste stays small and the order stays random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group_by_length:
        mb = batch_size * megabatch
        chunks = [sorted(idx[i:i + mb], key=lambda j: -lengths[j]) for i in range(0, len(idx), mb)]
        idx = [j for c in chunks for j in c]
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def split_by_tokens(rows: list[Encoded], budget: int, kind: str = "causal") -> list[list[Encoded]]:
    """Cut one batch into passes of at most ``budget`` padded tokens (rows x longest row, encoder + decoder tokens
    for seq2seq; a row longer than the budget goes alone).

    Activation memory grows with the tokens of one forward pass, not with the batch: the trainer runs the passes
    of a batch one after another and divides the summed loss by the batch's label-token count, so the update is
    that of the whole batch (to float rounding). ``budget`` 0: the batch in one pass."""
    if budget <= 0 or len(rows) <= 1:
        return [rows]

    def size(r: Encoded) -> int:
        return len(r.input_ids) + (len(r.labels) if kind == "seq2seq" else 0)

    rows = sorted(rows, key=lambda r: -size(r))  # longest first: a pass's padded size is rows x its first row
    out: list[list[Encoded]] = []
    for r in rows:
        if out and (len(out[-1]) + 1) * size(out[-1][0]) <= budget:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def collate(rows: list[Encoded], pad_id: int, kind: str):
    """Right-padded tensors: ``input_ids``, ``attention_mask``, ``labels`` (+ ``n_tokens``, non-padding)."""
    import torch

    n = len(rows)
    L = max(len(r.input_ids) for r in rows)
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    if kind == "seq2seq":
        T = max(len(r.labels) for r in rows)
        labels = torch.full((n, T), IGNORE, dtype=torch.long)
    else:
        labels = torch.full((n, L), IGNORE, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r.input_ids)] = torch.tensor(r.input_ids)
        mask[i, :len(r.input_ids)] = 1
        labels[i, :len(r.labels)] = torch.tensor(r.labels)
    tokens = int(mask.sum()) + (sum(len(r.labels) for r in rows) if kind == "seq2seq" else 0)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "n_tokens": tokens}
    if any(r.topk is not None for r in rows):
        from .losses import collate_topk

        out["topk"] = collate_topk([r.topk for r in rows], labels.shape[1])
    return out


# --------------------------------------------------------------------------------------------- the loss

def _fast_head_ok(model) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return False
    try:
        return model.get_decoder() is not None and model.get_output_embeddings() is not None
    except Exception:
        return False


def batch_loss(model, batch: dict, *, kind: str, loss_spec: Any = "sample"):
    """The loss of one micro-batch as ``(loss_sum, n_label_tokens)``: THE place where the training loss is made.

    ``model`` is the unwrapped transformers model (peft's base model for adapters). A decoder-only
    student applies the output head only at the label positions, for every spec (distribution matching and
    ``mix:A`` go through ``lora_spec.losses.compute_loss`` on those positions); seq2seq students use full logits.
    """
    import torch
    import torch.nn.functional as F

    from . import losses

    spec = losses.LossSpec.parse(loss_spec)
    labels = batch["labels"]
    if kind == "seq2seq":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                    use_cache=False)
        return losses.compute_loss(spec, out.logits, labels, batch.get("topk"), causal=False)
    if _fast_head_ok(model):
        decoder = model.get_decoder()
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         use_cache=False).last_hidden_state
        tgt = labels[:, 1:]
        sel = tgt != IGNORE
        h = hidden[:, :-1][sel]
        logits = model.get_output_embeddings()(h).float()
        y = tgt[sel]
        if spec.alpha == 0.0:
            return F.cross_entropy(logits, y, reduction="sum"), int(y.numel())
        # distribution matching on the selected target positions only (no [B, T, vocab] logits)
        tk = batch.get("topk")
        sub = None if tk is None else losses.TopKBatch(tk.ids[:, 1:][sel][None], tk.logprobs[:, 1:][sel][None],
                                                       tk.mask[:, 1:][sel][None])
        return losses.compute_loss(spec, logits[None], y[None], sub, causal=False)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return losses.compute_loss(spec, out.logits, labels, batch.get("topk"), causal=True)


def _loss_module_class():
    import torch

    class LossModule(torch.nn.Module):
        """Wraps the model so that DDP sees one forward call whose output is the loss of a micro-batch."""

        def __init__(self, model, kind: str, loss_spec: Any):
            super().__init__()
            self.model = model
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


# --------------------------------------------------------------------------------------------- checkpoints

def _save_trainable(model, path: Path) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(state, str(path))


def load_trainable(model, path: str | os.PathLike) -> None:
    """Load a checkpoint's trainable weights into ``model`` (same wrapping as when it was saved)."""
    import torch
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # a truncated or corrupted file (SafetensorError, OSError): name it
        raise DataError(f"{path}: unreadable checkpoint weights ({type(exc).__name__}: {str(exc)[:200]})") from None
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise DataError(f"{path}: checkpoint weight {missing[0]!r} does not exist in this model "
                        "(different method, rank or targets than the run that wrote it?)")
    with torch.no_grad():
        for n, t in state.items():
            if params[n].shape != t.shape:
                raise DataError(f"{path}: checkpoint weight {n!r} has shape {tuple(t.shape)}, "
                                f"the model has {tuple(params[n].shape)} (different --rank?)")
            params[n].copy_(t.to(params[n].dtype))


_STATE_FORMAT = "lorasp-trainer-state/1"
_TAGS = ("__tensor__", "__tuple__", "__items__")


def _has_state(d: Path) -> bool:
    return ((d / STATE_FILE).exists() and (d / STATE_TENSORS).exists()) or (d / LEGACY_STATE_FILE).exists()


def save_state(state: dict, d: str | os.PathLike) -> None:
    """Write the trainer state (optimizer and scheduler state dicts, history, ...) into directory ``d`` without
    pickle: every tensor goes to ``trainer_state.safetensors`` (named by its path, e.g.
    ``optimizer.state.0.exp_avg``), the rest to ``trainer_state.json``, where tuples and dicts with non-string
    keys are tagged so that :func:`load_state` gives back exactly what was saved."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}

    def enc(x, path: str):
        sub = (lambda k: f"{path}.{k}" if path else str(k))  # noqa: E731 - the tensor's name in the file
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, sub(i)) for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, sub(i)) for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not any(k in _TAGS for k in x):
                return {k: enc(v, sub(k)) for k, v in x.items()}
            return {"__items__": [[enc(k, sub(f"key{i}")), enc(v, sub(k))]
                                  for i, (k, v) in enumerate(x.items())]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"trainer state: {path or 'the state'} is a {type(x).__name__}, which the checkpoint format cannot hold")

    body = enc(state, "")
    d = Path(d)
    save_file(tensors, str(d / STATE_TENSORS))
    (d / STATE_FILE).write_text(json.dumps({"format": _STATE_FORMAT, "state": body}), encoding="utf-8")


def load_state(d: str | os.PathLike) -> dict:
    """Read the trainer state of checkpoint directory ``d`` (see :func:`save_state`); nothing in it is unpickled.

    A checkpoint written by an older lorasp (``trainer_state.pt``) is read only through torch's weights-only
    unpickler (tensors and plain containers); one that names any other Python object is refused, so a crafted
    file cannot run code. Any malformed state is a one-line :class:`DataError` naming the file."""
    d = Path(d)
    if not (d / STATE_FILE).exists() and (d / LEGACY_STATE_FILE).exists():
        return _load_legacy_state(d / LEGACY_STATE_FILE)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = d / STATE_FILE
    try:
        doc = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{f}: unreadable trainer state ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != _STATE_FORMAT:
        raise DataError(f"{f}: not a lorasp trainer state (expected format {_STATE_FORMAT!r})")
    try:
        tensors = load_file(str(d / STATE_TENSORS))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"{d / STATE_TENSORS}: unreadable ({type(exc).__name__}: {exc})") from None

    def dec(x):
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if len(x) == 1 and next(iter(x)) in _TAGS:
                (tag, v), = x.items()
                if tag == "__tensor__":
                    if v not in tensors:
                        raise DataError(f"{f}: tensor {v!r} is missing from {STATE_TENSORS}")
                    return tensors[v]
                if tag == "__tuple__" and isinstance(v, list):
                    return tuple(dec(i) for i in v)
                if tag == "__items__" and isinstance(v, list) and all(isinstance(i, list) and len(i) == 2 for i in v):
                    return {dec(k): dec(val) for k, val in v}
                raise DataError(f"{f}: malformed {tag} entry")
            return {k: dec(v) for k, v in x.items()}
        return x

    try:
        state = dec(doc.get("state"))
    except TypeError as exc:  # e.g. an unhashable key
        raise DataError(f"{f}: malformed trainer state ({exc})") from None
    return _check_state(state, f)


def _load_legacy_state(f: Path) -> dict:
    import pickle

    import torch

    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(f))
    except Exception:  # not a zip checkpoint: torch.load below still refuses every non-allow-listed global
        unsafe = []
    if unsafe:
        raise DataError(f"{f}: refusing to load: this pickle names {unsafe[0]!r}, which a trainer state never "
                        "holds (loading it could run code); resume from a checkpoint you trust or use a new --out")
    try:
        state = torch.load(str(f), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text suggests the unsafe full load: not advice to pass on
        what = re.search(r"Unsupported (global|operand)[^.\n]*", str(exc))
        raise DataError(f"{f}: refusing to load: not a plain trainer state (torch's weights-only unpickler "
                        f"rejected it{': ' + what.group(0) if what else ''}; loading it otherwise could run code); "
                        "resume from a checkpoint you trust or use a new --out") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{f}: unreadable trainer state ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]})") from None
    return _check_state(state, f)


def _check_state(state: Any, f: Path) -> dict:
    want = {"optimizer": dict, "scheduler": dict, "history": list, "checkpoints": list, "signature": dict}
    if not isinstance(state, dict):
        raise DataError(f"{f}: malformed trainer state (expected an object)")
    for k, t in want.items():
        if not isinstance(state.get(k), t):
            raise DataError(f"{f}: malformed trainer state: field {k!r} should be a {t.__name__}")
    return state


def checkpoint_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (``step-NNNNNN`` with a state file), in step order."""
    root = Path(root)
    out = []
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir() and d.name.startswith("step-") and _has_state(d) and (d / WEIGHTS_FILE).exists():
                try:
                    out.append((int(d.name[5:]), d))
                except ValueError:
                    continue
    return sorted(out)


def _signature(args: TrainArgs, n_examples: int, data_fp: str, world: int) -> dict:
    return {"seed": args.seed, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
            "epochs": args.epochs, "max_steps": args.max_steps, "lr": args.lr, "schedule": args.schedule,
            "warmup": args.warmup, "max_length": args.max_length, "group_by_length": args.group_by_length,
            "n_examples": n_examples, "data": data_fp, "world_size": world, "loss": str(args.loss)}


# --------------------------------------------------------------------------------------------- progress

class _Progress:
    """The fit's progress (lora_spec.progress: a bar on a terminal, else a line every LORASP_PROGRESS_EVERY s)."""

    def __init__(self, enabled: bool, total: int, start: int):
        from .progress import Progress

        self.p = Progress("fit", total, completed=start, enabled=enabled, columns=("loss", "tok/s"))

    def update(self, step: int, loss: float, tps: float) -> None:
        self.p.update(step, loss=f"{loss:.4f}", **{"tok/s": f"{tps:,.0f}"})

    def close(self) -> None:
        self.p.close()


def _trackers(name: str) -> list[str] | None:
    if name in ("none", "", None):
        return None
    if name == "auto":
        try:
            import tensorboard  # noqa: F401

            return ["tensorboard"]
        except ImportError:
            return None
    return [name]


# --------------------------------------------------------------------------------------------- train

def dist_state():
    """accelerate's process state. On a machine without a GPU (or with ``ACCELERATE_USE_CPU``) it is created with
    ``cpu=True``, so that ``accelerate launch`` gives multi-process CPU DDP (gloo) rather than N lone processes."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def _say(msg: str) -> None:
    """A status line on stderr (stdout stays clean for machine-readable output)."""
    import sys

    print(msg, file=sys.stderr, flush=True)


class _StopOnTerm:
    """While the training loop runs, SIGTERM asks it to stop after the current optimizer step (the step is then saved
    as a checkpoint, as on Ctrl-C). A flag rather than an exception: raising inside ``optimizer.step()`` could leave
    half-updated weights that would be saved as a finished step."""

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self._prev = None
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self) -> None:
        if self._prev is not None:
            import signal

            signal.signal(signal.SIGTERM, self._prev)
            self._prev = None


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
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if args.batch_size < 1 or args.grad_accum < 1:
        raise ConfigError("--batch-size and --grad-accum must be >= 1")
    if args.micro_batch_tokens < 0:
        raise ConfigError(f"--micro-batch-tokens: must be >= 0 (0: whole batches), got {args.micro_batch_tokens}")
    if args.schedule not in ("cosine", "constant", "linear"):
        raise ConfigError(f"--schedule: expected cosine, constant or linear, got {args.schedule!r}")
    ckpt_root = Path(ckpt_dir).resolve()
    mp = args.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    log_with = _trackers(args.tracker)
    if accelerator is None:
        dist_state()
        accelerator = Accelerator(
            mixed_precision=mp, log_with=log_with, project_dir=str(ckpt_root / "logs"),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process

    encoded, truncated = encode_examples(examples, tokenizer, kind, args.max_length)
    align_summary = None
    from .losses import LossSpec

    if LossSpec.parse(args.loss).needs_teacher_topk:
        from .align import attach_topk

        align_summary = attach_topk(encoded, examples, tokenizer, kind)
        if main:
            accelerator.print(f"distribution matching: {align_summary['aligned_tokens']:,} of "
                              f"{align_summary['student_tokens']:,} target tokens of "
                              f"{align_summary['with_teacher_topk']} teacher samples carry the teacher's top-k "
                              f"(aligned fraction {align_summary['aligned_fraction']:.3f}); the rest use the NLL")
    lengths = [e.length for e in encoded]
    per_step = args.batch_size * args.grad_accum * world
    batches_per_epoch = len(encoded) // args.batch_size
    steps_per_epoch = batches_per_epoch // (args.grad_accum * world)
    if steps_per_epoch < 1:
        raise DataError(f"{len(encoded)} training examples are fewer than one optimizer step needs "
                        f"(batch size {args.batch_size} x grad accum {args.grad_accum} x {world} processes = "
                        f"{per_step}); lower --batch-size or add data")
    total = int(args.max_steps) if args.max_steps else max(1, int(math.ceil(args.epochs * steps_per_epoch)))
    warm = warmup_steps_of(args.warmup, total)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warm, args.schedule))

    LossModule = _loss_module_class()
    wrapper = LossModule(model, kind, args.loss)
    wrapper, optimizer = accelerator.prepare(wrapper, optimizer)
    device = accelerator.device

    signature = _signature(args, len(encoded), data_fingerprint, world)
    history: list[dict] = []
    checkpoints: list[dict] = []
    start_step = 0
    train_seconds = 0.0
    eval_seconds = 0.0
    tokens_total = 0
    resumed_from = None
    if main:
        from .ckpt_files import remove_stale_tmp

        remove_stale_tmp(ckpt_root, warn=lambda m: _say(f"warning: {m}"))
    if resume:
        from .ckpt_files import usable

        found = usable(checkpoint_dirs(ckpt_root), warn=lambda m: _say(f"warning: {m}") if main else None)
        if not found and main:
            _say(f"--resume: no complete checkpoint in {ckpt_root}; starting from step 0")
        if found:
            step0, d = found[-1]
            state = load_state(d)
            old = state.get("signature", {})
            diff = [k for k in signature if k != "max_steps" and k != "epochs" and old.get(k) != signature[k]]
            if diff:
                k = diff[0]
                raise ConfigError(f"--resume: {d} was written with {k}={old.get(k)!r}, this run has "
                                  f"{k}={signature[k]!r}; resume with the same settings or use a new --out")
            load_trainable(model, d / WEIGHTS_FILE)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = state["history"]
            checkpoints = state["checkpoints"]
            train_seconds = state.get("train_seconds", 0.0)
            eval_seconds = state.get("eval_seconds", 0.0)
            tokens_total = state.get("tokens", 0)
            start_step = resumed_from = step0
            if main:
                _say(f"resuming from {d} (step {step0} of {total})")

    def save_checkpoint(step: int, scores: dict | None) -> dict:
        """Write ``step-NNNNNN`` atomically (main process), record it, prune."""
        from .adapters.artifact import atomic_dir

        d = ckpt_root / f"step-{step:06d}"
        prev = max([c["step"] for c in checkpoints if c["step"] < step] or [0])
        recent = [h["loss"] for h in history if prev < h["step"] <= step]
        scores = dict(scores or {})
        correct = scores.pop("correct", None)  # per-problem results (selection.CORRECT), kept beside the scores
        rec = {"step": step, "loss": (sum(recent) / len(recent)) if recent else None,
               "scores": scores, "path": str(d)}
        if correct:
            rec["correct"] = correct
        checkpoints[:] = [c for c in checkpoints if c["step"] != step] + [rec]
        checkpoints.sort(key=lambda c: c["step"])
        if main:
            if prune is not None:
                prune(checkpoints)
            with atomic_dir(d) as tmp:
                _save_trainable(model, tmp / WEIGHTS_FILE)
                save_state({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "history": history, "checkpoints": checkpoints, "signature": signature,
                            "train_seconds": train_seconds, "eval_seconds": eval_seconds, "tokens": tokens_total,
                            "total_steps": total}, tmp)
                (tmp / "checkpoint.json").write_text(json.dumps(
                    {k: v for k, v in rec.items() if k != "path"}, indent=1))
                from .ckpt_files import seal

                seal(tmp)  # sizes + checksums of every file: --resume skips a checkpoint that does not match
        accelerator.wait_for_everyone()
        return rec

    def run_eval(step: int) -> dict:
        nonlocal eval_seconds
        scores: dict = {}
        if evaluator is not None and main:
            t = time.perf_counter()
            was_training = model.training
            model.eval()
            with torch.no_grad():
                scores = dict(evaluator(model, tokenizer, step) or {})
            if was_training:
                model.train()
            eval_seconds += time.perf_counter() - t
            if log_with and scores:  # held-out scores to the trackers (eval/in_dist, eval/ood/svamp, ...)
                accelerator.log({f"eval/{k}": float(v) for k, v in scores.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)
        accelerator.wait_for_everyone()
        return scores

    if log_with and main:
        accelerator.init_trackers("lorasp-fit", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                                        for k, v in asdict(args).items()})

    if start_step == 0 and evaluator is not None:
        s0 = run_eval(0)
        c0 = s0.pop("correct", None)
        checkpoints.append({"step": 0, "loss": None, "scores": s0, "path": None, **({"correct": c0} if c0 else {})})

    progress = _Progress(args.progress and main, total, start_step)
    model.train()
    step = start_step
    last_saved = start_step if resumed_from is not None else None
    window_t = time.perf_counter()
    window_tok = 0
    current_epoch, epoch_b = -1, []
    stop = _StopOnTerm()  # SIGTERM (kill, a scheduler's preemption): finish the step, save it, stop like Ctrl-C
    try:
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            if epoch != current_epoch:
                epoch_b = epoch_batches(lengths, args.batch_size, args.seed, epoch, args.group_by_length)
                current_epoch = epoch
            micro = []
            for a in range(args.grad_accum):
                g = (in_epoch * args.grad_accum + a) * world + rank
                micro.extend(collate(part, pad_id, kind)
                             for part in split_by_tokens([encoded[i] for i in epoch_b[g]], args.micro_batch_tokens, kind))
            window_n = sum(int((m["labels"][:, 1:] if kind == "causal" else m["labels"]).ne(IGNORE).sum())
                           for m in micro)
            torch.manual_seed(args.seed * 7919 + rank * 104_729 + step)
            t0 = time.perf_counter()
            loss_sum_total = torch.zeros((), device=device)
            n_local = 0
            for a, mb in enumerate(micro):
                ctx = accelerator.no_sync(wrapper) if a < len(micro) - 1 else contextlib.nullcontext()
                with ctx, accelerator.autocast():
                    loss_sum, n = wrapper(mb["input_ids"].to(device), mb["attention_mask"].to(device),
                                          mb["labels"].to(device),
                                          mb["topk"].to(device) if mb.get("topk") is not None else None)
                    loss = loss_sum / max(1, window_n)
                accelerator.backward(loss)
                loss_sum_total += loss_sum.detach().float()
                n_local += int(n)
                window_tok += mb["n_tokens"]
                tokens_total += mb["n_tokens"]
            stats = torch.tensor([loss_sum_total.item(), float(n_local)], device=device)
            stats = accelerator.reduce(stats, reduction="sum")
            step_loss = float(stats[0] / max(stats[1], 1.0))
            grad_norm = None
            if args.max_grad_norm:
                gn = accelerator.clip_grad_norm_(params, args.max_grad_norm)
                grad_norm = float(gn) if gn is not None else None
            bad = not math.isfinite(step_loss) or (grad_norm is not None and not math.isfinite(grad_norm))
            if bad:
                optimizer.zero_grad(set_to_none=True)
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                val = step_loss if what == "loss" else grad_norm
                if last_saved is not None:
                    keep = f"the last good checkpoint is step {last_saved} ({ckpt_root / f'step-{last_saved:06d}'})"
                    hint = "; lower --lr and continue with --resume"
                else:
                    keep = "no checkpoint was written yet (set --save-every to keep intermediate ones)"
                    hint = "; lower --lr"
                raise TrainingDiverged(f"training stopped at step {step + 1}: the {what} became {val}; "
                                       f"the update was not applied and {keep}{hint}")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            dt = time.perf_counter() - t0
            train_seconds += dt
            row = {"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                   "tokens": sum(m["n_tokens"] for m in micro), "seconds": round(dt, 4), "epoch": epoch}
            history.append(row)
            if on_step is not None:
                on_step(row)
            if log_with and main and step % max(1, args.log_every) == 0:
                accelerator.log({"train/loss": step_loss, "train/lr": row["lr"],
                                 "train/grad_norm": grad_norm or 0.0}, step=step)
            now = time.perf_counter()
            tps = window_tok / max(now - window_t, 1e-9)
            progress.update(step, step_loss, tps)
            is_eval = evaluator is not None and args.eval_every and step % args.eval_every == 0 and step < total
            is_save = args.save_every and step % args.save_every == 0 and step < total
            if is_eval or is_save:
                scores = run_eval(step) if is_eval else {}
                save_checkpoint(step, scores)
                last_saved = step
                window_t, window_tok = time.perf_counter(), 0
            if stop.requested:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        # Ctrl-C between steps: keep what was trained so far (the state after ``step`` updates is consistent).
        progress.close()
        if step > start_step and step != last_saved:
            save_checkpoint(step, {})
            _say(f"interrupted: saved step {step} to {ckpt_root / f'step-{step:06d}'}; "
                              f"continue with --resume")
        raise
    finally:
        progress.close()
        stop.restore()

    if last_saved != total:
        scores = run_eval(total) if evaluator is not None else {}
        save_checkpoint(total, scores)
    chosen = None
    if checkpoints:
        chosen = select(checkpoints) if select is not None else [c for c in checkpoints if c["step"] > 0][-1]
        if chosen and chosen.get("path") and int(chosen["step"]) != total:
            load_trainable(model, Path(chosen["path"]) / WEIGHTS_FILE)
    if log_with and main:
        accelerator.end_training()
    tokens_run = sum(h["tokens"] for h in history[(resumed_from or 0):]) if history else 0
    run_secs = sum(h["seconds"] for h in history[(resumed_from or 0):]) if history else 0.0
    if main:
        with (ckpt_root / LOG_FILE).open("w") as fh:
            for h in history:
                fh.write(json.dumps(h) + "\n")
    return TrainResult(steps=total, history=history, checkpoints=checkpoints, chosen=chosen,
                       train_seconds=train_seconds, eval_seconds=eval_seconds, tokens=tokens_total,
                       tokens_per_second=tokens_run / run_secs if run_secs else 0.0, examples=len(encoded),
                       truncated=truncated, resumed_from=resumed_from, world_size=world, align=align_summary)


__all__ = ["TrainArgs", "TrainResult", "TrainingDiverged", "Encoded", "encode_examples", "epoch_batches", "collate",
           "batch_loss", "lr_factor", "warmup_steps_of", "train", "load_trainable", "checkpoint_dirs", "save_state",
           "load_state", "split_by_tokens"]
