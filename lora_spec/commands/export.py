"""``lorasp export`` (GGUF for llama.cpp / Ollama) and ``lorasp push`` (Hugging Face Hub)."""

from __future__ import annotations

import json
from typing import Literal, Optional

import click
from pydantic import Field

from ..adapters.export import export
from ..adapters.push import push
from ..config import RunConfig, config_options
from . import quiet_transformers, say


class ExportConfig(RunConfig):
    out: str = Field(description="Directory to write the GGUF file(s) and the Ollama Modelfile to.")
    format: Literal["gguf", "merged-gguf"] = Field(
        "gguf", description="gguf: an adapter becomes a llama.cpp LoRA GGUF, a merged/full model a model GGUF; "
                            "merged-gguf: merge an adapter into its base first (lorasp merge), write a model GGUF.")
    base_gguf: Optional[str] = Field(None, description="A GGUF of the same base: Modelfile FROM, checks, and the "
                                                       "tokenizer/hyper-parameters of a model GGUF (default: the "
                                                       "preset's own GGUF).")
    outtype: Literal["f32", "f16", "q8_0"] = Field("f16", description="Weight type of a model GGUF (a LoRA GGUF "
                                                                      "is always f32).")
    model: Optional[str] = Field(None, description="Base model (preset, directory, Hub id); default: the one "
                                                   "recorded in the artifact's lorasp.json.")
    ignore_fingerprint: bool = Field(False, description="Export even if the base's fingerprint differs from the "
                                                        "adapter's.")
    overwrite: bool = Field(False, description="Replace an earlier lorasp export at --out (only lorasp's own "
                                               "files; anything else in it is kept).")


@click.command("export")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@config_options(ExportConfig)
def export_cmd(artifact, as_json, cfg: ExportConfig):
    """Export ARTIFACT for llama.cpp / Ollama / LM Studio: a LoRA GGUF (or a model GGUF) plus an Ollama Modelfile.

    \b
    lorasp export adapters/arith-lora --format gguf --out gguf/arith
    llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf --lora gguf/arith/adapter.gguf
    ollama create arith -f gguf/arith/Modelfile
    """
    quiet_transformers()

    rep = export(artifact, cfg.out, fmt=cfg.format, base_gguf=cfg.base_gguf, model=cfg.model,
                 outtype=cfg.outtype, ignore_fingerprint=cfg.ignore_fingerprint, log=say,
                 overwrite=cfg.overwrite)
    if as_json:
        click.echo(json.dumps(rep.__dict__, indent=2))
        return 0
    for note in rep.notes:
        click.echo(f"note: {note}", err=True)
    what = "llama.cpp LoRA adapter" if rep.kind == "lora" else "llama.cpp model"
    click.echo(f"exported {artifact} as a {what} -> {rep.out}")
    for name, size in rep.files.items():
        click.echo(f"  {name} ({size:,} B)")
    if rep.kind == "lora" and rep.base_gguf:
        click.echo(f"base GGUF: {rep.base_gguf}")
    return 0


class PushConfig(RunConfig):
    private: bool = Field(False, description="Create the repo as private.")
    revision: Optional[str] = Field(None, description="Branch to commit to (default: main).")
    commit_message: Optional[str] = Field(None, description="Commit message.")
    base_model: Optional[str] = Field(None, description="Hub id of the base, for an artifact whose base was loaded "
                                                        "from a local directory.")
    token_env: str = Field("HF_TOKEN", description="Environment variable holding the Hub token (else "
                                                   "huggingface_hub's stored login).")
    endpoint: Optional[str] = Field(None, description="Hub endpoint (default: huggingface_hub's, HF_ENDPOINT).")


@click.command("push")
@click.argument("artifact", type=click.Path())
@click.argument("repo")
@config_options(PushConfig)
def push_cmd(artifact, repo, cfg: PushConfig):
    """Upload ARTIFACT to the Hugging Face Hub model repo REPO (ORG/NAME) with huggingface_hub.

    The upload is a Hub-ready copy: adapter_config.json names the base by its Hub id and the model card carries
    the Hub's metadata header; the artifact itself is not changed.
    """

    url = push(artifact, repo, private=cfg.private, revision=cfg.revision, commit_message=cfg.commit_message,
               base_model=cfg.base_model, token_env=cfg.token_env, endpoint=cfg.endpoint, log=say)
    click.echo(f"pushed {artifact} -> {url}")
    return 0
