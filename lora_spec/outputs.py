"""What lorasp may write over, and who may write: the output policy and the run lock.

**Output policy** (every command that writes a directory calls :func:`check_output` before it loads a model or
does any work):

* a path that does not exist, or an empty directory: written;
* an existing lorasp output of the kind the command writes (an adapter/full artifact for ``fit``, a merged model
  for ``merge``, a combined adapter for ``combine``, eval results for ``eval``): replaced only with
  ``--overwrite``; the new output is written beside it and renamed into place, and the old one is removed only
  after the new one is complete (:func:`lora_spec.artifact_files.atomic_dir`);
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
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
import threading
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


TEACH_FORMAT = "lorasp-teach-run/1"  # manifest.json's "format": the marker of a teach run directory
EXPORT_FORMAT = "lorasp-export/1"  # export.json's "format_id": the marker of an export directory

# what lorasp itself writes in an output of each kind: anything else in it is the user's (foreign) and is never
# deleted or changed (an --overwrite moves it into the new output unchanged and says so)
_ARTIFACT_FILES = {"lorasp.json", "README.md", "report.md", "curves.png", "heldout_predictions.jsonl",
                   "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json", "config.json",
                   "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "spiece.model", "tokenizer.model", "vocab.txt"}
_ARTIFACT_PATTERNS = (r"model-\d+-of-\d+\.safetensors", r"pytorch_model-\d+-of-\d+\.bin")
OWN_FILES = {"adapter": _ARTIFACT_FILES, "full": _ARTIFACT_FILES, "merged": _ARTIFACT_FILES,
             "combined": _ARTIFACT_FILES, "export": {"export.json", "Modelfile", "adapter.gguf", "model.gguf"}}
_MARKED = ("adapter", "full", "merged", "combined", "export", "teach", "eval", "eval_partial")


def _real(p: Path) -> Path:
    """``p`` with a symlink (of the path itself or of a parent) followed to its target: every rule applies to the
    directory that is written, not to the link's name."""
    try:
        return p.resolve() if p.is_symlink() or p.exists() else p
    except (OSError, RuntimeError):  # a link loop
        return p


def _json_object(p: Path) -> dict | None:
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_teach_manifest(p: Path) -> bool:
    """A teach run's manifest.json: its format id (or, written before the id existed, lorasp's version and its
    file table naming store.sqlite)."""
    m = _json_object(p)
    if m is None:
        return False
    if m.get("format") == TEACH_FORMAT:
        return True
    return bool(m.get("lorasp_version")) and (m.get("files") or {}).get("store") == "store.sqlite"


def is_sample_store(p: Path) -> bool:
    """``store.sqlite`` written by lorasp (its ``meta`` table holds the sample store's schema version); a user's own
    SQLite database (or any other file of that name) is not."""

    if not p.is_file():
        return False
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"meta", "samples"} <= tables:
                return False
            return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is not None
        finally:
            db.close()
    except sqlite3.Error:
        return False


def output_kind(path: str | os.PathLike) -> str | None:
    """What lorasp output lives at ``path``: adapter | full | merged | combined | eval | teach | checkpoints |
    checkpoint, ``"empty"`` for an empty directory, ``None`` for a missing path, ``"file"`` for anything that is not
    a directory, ``"foreign"`` for a directory that is not a lorasp output. A symlink is followed to its target.

    A directory is lorasp's only by a marker lorasp alone writes: ``lorasp.json``'s ``kind`` (artifacts),
    ``manifest.json``'s format id or a lorasp sample store (teach runs), ``export.json``'s format id (exports)."""
    p = _real(Path(path))
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
        m = _json_object(p / "lorasp.json")
        kind = m.get("kind", "adapter") if m is not None else None
        return kind if kind in ("adapter", "full", "merged", "combined") else "foreign"
    if "export.json" in names:  # lorasp export (GGUF + Modelfile)
        m = _json_object(p / "export.json")
        if m is not None and (m.get("format_id") == EXPORT_FORMAT or "lorasp" in (m.get("versions") or {})):
            return "export"
        return "foreign"
    if "manifest.json" in names and is_teach_manifest(p / "manifest.json"):
        return "teach"
    if "store.sqlite" in names and "manifest.json" not in names and is_sample_store(p / "store.sqlite"):
        return "teach"  # a teach run stopped (kill -9) before its first manifest
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


