"""The files of a lorasp artifact, below everything that writes one: ``lorasp.json`` (:data:`MANIFEST`) read and
written, and :func:`atomic_dir`, the one atomic directory writer (a temporary sibling renamed into place, foreign
files kept, crash residue removed, a full disk named). Adapters, checkpoints, merges, exports and the report all
use these; this module imports only ``lora_spec.errors`` and ``lora_spec.outputs``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError, LoraspError, one_line
from .outputs import OutputError, clean_residue, foreign_names, output_kind, restore_foreign

MANIFEST = "lorasp.json"


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: tuple[str, ...] | None = None,
               warn=None) -> Iterator[Path]:
    """Yield a temp sibling of ``final``; on success it replaces ``final`` in one rename, on error it is removed.

    An existing ``final`` is replaced only if it is empty or a lorasp output of a kind in ``replace`` (default: any
    lorasp artifact or checkpoint, see :func:`lora_spec.outputs.output_kind`), and it is removed only after the new
    directory is complete. Anything else (a regular file, a directory lorasp did not write) is never touched: the
    commands refuse such an ``--out`` up front (``lora_spec.outputs.check_output``); this is the last line of defence.
    Files in ``final`` that lorasp did not write (a user's notes, a GGUF kept beside a Modelfile) are moved into the
    new directory unchanged, and ``warn`` says so. Temporary directories that an earlier, killed write of
    ``final`` left beside it are removed first. A full disk is one line naming the file and the disk.
    """
    final = Path(final)
    if not final.name or final.name in (".", ".."):
        raise OutputError(f"{final}: not a usable directory name for an output")
    if final.is_symlink():  # a symlinked output: the target is written (the link stays)
        final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    say = warn or (lambda m: print(f"note: {one_line(m)}", file=sys.stderr, flush=True))

    def check() -> str | None:
        kind = output_kind(final)
        ok = replace or ("adapter", "full", "merged", "combined", "checkpoint")
        if kind not in (None, "empty") and kind not in ok:
            what = "a regular file" if kind == "file" else f"a {kind} directory"
            raise OutputError(f"{final}: exists and is {what}; lorasp does not replace it")
        return kind

    check()
    clean_residue(final, say)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}")
    tmp.mkdir()
    try:
        try:
            yield tmp
            readable_modes(tmp)
        except OSError as exc:
            raise disk_error(exc, tmp, final) or exc
        except Exception as exc:
            err = disk_error(exc, tmp, final)
            if err is None:
                raise
            raise err from None
        kind = check()
        if kind is not None:  # an earlier output, or an empty directory (one that holds only its writer's lock)
            foreign = foreign_names(final, kind)
            clash = [n for n in foreign if (tmp / n).exists() or (tmp / n).is_symlink()]
            if clash:
                raise OutputError(f"{final / clash[0]}: lorasp did not write it, and the new output has a file of "
                                  f"that name; move it out of {final} first (nothing was replaced)")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            kept = restore_foreign(old, final, kind) if foreign else []
            shutil.rmtree(old, ignore_errors=True)
            if kept:
                say(f"{final}: replaced lorasp's files; kept {len(kept)} file{'s' if len(kept) > 1 else ''} lorasp "
                    f"did not write: {', '.join(kept[:5])}{', ...' if len(kept) > 5 else ''}")
        else:
            os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_DISK_FULL = ("no space left", "file too large", "disk quota", "requested and", "enospc", "efbig")


def disk_error(exc: BaseException, tmp: Path, final: Path | None = None):
    """A full disk (``ENOSPC``), a file size limit (``EFBIG``, ``ulimit -f``) or a quota, met while writing output
    ``final`` in its temporary directory ``tmp``, as one ``LoraspError`` naming the file (under its final name;
    the output itself when the library's error names no file and left none behind); None for any other error."""

    code = getattr(exc, "errno", None)
    text = one_line(exc)
    low = text.lower()
    if code not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) and not any(k in low for k in _DISK_FULL):
        return None
    final = Path(final) if final is not None else Path(tmp)
    name = getattr(exc, "filename", None)
    if not name:
        files = [p for p in Path(tmp).rglob("*") if p.is_file()] if Path(tmp).exists() else []
        name = str(max(files, key=lambda p: p.stat().st_mtime_ns)) if files else None
    if name:
        with contextlib.suppress(ValueError):
            name = str(final / Path(name).relative_to(tmp))  # the temporary directory is gone by now
        what = f"{name}: cannot write it"
    else:
        what = f"{final}: cannot write its files"
    why = ("the file size limit was reached (ulimit -f)" if code == errno.EFBIG or "too large" in low
           else "the disk is full")
    return LoraspError(f"{what}: {why} ({text[:120]}); free space (or raise the limit) and rerun: nothing was "
                       f"replaced")


def readable_modes(directory: str | os.PathLike) -> None:
    """Give every file and folder under ``directory`` the modes the user's umask gives a new file (0644 / 0755
    under the usual 022): some writers (safetensors) create their files 0600, which other users and services
    (an inference server) then cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    d = Path(directory)
    os.chmod(d, 0o777 & ~mask)
    for p in d.rglob("*"):
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    p = Path(directory) / MANIFEST
    tmp = p.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def read_json_object(p: Path) -> dict[str, Any]:
    """A JSON file holding one object; bad JSON or another type is a ``DataError`` naming file:line."""
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected a JSON object")
    return data


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    p = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise DataError(f"{directory}: not a directory (expected a lorasp artifact)")
    if not p.exists():
        raise DataError(f"{directory}: not a lorasp artifact (no {MANIFEST})")
    data = read_json_object(p)
    if "base" not in data:
        raise DataError(f"{p}: missing field 'base'")
    return data


