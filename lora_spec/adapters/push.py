"""``lorasp push``: upload an artifact to the Hugging Face Hub with ``huggingface_hub`` (create the repo, upload the
folder in one commit).

Before anything is sent, the artifact is staged in a temporary copy that is made Hub-ready: an adapter's
``adapter_config.json`` must name its base by a Hub id (``base_model_name_or_path``; ``--base-model ID`` sets it for
a base loaded from a local directory or an artifact written before lorasp recorded Hub ids), and a model card
without the Hub's metadata header is re-rendered from ``lorasp.json``. A base that is only a local path is refused
with one line: on the Hub the adapter could not find its base. The artifact itself is not modified.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..artifact_files import read_manifest
from ..errors import ConfigError, ModelError, one_line
from .artifact import read_adapter_config, set_base_hub_id


def _is_hub_id(s: Any) -> bool:
    return (isinstance(s, str) and s.count("/") == 1 and not s.startswith((".", "/", "~"))
            and not Path(s).expanduser().exists() and all(part for part in s.split("/")))


def stage(artifact: str | os.PathLike, directory: str | os.PathLike, *, base_model: str | None = None) -> dict[str, Any]:
    """Copy ``artifact`` into ``directory`` and make the copy Hub-ready; returns its (possibly updated) manifest."""
    from .card import model_card

    src = Path(artifact)
    manifest = read_manifest(src)
    if base_model is not None and not _is_hub_id(base_model):
        raise ConfigError(f"--base-model {base_model!r}: expected a Hub id (ORG/NAME)")
    dst = Path(directory)
    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
    kind = manifest.get("kind", "adapter")
    if base_model is not None:
        manifest = {**manifest, "base": {**(manifest.get("base") or {}), "hub_id": base_model}}
    cfg = None
    if kind in ("adapter", "combined"):
        cfg = set_base_hub_id(dst, manifest)
        base = cfg.get("base_model_name_or_path")
        if not _is_hub_id(base):
            raise ConfigError(f"{src / 'adapter_config.json'}: base_model_name_or_path {base!r} is not a Hub id, so "
                              f"the adapter would not find its base on the Hub; pass --base-model ORG/NAME")
        if base_model is not None:
            (dst / "lorasp.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    readme = dst / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    if not text.startswith("---\n") or base_model is not None:
        readme.write_text(model_card(manifest, cfg if cfg is not None else
                                     (read_adapter_config(dst) if (dst / "adapter_config.json").exists() else None),
                                     src.resolve().name), encoding="utf-8")
    return manifest


def push(artifact: str | os.PathLike, repo: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, base_model: str | None = None, token_env: str = "HF_TOKEN",
         endpoint: str | None = None, log: Callable[[str], None] | None = None) -> str:
    """Upload ``artifact`` to the Hub model repo ``repo`` (created if missing); returns the commit URL."""
    log = log or (lambda s: None)
    if not _is_hub_id(repo):
        raise ConfigError(f"REPO {repo!r}: expected a Hub repo id ORG/NAME")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ModelError("lorasp push needs huggingface_hub (pip install huggingface_hub)") from None
    token = os.environ.get(token_env) or None  # None: huggingface_hub's own login (huggingface-cli login)
    with tempfile.TemporaryDirectory(prefix="lorasp-push-") as tmp:
        staged = Path(tmp) / Path(artifact).resolve().name
        manifest = stage(artifact, staged, base_model=base_model)
        files = sorted(p.name for p in staged.iterdir())
        log(f"uploading {len(files)} files ({', '.join(files)}) to {repo}")
        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(staged), revision=revision,
                                     commit_message=commit_message or
                                     f"lorasp {manifest.get('kind', 'adapter')} {staged.name}")
        except Exception as exc:
            raise ModelError(f"push to {repo} failed ({type(exc).__name__}: {one_line(exc)[:300]})") from None
    return str(getattr(info, "commit_url", None) or info)