def own_name(kind: str, name: str, listed: Iterable[str] = ()) -> bool:
    """Whether ``name`` in an output of ``kind`` is lorasp's (else the user's): lorasp's fixed names for the kind,
    the names its marker lists (``listed``), its lock and its own hidden temporaries."""
    if name == LOCK_FILE or name.startswith((".lorasp", ".lorasp.json.tmp-", ".results.json.tmp")):
        return True
    own = OWN_FILES.get(kind)
    if own is None:
        return True  # kinds written in place (teach, eval, checkpoints): nothing is replaced wholesale
    return name in own or name in set(listed) or any(re.fullmatch(pat, name) for pat in _ARTIFACT_PATTERNS)


def foreign_names(path: str | os.PathLike, kind: str | None = None) -> list[str]:
    """The names in lorasp output ``path`` that lorasp did not write (sorted): they are never deleted or changed."""
    p = _real(Path(path))
    kind = kind or output_kind(p)
    if kind not in OWN_FILES or not p.is_dir():
        return []
    listed: list[str] = []
    if kind == "export":
        listed = list((_json_object(p / "export.json") or {}).get("files") or [])
    return sorted(c.name for c in p.iterdir() if not own_name(kind, c.name, listed))


def enclosing_output(path: Path) -> tuple[Path, str] | None:
    """The nearest folder above ``path`` that is a lorasp output (by its marker), and its kind: nothing lorasp
    writes goes inside another output."""
    for parent in path.parents:
        if parent == Path(parent.anchor):
            break
        kind = output_kind(parent)
        if kind in ("eval", "eval_partial") and "lorasp_version" not in (_json_object(parent / "results.json") or {}) \
                and not (parent / JOURNAL_DIR).is_dir():
            continue  # eval results are told by their names: above an --out only lorasp's own results.json counts
        if kind in _MARKED:
            return parent, kind
    return None


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
    res = raw.resolve()  # a symlink resolves to its target: every rule below is about the target
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
    around = enclosing_output(res)
    if around is not None:
        raise OutputError(f"{flag} {out}: is inside {around[0]}, which holds {_DESCRIBE.get(around[1], around[1])}; "
                          f"lorasp never writes into another output (choose a directory outside it)")
    kind = output_kind(res)
    if kind in (None, "empty"):
        return res
    if kind == "file":
        raise OutputError(f"{flag} {out}: exists and is not a directory; lorasp does not replace it "
                          f"(choose another {flag})")
    allowed = WRITES[command]
    if kind == "foreign":
        sample = sorted(c.name for c in res.iterdir())[:3]
        raise OutputError(f"{flag} {out}: a directory that is not a lorasp output (holds {', '.join(sample)}"
                          f"{', ...' if len(sample) == 3 else ''}); lorasp never writes into it (choose a new or "
                          f"empty directory)")
    if kind not in allowed:
        raise OutputError(f"{flag} {out}: holds {_DESCRIBE.get(kind, kind)}, not what 'lorasp {command}' writes; "
                          f"lorasp never replaces it (choose another {flag})")
    if command in ("teach", "checkpoints") or kind == "eval_partial":  # resumed (or managed by fit), not replaced
        return res
    if not overwrite:
        foreign = foreign_names(res, kind)
        keep = (f" ({foreign[0]}{' and ' + str(len(foreign) - 1) + ' more' if len(foreign) > 1 else ''}, which "
                f"lorasp did not write, would be kept)") if foreign else ""
        raise OutputError(f"{flag} {out}: holds {_DESCRIBE[kind]} from an earlier run; pass --overwrite to "
                          f"replace lorasp's files in it{keep} (the old ones are removed only once the new ones are "
                          f"complete), or choose another {flag}")
    return res


