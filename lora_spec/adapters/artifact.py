"""The adapter artifact on disk: PEFT's own files plus ``lorasp.json`` (manifest) and ``README.md`` (model card).

A full fine-tune artifact holds ``model.safetensors`` + config + tokenizer instead of the adapter files. Every
artifact is written into a temporary sibling directory and renamed into place, so that a crash never leaves a
half-written artifact under the final name.

``lorasp.json`` fields (all optional except ``kind`` and ``base``)::

    lorasp_version, kind ("adapter" | "full" | "merged" | "combined"),
    base {name, path, kind ("causal"|"seq2seq"), fingerprint {config, tokenizer, weights, id}},
    quant, method, peft {r, alpha, dropout, targets}, formats {format: weight}, loss,
    data {source, fingerprint, n_examples}, selection {rule, chosen_step}, checkpoints [{step, loss, scores}],
    train {...}, versions {torch, transformers, peft, bitsandbytes, accelerate}, parents [...], created
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError

MANIFEST = "lorasp.json"


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Yield a temp sibling of ``final``; on success it replaces ``final`` in one rename, on error it is removed.

    An existing ``final`` is replaced only if it is empty or a lorasp output of a kind in ``replace`` (default: any
    lorasp artifact or checkpoint, see :func:`lora_spec.outputs.output_kind`), and it is removed only after the new
    directory is complete. Anything else (a regular file, a directory lorasp did not write) is never touched: the
    commands refuse such an ``--out`` up front (``lora_spec.outputs.check_output``); this is the last line of defence.
    """
    from ..outputs import OutputError, output_kind

    final = Path(final)
    if not final.name or final.name in (".", ".."):
        raise OutputError(f"{final}: not a usable directory name for an output")
    final.parent.mkdir(parents=True, exist_ok=True)

    def check() -> str | None:
        kind = output_kind(final)
        ok = replace or ("adapter", "full", "merged", "combined", "checkpoint")
        if kind not in (None, "empty") and kind not in ok:
            what = "a regular file" if kind == "file" else f"a {kind} directory"
            raise OutputError(f"{final}: exists and is {what}; lorasp does not replace it")
        return kind

    check()
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}")
    tmp.mkdir()
    try:
        yield tmp
        readable_modes(tmp)
        if check() is not None:
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("lorasp", "torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


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


def is_artifact(directory: str | os.PathLike) -> bool:
    return (Path(directory) / MANIFEST).exists()
