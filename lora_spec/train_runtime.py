"""The process around the training loop: accelerate's process state and ``Accelerator``, the trackers, the
progress display, status lines on stderr and the SIGTERM flag. Nothing here knows about models or losses.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from .errors import ConfigError
from .precision import resolve_precision
from .progress import Progress


class FitProgress:
    """The fit's progress (lora_spec.progress: a bar on a terminal, else a line every LORASP_PROGRESS_EVERY s)."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.p = Progress("fit", total, completed=start, enabled=enabled, columns=("loss", "tok/s"))

    def update(self, step: int, loss: float, tps: float) -> None:
        self.p.update(step, loss=f"{loss:.4f}", **{"tok/s": f"{tps:,.0f}"})

    def close(self) -> None:
        self.p.close()


def trackers(name: str) -> list[str] | None:
    if name in ("none", "", None):
        return None
    if name == "auto":
        try:
            import tensorboard  # noqa: F401

            return ["tensorboard"]
        except ImportError:
            return None
    return [name]


def dist_state():
    """accelerate's process state. On a machine without a GPU (or with ``ACCELERATE_USE_CPU``) it is created with
    ``cpu=True``, so that ``accelerate launch`` gives multi-process CPU DDP (gloo) rather than N lone processes."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def say(msg: str) -> None:
    """A status line on stderr (stdout stays clean for machine-readable output)."""

    print(msg, file=sys.stderr, flush=True)


class StopOnTerm:
    """While the training loop runs, SIGTERM asks it to stop after the current optimizer step (the step is then saved
    as a checkpoint, as on Ctrl-C). A flag rather than an exception: raising inside ``optimizer.step()`` could leave
    half-updated weights that would be saved as a finished step."""

    def __init__(self):
        self.requested = False
        self._prev = None
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)
            self._prev = None


def make_accelerator(mixed_precision: str, project_dir: Path, log_with: list[str] | None):
    """The training loop's ``Accelerator``: ``mixed_precision`` no|bf16|fp16 (auto: resolved by
    :func:`lora_spec.precision.resolve_precision` for this device); DDP without unused-parameter search (every
    trainable weight gets a gradient)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    mp = mixed_precision
    if mp == "auto":
        mp = resolve_precision("auto").mixed_precision
    if fsdp_requested():  # before accelerate builds its FSDP plugin from the same settings
        _fsdp_version_check()
    dist_state()
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mp:
        # an earlier fit in this process (the Python API, a notebook) ran in another precision: accelerate keeps one
        # AcceleratorState per process and refuses to change it, so its precision is reset (the process group stays)
        AcceleratorState._reset_state()
    acc = Accelerator(mixed_precision=mp, log_with=log_with, project_dir=str(project_dir),
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    _fsdp_setup(acc, mp)
    return acc


def fsdp_requested() -> bool:
    """``accelerate launch --use_fsdp`` (or a config file with ``distributed_type: FSDP``) asked for FSDP."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _fsdp_version_check() -> None:
    version = os.environ.get("FSDP_VERSION", "1")  # accelerate's default is 1
    if version.strip() != "2":
        raise ConfigError(f"FSDP version {version}: lorasp fit runs FSDP2 only; set fsdp_version: 2 in the "
                          f"accelerate config (or accelerate launch --fsdp_version 2)")


def _fsdp_setup(acc, mixed_precision: str) -> None:
    """FSDP is accelerate's own (``FullyShardedDataParallelPlugin``, torch's ``fully_shard``), version 2 only (lorasp's
    checkpoints read and write FSDP2's DTensor parameters). accelerate 1.16 selects FSDP only for accelerator devices:
    with CPU processes (gloo) its state says MULTI_CPU and ``prepare`` would wrap DDP, although torch's
    ``fully_shard`` runs on CPU with gloo. So when FSDP was asked for on CPU, the state is switched to FSDP with
    accelerate's plugin built from the launch's ``FSDP_*`` settings; the wrapping, sharding and gathering that follow
    are accelerate's and torch's."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not fsdp_requested() or acc.num_processes < 2:
        return
    if acc.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)
        state = AcceleratorState()
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
