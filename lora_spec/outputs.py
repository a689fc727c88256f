"""What lorasp may write over, and who may write: the output policy and the run lock.

**Output policy** (every command that writes a directory calls :func:`check_output` before it loads a model or
does any work):

* a path that does not exist, or an empty directory: written;
* an existing lorasp output of the kind the command writes (an adapter/full artifact for ``fit``, a merged model
  for ``merge``, a combined adapter for ``combine``, eval results for ``eval``): replaced only with
  ``--overwrite``; the new output is written beside it and renamed into place, and the old one is removed only
  after the new one is complete (:func:`lora_spec.adapters.artifact.atomic_dir`);
* an interrupted eval (its eval journal, :mod:`lora_spec.eval_journal`) or teach run: continued by rerunning the
  command (``lorasp eval --overwrite`` starts it over);
* anything else (a directory that is not a lorasp output or is another kind of lorasp output, a regular file,
  an input of the same command such as ``--data`` or a parent adapter, or a directory that holds one) is refused
  with one line and never touched.

**Run lock** (:class:`RunLock`): a teach run directory and a fit checkpoint directory are written by one process
at a time. ``.lorasp.lock`` in the directory is held with ``fcntl.flock`` (released by the kernel when the process
dies, even by ``kill -9``) and holds the owner's pid and host. A second process is refused with one line naming
the owner; a lock file left by a dead process is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Iterable

from .errors import LoraspError, one_line
from .eval_journal import JOURNAL_DIR

LOCK_FILE = ".lorasp.lock"

# what each command writes, as the kinds :func:`output_kind` reports
WRITES = {
    "fit": ("adapter", "full"),
    "merge": ("merged",),
    "combine": ("combined",),
    "eval": ("eval", "eval_partial"),
    "teach": ("teach",),
    "checkpoints": ("checkpoints",),  # fit's <out>.checkpoints
    "export": ("export",),
}
_DESCRIBE = {"adapter": "a lorasp adapter artifact", "full": "a lorasp full fine-tune artifact",
             "merged": "a lorasp merged model", "combined": "a lorasp combined adapter",
             "eval": "lorasp eval results", "eval_partial": "an interrupted lorasp eval",
             "teach": "a lorasp teach run", "checkpoints": "lorasp fit checkpoints",
             "checkpoint": "a lorasp fit checkpoint", "export": "a lorasp export"}


class OutputError(LoraspError):
    """An output path lorasp refuses to write to (exit code 2: nothing was done)."""

    exit_code = 2


def output_kind(path: str | os.PathLike) -> str | None:
    """What lorasp output lives at ``path``: adapter | full | merged | combined | eval | teach | checkpoints |
    checkpoint, ``"empty"`` for an empty directory, ``None`` for a missing path, ``"file"`` for anything that is not
    a directory, ``"foreign"`` for a directory that is not a lorasp output."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return None
    if not p.is_dir() or p.is_symlink():
        return "file"
    try:
        names = {c.name for c in p.iterdir()}
    except OSError:
        return "foreign"
    if not names:
        return "empty"
    if "lorasp.json" in names:
        try:
            kind = json.loads((p / "lorasp.json").read_text(encoding="utf-8")).get("kind", "adapter")
        except (OSError, ValueError, AttributeError):
            return "foreign"
        return kind if kind in ("adapter", "full", "merged", "combined") else "foreign"
    if "export.json" in names:  # lorasp export (GGUF + Modelfile)
        return "export"
    if "store.sqlite" in names or {"manifest.json", "problems.jsonl"} <= names:
        return "teach"
    if JOURNAL_DIR in names and names <= {JOURNAL_DIR, LOCK_FILE, ".results.json.tmp", "predictions",
                                          "results.json", "report.md"}:
        # lora_spec.eval_journal: rerunning the eval continues it. Beside results.json the journal is that of an
        # `eval --overwrite` cut before it replaced them (a complete eval removes its journal): continued too
        return "eval_partial"
    if "results.json" in names and ("predictions" in names or "report.md" in names):
        return "eval"
    if re.fullmatch(r"step-\d+", p.name):  # a checkpoint of lora_spec.trainer (complete or not)
        return "checkpoint"
    if names <= {LOCK_FILE}:
        return "empty"
    if all(n.startswith(("step-", ".step-", "logs", "train_log", ".lorasp", "heldout_predictions.jsonl",
                         ".heldout_predictions.jsonl")) for n in names):
        return "checkpoints"  # fit's <out>.checkpoints (possibly of a run that stopped before its first save)
    return "foreign"


