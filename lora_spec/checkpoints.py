"""A training checkpoint on disk: the trainable weights (``trainable.safetensors``), the trainer state without pickle
(``trainer_state.json`` + ``trainer_state.safetensors``; an older ``trainer_state.pt`` is read through torch's
weights-only unpickler), and :func:`save_checkpoint` / :func:`load_checkpoint`, which write a ``step-NNNNNN``
directory from a running :class:`lora_spec.trainer.TrainState` and put one back into it on ``--resume``.

``lora_spec.ckpt_files`` seals the directories (sizes + SHA-256) and picks the newest one that verifies.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact_files import atomic_dir
from .ckpt_files import seal
from .errors import ConfigError, DataError, one_line
from .outputs import clean_residue
from .train_runtime import is_fsdp

if TYPE_CHECKING:
    from .trainer import TrainState

STATE_FILE = "trainer_state.json"  # everything but tensors, as JSON (see save_state)
STATE_TENSORS = "trainer_state.safetensors"  # the optimizer's (and any other) tensors of the trainer state
LEGACY_STATE_FILE = "trainer_state.pt"  # lorasp <= 0.x pickle; read only through torch's weights-only unpickler
WEIGHTS_FILE = "trainable.safetensors"


def _full(p):
    """A parameter's whole value: an FSDP-sharded one (a DTensor) is gathered (collective: every rank calls it)."""
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def _trainable_state(model) -> dict:
    return {n: _full(p).detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _save_trainable(model, path: Path, state: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file(state if state is not None else _trainable_state(model), str(path))


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
            p = params[n]
            if hasattr(p, "device_mesh"):  # FSDP: every rank read the whole file and keeps its own shard
                from torch.distributed.tensor import distribute_tensor

                t = distribute_tensor(t.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None)
            p.copy_(t.to(p.dtype))


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


# ------------------------------------------------------------------------------------- an earlier fit's checkpoints

PREVIOUS = ".lorasp-previous"  # an earlier, finished fit's checkpoints, set aside by a new fit at the same --out


def set_aside_previous(ckpt_dir: Path) -> int:
    """A new fit over a finished one: move the earlier fit's ``step-*`` into ``<ckpt_dir>/.lorasp-previous``, to be
    removed only once the new fit has written its first checkpoint (:func:`drop_previous`), and put back if it
    fails before that (:func:`previous_checkpoints_kept`). Returns how many were set aside."""

    prev = ckpt_dir / PREVIOUS
    steps = sorted(ckpt_dir.glob("step-*"))
    if not steps:
        return 0
    if prev.exists():  # an older set-aside copy whose fit was replaced since: this one is newer
        shutil.rmtree(prev, ignore_errors=True)
    prev.mkdir()
    for d in steps:
        os.rename(d, prev / d.name)
    return len(steps)


def drop_previous(ckpt_dir: Path) -> None:
    if (ckpt_dir / PREVIOUS).exists():
        shutil.rmtree(ckpt_dir / PREVIOUS, ignore_errors=True)


def _restore_previous(ckpt_dir: Path, why: str, warn) -> None:
    prev = ckpt_dir / PREVIOUS
    if not prev.is_dir():
        return
    if any(ckpt_dir.glob("step-*")):  # the newer fit wrote a checkpoint: the earlier ones are superseded
        drop_previous(ckpt_dir)
        return
    moved = 0
    for d in sorted(prev.glob("step-*")):
        os.rename(d, ckpt_dir / d.name)
        moved += 1
    drop_previous(ckpt_dir)
    if moved:
        warn(f"{why}: the earlier fit's {moved} checkpoint{'s' if moved > 1 else ''} in {ckpt_dir} "
             f"{'are' if moved > 1 else 'is'} kept")


@contextlib.contextmanager
def previous_checkpoints_kept(ckpt_dir: Path, out: Path, warn=None):
    """Around a fit (under its lock): an earlier fit's checkpoints that a new fit set aside are removed only once
    the new fit has written its first checkpoint; a fit that fails before that puts them back, and so does the
    next fit after one that was killed. Temporary directories a killed artifact write left beside ``out`` are
    removed first."""

    say = warn or (lambda m: print(f"note: {one_line(m)}", file=sys.stderr, flush=True))
    clean_residue(Path(out), say)
    _restore_previous(ckpt_dir, "an earlier fit at this --out stopped before its first checkpoint", say)
    try:
        yield
    except BaseException:
        _restore_previous(ckpt_dir, "this fit stopped before its first checkpoint", say)
        raise
    drop_previous(ckpt_dir)


# --------------------------------------------------------------------------------------------- a running fit's checkpoints

def save_checkpoint(st: "TrainState", step: int, scores: dict | None) -> dict:
    """Record checkpoint ``step`` (its mean loss since the previous one, its held-out scores) in ``st.checkpoints``,
    prune, and write ``step-NNNNNN`` atomically and sealed (main process). Every process waits for the write."""

    d = st.ckpt_root / f"step-{step:06d}"
    prev = max([c["step"] for c in st.checkpoints if c["step"] < step] or [0])
    recent = [h["loss"] for h in st.history if prev < h["step"] <= step]
    scores = dict(scores or {})
    correct = scores.pop("correct", None)  # per-problem results (selection.CORRECT), kept beside the scores
    rec = {"step": step, "loss": (sum(recent) / len(recent)) if recent else None, "scores": scores, "path": str(d)}
    if correct:
        rec["correct"] = correct
    st.checkpoints[:] = [c for c in st.checkpoints if c["step"] != step] + [rec]
    st.checkpoints.sort(key=lambda c: c["step"])
    weights = optim = None
    if _fsdp(st):  # the sharded weights and optimizer state gathered whole (collective), written by the main process
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        weights = _trainable_state(st.model)
        optim = get_optimizer_state_dict(st.wrapper, _torch_optimizer(st),
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if st.main:
        if st.prune is not None:
            st.prune(st.checkpoints)
        with atomic_dir(d) as tmp:
            _save_trainable(st.model, tmp / WEIGHTS_FILE, weights)
            save_state({"step": step, "optimizer": optim if optim is not None else st.optimizer.state_dict(),
                        "scheduler": st.scheduler.state_dict(),
                        "history": st.history, "checkpoints": st.checkpoints, "signature": st.signature,
                        "train_seconds": st.train_seconds, "eval_seconds": st.eval_seconds, "tokens": st.tokens,
                        "total_steps": st.total}, tmp)
            (tmp / "checkpoint.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "path"}, indent=1))
            seal(tmp)  # sizes + checksums of every file: --resume skips a checkpoint that does not match
        drop_previous(st.ckpt_root)  # this fit has a checkpoint now: an earlier fit's set-aside ones go
    st.last_saved = step
    st.accelerator.wait_for_everyone()
    return rec


def _fsdp(st: "TrainState") -> bool:
    return is_fsdp(st.accelerator)


def _torch_optimizer(st: "TrainState"):
    return getattr(st.optimizer, "optimizer", st.optimizer)  # accelerate's AcceleratedOptimizer wraps torch's


def load_checkpoint(st: "TrainState", d: Path, step: int) -> None:
    """Put checkpoint ``d`` (of step ``step``) back into ``st``: weights, optimizer, scheduler, history, records and
    counters. Refuses a checkpoint written with other settings (``st.signature``; epochs and max_steps may change)."""
    state = load_state(d)
    old = state.get("signature", {})
    diff = [k for k in st.signature if k != "max_steps" and k != "epochs" and old.get(k) != st.signature[k]]
    if diff:
        k = diff[0]
        raise ConfigError(f"--resume: {d} was written with {k}={old.get(k)!r}, this run has "
                          f"{k}={st.signature[k]!r}; resume with the same settings or use a new --out")
    load_trainable(st.model, d / WEIGHTS_FILE)
    if _fsdp(st):  # the whole optimizer state (keyed by parameter names), each rank keeps its shards
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(st.wrapper, _torch_optimizer(st), optim_state_dict=state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        st.optimizer.load_state_dict(state["optimizer"])
    st.scheduler.load_state_dict(state["scheduler"])
    st.history = state["history"]
    st.checkpoints = state["checkpoints"]
    st.train_seconds = state.get("train_seconds", 0.0)
    st.eval_seconds = state.get("eval_seconds", 0.0)
    st.tokens = state.get("tokens", 0)
    st.step = st.resumed_from = st.last_saved = step