@contextlib.contextmanager
def claim_output(out: str | os.PathLike | None, command: str, *, overwrite: bool = False, flag: str = "--out",
                 inputs: Iterable[tuple[str, str | os.PathLike | None]] = (), what: str | None = None):
    """:func:`check_output`, then the run lock on the output, then the check again (another process may have
    written it in between): one writer per output, for every command that replaces its output whole (merge,
    combine, export). Yields the resolved output path."""
    res = check_output(out, command, overwrite=overwrite, flag=flag, inputs=inputs)
    with RunLock(res, what or f"{command} output directory"):
        check_output(out, command, overwrite=overwrite, flag=flag, inputs=inputs)
        yield res


# --------------------------------------------------------------------------------------------- crash residue

def residue(final: Path) -> list[Path]:
    """Temporary directories an earlier write of ``final`` left beside it when its process died (``kill -9``, a
    power cut): ``.NAME.tmp-PID-*`` and ``.NAME.old-PID`` whose PID is no longer running."""
    out = []
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return []
    for p in siblings:
        m = re.fullmatch(re.escape(f".{final.name}.") + r"(?:tmp-(\d+)-\w+|old-(\d+))", p.name)
        if m and p.is_dir() and not p.is_symlink():
            pid = int(m.group(1) or m.group(2))
            if pid != os.getpid() and not pid_alive(pid):
                out.append(p)
    return out


def clean_residue(final: Path, warn=None) -> int:
    """Remove :func:`residue` of ``final`` and say so; an ``.old-`` copy first gives the files lorasp did not write
    back to ``final`` (one that cannot is left where it is, with a warning). Returns how many were removed."""

    say = warn or (lambda m: print(f"note: {one_line(m)}", file=sys.stderr, flush=True))
    gone = 0
    for p in residue(final):
        if ".old-" in p.name:
            kind = output_kind(p)
            try:
                if kind not in OWN_FILES or not final.is_dir():
                    raise OutputError(f"{p}: left by an interrupted replacement of {final}; lorasp cannot tell "
                                      f"which of its files are yours, so it leaves it (look inside, then delete it)")
                restore_foreign(p, final, kind)
            except OutputError as exc:
                say(str(exc))
                continue
        shutil.rmtree(p, ignore_errors=True)
        gone += not p.exists()
    if gone:
        say(f"removed {gone} unfinished temporary director{'y' if gone == 1 else 'ies'} an interrupted lorasp "
            f"write left beside {final}")
    return gone


def restore_foreign(old: Path, final: Path, kind: str) -> list[str]:
    """Move the files lorasp did not write from ``old`` (a replaced output of ``kind``) into ``final``; returns
    their names. A name that ``final`` already holds is refused (``OutputError``): nothing is overwritten."""
    moved = []
    for name in foreign_names(old, kind):
        if (final / name).exists() or (final / name).is_symlink():
            raise OutputError(f"{old / name}: lorasp did not write it and {final / name} exists; it is left in "
                              f"{old} (move it yourself)")
        os.rename(old / name, final / name)
        moved.append(name)
    return moved


# --------------------------------------------------------------------------------------------- stopping

def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_signals():
    """SIGTERM (kill, schedulers) stops a run like Ctrl-C; so does SIGINT, even when the process inherited it
    ignored (a background job: Python then installs no KeyboardInterrupt handler, and `kill -INT` would do
    nothing). Only in the main thread; the previous handlers come back afterwards. ``teach`` and ``eval`` stop
    through it, keeping what they finished (the sample store, the eval journal) and releasing their run lock."""

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

def pid_alive(pid: int) -> bool:
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
            state = "no longer running" if same_host and not pid_alive(int(old.get("pid") or 0)) else \
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


__all__ = ["check_output", "claim_output", "output_kind", "foreign_names", "clean_residue", "OutputError", "RunLock",
           "WRITES", "LOCK_FILE", "TEACH_FORMAT", "EXPORT_FORMAT"]
