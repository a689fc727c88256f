"""``lorasp generate`` (the stage: :class:`lora_spec.adapters.swap.AdapterSet` and its ``GenerateConfig``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..adapters.swap import GenerateConfig
from ..config import config_options
from ..errors import ConfigError, DataError
from ..precision import resolve_precision
from ..records import read_text
from . import quiet_transformers, say


def _parse_adapters(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for s in specs:
        if "=" not in s:
            raise ConfigError(f"--adapter {s!r}: expected NAME=DIR")
        name, path = s.split("=", 1)
        if not name or not path:
            raise ConfigError(f"--adapter {s!r}: expected NAME=DIR")
        out.append((name, path))
    return out


def _read_prompts(path: str) -> tuple[list[str], list[str | None]]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: prompts file not found")
    prompts, names = [], []

    for i, line in enumerate(read_text(p, "prompts, one per line or JSONL").splitlines(), 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{i}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise DataError(f"{p}:{i}: field 'prompt': expected a string")
            prompts.append(obj["prompt"])
            names.append(obj.get("adapter"))
        else:
            prompts.append(line)
            names.append(None)
    return prompts, names


@click.command("generate")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per prompt.")
@config_options(GenerateConfig)
def generate_cmd(as_json, cfg: GenerateConfig):
    """Greedy generation with a base model and any number of adapters on it.

    Each prompt is a question; by default it is put into the prompt format the adapter was trained on (its
    main format in lorasp.json, e.g. zs_cot: chat template, system message, "Let's think step by step" at the
    start of the answer), so the adapter sees what it learned to continue. --mode raw sends the text as given.

    \b
    lorasp generate --adapter math=adapters/arith-lora --prompt "Tom has 12 marbles ..."
    lorasp generate --adapter math=adapters/a --adapter other=adapters/b --use math --prompt "..."
    lorasp generate --adapter math=a --prompt P1 --prompt P2 --use math --use base   # mixed batch
    lorasp generate --model smollm2-135m --mode raw --prompt "The capital of France is"
    """
    adapters = _parse_adapters(cfg.adapter)
    prompts = list(cfg.prompt)
    file_names: list[str | None] = [None] * len(prompts)
    if cfg.prompts_file:
        ps, ns = _read_prompts(cfg.prompts_file)
        prompts += ps
        file_names += ns
    if not prompts:
        raise ConfigError("no prompt: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    if not adapters and not cfg.model:
        raise ConfigError("nothing to load: pass --model and/or --adapter NAME=DIR")
    if len(cfg.use) > 1 and len(cfg.use) != len(prompts):
        raise ConfigError(f"--use given {len(cfg.use)} times for {len(prompts)} prompts: give it once (all "
                          f"prompts) or once per prompt (a mixed batch)")
    default = cfg.use[0] if len(cfg.use) == 1 else (adapters[0][0] if adapters else "base")
    rows = list(cfg.use) if len(cfg.use) > 1 else [n or default for n in file_names]
    known = ["base"] + [n for n, _ in adapters]
    for n in rows:
        if n not in known:
            raise ConfigError(f"unknown adapter {n!r} (loaded: {', '.join(known)})")
    quiet_transformers()
    from ..adapters.swap import AdapterSet

    precision = resolve_precision(cfg.precision)
    aset = AdapterSet(cfg.model, adapters, quant=None if cfg.quant == "auto" else cfg.quant,
                      ignore_fingerprint=cfg.ignore_fingerprint, dtype=precision.dtype)
    prepared = aset.prepare(prompts, adapters=rows, mode=cfg.mode, chat=cfg.chat, data_dir=cfg.data_dir)
    if not as_json:
        say(f"precision: {precision.line()}")
    modes = sorted({p.mode for p in prepared})
    if cfg.mode == "auto" and not as_json:
        say(f"mode: {', '.join(modes)} (as the adapter was trained; --mode raw sends the prompt as given)")
    outs = aset.generate(prompts, adapters=rows, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                         stop=cfg.stop or None, chat=cfg.chat, mode=cfg.mode, data_dir=cfg.data_dir,
                         calculator=cfg.calculator)
    for p, name, o, prep in zip(prompts, rows, outs, prepared):
        if as_json:
            click.echo(json.dumps({"adapter": name, "mode": prep.mode, "prompt": p, "input": prep.text,
                                   "completion": o}, ensure_ascii=False))
        elif len(prompts) == 1:
            click.echo(o)
        else:
            click.echo(f"[{name}] {p}\n{o}\n")
    return 0