def _contains(parent: Path, child: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(out: str | os.PathLike | None, command: str, *, overwrite: bool = False, flag: str = "--out",
                 inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """Refuse (``OutputError``, one line) an output path that ``command`` must not write; return it resolved.

    ``inputs`` are ``(flag, path)`` pairs of the command's inputs: ``out`` may neither be one nor hold one.
    """
    if out is None or str(out).strip() == "":
        raise OutputError(f"{flag}: an output directory is required")
    raw = Path(os.path.expanduser(str(out)))
    res = raw.resolve()
    if res == Path(res.anchor):
        raise OutputError(f"{flag} {out}: the file system root cannot be an output directory")
    for iflag, ipath in inputs:
        if not ipath:
            continue
        ip = Path(os.path.expanduser(str(ipath)))
        if not ip.exists():
            continue
        ires = ip.resolve()
        if ires == res:
            raise OutputError(f"{flag} {out}: is the input {iflag} {ipath} of this command; lorasp never writes "
                              f"over its own input (choose another {flag})")
        if _contains(res, ires):
            raise OutputError(f"{flag} {out}: holds the input {iflag} {ipath} of this command; lorasp never "
                              f"replaces it (choose another {flag})")
    if res == Path.cwd() or _contains(res, Path.cwd()):
        raise OutputError(f"{flag} {out}: is the current directory (or holds it); choose a new directory")
    kind = output_kind(raw)
    if kind in (None, "empty"):
        return res
    if kind == "file":
        raise OutputError(f"{flag} {out}: exists and is not a directory; lorasp does not replace it "
                          f"(choose another {flag})")
    allowed = WRITES[command]
    if kind == "foreign":
        sample = sorted(c.name for c in raw.iterdir())[:3]
        raise OutputError(f"{flag} {out}: a directory that is not a lorasp output (holds {', '.join(sample)}"
                          f"{', ...' if len(sample) == 3 else ''}); lorasp never writes into it (choose a new or "
                          f"empty directory)")
    if kind not in allowed:
        raise OutputError(f"{flag} {out}: holds {_DESCRIBE.get(kind, kind)}, not what 'lorasp {command}' writes; "
                          f"lorasp never replaces it (choose another {flag})")
    if command in ("teach", "checkpoints") or kind == "eval_partial":  # resumed (or managed by fit), not replaced
        return res
    if not overwrite:
        raise OutputError(f"{flag} {out}: holds {_DESCRIBE[kind]} from an earlier run; pass --overwrite to "
                          f"replace it (the old one is removed only once the new one is complete), or choose "
                          f"another {flag}")
    return res


# --------------------------------------------------------------------------------------------- stopping

def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_signals():
    """SIGTERM (kill, schedulers) stops a run like Ctrl-C; so does SIGINT, even when the process inherited it
    ignored (a background job: Python then installs no KeyboardInterrupt handler, and `kill -INT` would do
    nothing). Only in the main thread; the previous handlers come back afterwards. ``teach`` and ``eval`` stop
    through it, keeping what they finished (the sample store, the eval journal) and releasing their run lock."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    prev_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    prev_int = signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, prev_term)
        signal.signal(signal.SIGINT, prev_int)


# --------------------------------------------------------------------------------------------- run lock

def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory (``with RunLock(dir, "teach run"): ...``).

    Raises ``LoraspError`` naming the owner (pid, host) if another live process holds it. Re-entrant within one
    process (a fit that teaches in-process into its own directory does not lock itself out).
    """

    _held: dict[str, int] = {}

    def __init__(self, directory: str | os.PathLike, what: str = "run directory",
                 warn=None):
        self.dir = Path(directory)
        self.what = what
        self.path = self.dir / LOCK_FILE
        self.fd: int | None = None
        self._warn = warn or (lambda m: print(f"warning: {one_line(m)}", file=sys.stderr, flush=True))

    def acquire(self) -> "RunLock":
        key = str(self.path.resolve()) if self.path.parent.exists() else str(self.path.absolute())
        if RunLock._held.get(key):
            RunLock._held[key] += 1
            self._key = key
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock (lorasp targets Linux/macOS)
            self._key = None
            return self
        self._created = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_owner(fd)
            os.close(fd)
            who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}" if owner else "another process"
            raise LoraspError(f"{self.dir}: this {self.what} is in use by {who} (lock {self.path}); wait for it "
                              f"to finish or stop it, or use another directory") from None
        old = _read_owner(fd)
        if old and old.get("pid") != os.getpid():
            same_host = old.get("host") == socket.gethostname()
            state = "no longer running" if same_host and not _pid_alive(int(old.get("pid") or 0)) else \
                "not holding it any more"
            self._warn(f"{self.dir}: taking over the stale lock of pid {old.get('pid')} on {old.get('host')} "
                       f"({state}; it did not finish cleanly)")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "argv": sys.argv[:8]}).encode() + b"\n")
        os.fsync(fd)
        self.fd = fd
        self._key = key
        RunLock._held[key] = 1
        return self

    def release(self) -> None:
        key = getattr(self, "_key", None)
        if key is None:
            return
        RunLock._held[key] -= 1
        if RunLock._held[key] > 0:
            return
        del RunLock._held[key]
        if self.fd is not None:
            import fcntl

            try:  # emptied, not removed: unlinking a locked file lets two processes lock two different files
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            if getattr(self, "_created", False) and [c.name for c in self.dir.iterdir()] == [LOCK_FILE]:
                # nothing was written (the run stopped at a check): leave no trace of the directory
                self.path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.dir.rmdir()
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 4096)
        return json.loads(data.decode() or "{}") if data.strip() else {}
    except (OSError, ValueError):
        return {}


__all__ = ["check_output", "output_kind", "OutputError", "RunLock", "WRITES", "LOCK_FILE"]
