"""The memory allocator of lorasp's process (see the README, "Training memory").

A training step on CPU allocates and frees gigabytes of activation tensors of 1-30 MiB. glibc's malloc serves
them two bad ways: with its default *dynamic* mmap threshold, freed blocks stay in the heap and fragment it (a
third more peak RSS); with a *fixed* small threshold every tensor is a fresh ``mmap`` whose pages the kernel
zeroes on first touch, which cost 40% of training throughput here (127.6 vs 211.6 tokens/s, same settings).
jemalloc reuses freed extents without page faults and returns them to the kernel after a decay, so it keeps both:
243 tokens/s at 2.78 GB peak where glibc gave 211.6 at 3.87 GB (``benchmarks/train_throughput.py`` settings).

jemalloc must be loaded before the process's first ``malloc`` (Debian's build cannot even be ``dlopen``-ed), so the
``lorasp`` entry point re-executes itself once with ``LD_PRELOAD`` for the commands that run models
(:data:`MODEL_COMMANDS`), when a jemalloc library is installed (``apt install libjemalloc2``, ``dnf install
jemalloc``, ``conda install jemalloc``). Nothing is downloaded and nothing changes without one: glibc's malloc
then runs with its defaults. ``LORASP_MALLOC`` chooses: ``auto`` (default), ``glibc`` (never preload), or the path
of an allocator library to preload instead (e.g. tcmalloc's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MODEL_COMMANDS = ("teach", "fit", "eval", "merge", "generate", "combine", "export")
_GUARD = "_LORASP_ALLOCATOR_EXEC"  # set in the re-executed process: never re-execute twice
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64",
             "/usr/local/lib", "/opt/homebrew/lib")
_NAMES = ("libjemalloc.so.2", "libjemalloc.so")


def _setting(env: dict[str, str]) -> str:
    return (env.get("LORASP_MALLOC") or "auto").strip()


def find_jemalloc(env: dict[str, str] | None = None) -> str | None:
    """The path of an installed jemalloc shared library (the active conda/venv prefix first), or None."""
    env = os.environ if env is None else env
    dirs = [str(Path(p) / "lib") for p in (env.get("CONDA_PREFIX"), sys.prefix) if p] + list(_LIB_DIRS)
    for d in dirs:
        for name in _NAMES:
            p = Path(d) / name
            if p.is_file():
                return str(p)
    return None


def preload_library(env: dict[str, str] | None = None) -> str | None:
    """The allocator library the entry point preloads under ``env`` (default: this process's), or None.

    ``LORASP_MALLOC=glibc`` (or ``default``/``system``): None. A path: that library (it must exist). ``auto``:
    jemalloc where installed, on Linux only (elsewhere the system allocator is not glibc's)."""
    env = os.environ if env is None else env
    setting = _setting(env)
    if setting.lower() in ("glibc", "default", "system", "none", "off"):
        return None
    if setting.lower() not in ("auto", "jemalloc"):
        return setting if Path(setting).is_file() else None
    if not sys.platform.startswith("linux"):
        return None
    return find_jemalloc(env)


def loaded_allocator() -> str:
    """Which allocator this process runs on: ``jemalloc``, ``tcmalloc``, another preloaded library's file name,
    or ``glibc`` (``system`` off Linux)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc" if sys.platform.startswith("linux") else "system"
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if f"lib{name}" in maps:
            return name
    pre = os.environ.get("LD_PRELOAD", "")
    return Path(pre.split(":")[0]).name if pre and Path(pre.split(":")[0]).name in maps else "glibc"


def allocator_line() -> str:
    """One line for dry runs and logs: the allocator this process runs on and, on glibc, how to get jemalloc."""
    name = loaded_allocator()
    if name == "glibc":
        hint = ("LORASP_MALLOC=glibc" if _setting(dict(os.environ)).lower() in ("glibc", "default", "system")
                else "no jemalloc installed; with it (apt install libjemalloc2) training is faster in less memory")
        return f"allocator glibc malloc ({hint})"
    return f"allocator {name}" + (" (preloaded by the lorasp entry point)" if os.environ.get(_GUARD) else "")


def with_allocator(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the ``LD_PRELOAD`` of :func:`preload_library` (for a child process, e.g. a benchmark's)."""
    lib = preload_library(env)
    env = dict(env)
    if lib and lib not in env.get("LD_PRELOAD", "").split(":"):
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    return env


def _command(args: list[str]) -> str | None:
    return next((a for a in args if not a.startswith("-")), None)


def reexec_with_allocator(args: list[str]) -> None:
    """At the ``lorasp`` entry point: re-execute this process with the preferred allocator preloaded, for the
    commands that run models; returns (and changes nothing) when it is loaded already, when none is installed or
    chosen, for every other command, and after one re-execution (whatever the loader did with the preload)."""
    if os.environ.get(_GUARD) or _command(args) not in MODEL_COMMANDS or "--help" in args or "-h" in args:
        return
    lib = preload_library()
    if lib is None or loaded_allocator() != "glibc":
        return
    env = with_allocator(dict(os.environ))
    env[_GUARD] = "1"
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    except OSError:  # pragma: no cover - exec refused: go on with glibc's malloc
        return


__all__ = ["MODEL_COMMANDS", "allocator_line", "find_jemalloc", "loaded_allocator", "preload_library", "reexec_with_allocator",
           "with_allocator"]
