"""``lorasp merge``, ``lorasp generate``, ``lorasp adapters list|show`` and ``lorasp combine``."""

from __future__ import annotations

import json
import sys
from typing import List, Literal, Optional

import click
from pydantic import Field

from ..config import RunConfig, config_options
from ..errors import ConfigError


def _quiet_transformers() -> None:
    """No progress bars, deprecation chatter or backend notices on the console: the commands print their own
    progress, and stderr keeps only lorasp's ``warning:``/``error:`` lines (``LORASP_DEBUG=1`` keeps everything)."""
    import logging
    import os
    import warnings

    if os.environ.get("LORASP_DEBUG"):
        return
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:  # pragma: no cover - transformers missing is reported by the command itself
        pass


def _say(msg: str) -> None:
    click.echo(msg, err=True)


# --------------------------------------------------------------------------------------------- merge

class MergeConfig(RunConfig):
    out: str = Field(description="Directory to write the merged model to (safetensors + config + tokenizer).")
    base: Literal["auto", "original", "dequantized", "quantized"] = Field(
        "auto", description="Base weights to merge into: original (full precision), dequantized (the NF4/int8 "
                            "round-trip the adapter was trained against), quantized (re-quantize; needs "
                            "--force-quantized); auto = dequantized for a quantized-trained adapter, else original.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Dtype of the merged weights.")
    safe: bool = Field(False, description="Refuse NaN/inf in the merged weights.")
    force_quantized: bool = Field(False, description="Allow merging into the still-quantized model (rounds the "
                                                     "adapter's update onto the quantization grid).")
    model: Optional[str] = Field(None, description="Base model (preset, directory, Hub id); default: the one "
                                                   "recorded in the adapter's lorasp.json.")
    ignore_fingerprint: bool = Field(False, description="Merge even if the base's fingerprint differs from the "
                                                        "adapter's.")
    max_new_tokens: int = Field(16, ge=1, le=512, description="Greedy tokens per parity prompt.")
    overwrite: bool = Field(False, description="Replace an earlier merged model at --out (only a lorasp merged "
                                               "model; removed once the new one is complete).")


@click.command("merge")
@click.argument("adapter", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the parity report as JSON.")
@config_options(MergeConfig)
def merge_cmd(adapter, as_json, cfg: MergeConfig):
    """Merge ADAPTER into its base and write a full model that AutoModel*.from_pretrained loads.

    After merging, the written model is loaded back and compared with base+adapter (same base weights, same dtype)
    on a few prompts: the max logit difference and whether the greedy outputs are identical are printed. An
    adapter trained with the chat template gets a template whose default system message is training's.

    \b
    lorasp merge adapters/arith-lora --out merged/arith
    lorasp merge adapters/gsm8k-qlora --out merged/gsm8k --base dequantized --dtype bf16 --safe

    next: AutoModelForCausalLM.from_pretrained("OUT") anywhere, or lorasp eval --model OUT
    """
    from ..outputs import check_output

    # refused before transformers is even imported (merge() checks again for Python callers)
    check_output(cfg.out, "merge", overwrite=cfg.overwrite, inputs=[("ADAPTER", adapter), ("--model", cfg.model)])
    _quiet_transformers()
    from ..adapters.merge import merge

    rep = merge(adapter, cfg.out, base=cfg.base, dtype=cfg.dtype, safe=cfg.safe,
                force_quantized=cfg.force_quantized, model=cfg.model, ignore_fingerprint=cfg.ignore_fingerprint,
                max_new_tokens=cfg.max_new_tokens, log=_say, overwrite=cfg.overwrite)
    if as_json:
        click.echo(json.dumps(rep.as_dict(), indent=2))
        return 0
    click.echo(f"merged {adapter} into the {rep.base_mode} base weights ({rep.dtype}) -> {rep.out}")
    click.echo(f"parity vs base+adapter ({rep.n_prompts} prompts, {cfg.max_new_tokens} greedy tokens each):")
    click.echo(f"  {'max |dlogit|':>12}  greedy  prompt")
    for r in rep.rows:
        p = r.prompt.replace("\n", " ")
        click.echo(f"  {r.max_logit_diff:12.3g}  {'same' if r.greedy_equal else 'DIFF':>6}  {p[:60]}")
    click.echo(f"max logit diff {rep.max_logit_diff:.3g}; identical greedy outputs {rep.greedy_equal}/{rep.n_prompts}")
    click.echo(f"(for scale: the adapter itself moves the logits by up to {rep.adapter_effect:.3g})")
    if rep.max_logit_diff_vs_quantized is not None:
        click.echo(f"max prompt-logit diff vs the bitsandbytes-quantized base+adapter that training saw: "
                   f"{rep.max_logit_diff_vs_quantized:.3g} (includes bitsandbytes' own matmul rounding)")
    return 0


# --------------------------------------------------------------------------------------------- generate

class GenerateConfig(RunConfig):
    model: Optional[str] = Field(None, description="Base model (preset, directory, Hub id); default: the base of "
                                                   "the first --adapter.")
    adapter: List[str] = Field(default_factory=list, description="NAME=DIR: load the adapter at DIR as NAME.")
    use: List[str] = Field(default_factory=list, description="Adapter to use ('base' for none): once for all "
                                                             "prompts, or once per prompt for a mixed batch.")
    prompt: List[str] = Field(default_factory=list, description="A prompt.")
    prompts_file: Optional[str] = Field(None, description="A file with one prompt per line (or JSONL with a "
                                                          "'prompt' and optional 'adapter' field).")
    quant: Literal["auto", "nf4", "int8", "none"] = Field(
        "auto", description="Quantize the base; auto = what the first adapter was trained against.")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Greedy tokens per prompt.")
    batch_size: int = Field(8, ge=1, le=1024, description="Prompts per forward batch.")
    mode: Literal["auto", "zs_cot", "icl_cot", "zs_answer", "icl_answer", "raw"] = Field(
        "auto", description="How a prompt (a question) becomes the model's input: auto = as the adapter was "
                            "trained (its main format in lorasp.json; raw without one); zs_cot/icl_cot/zs_answer/"
                            "icl_answer = the training prompt of that format (chat template, system message, "
                            "'Let's think step by step' pre-filled in the answer); raw = the text as given.")
    chat: Optional[bool] = Field(None, description="Use the tokenizer's chat template; default: what the adapter "
                                                   "was trained with (lorasp.json).")
    stop: List[str] = Field(default_factory=list, description="Cut a completion at this string (default: the "
                                                              "mode's stop strings; none for raw).")
    data_dir: Optional[str] = Field(None, description="Data directory for the exemplars of the icl_* modes "
                                                      "(default: $LORASP_DATA_DIR).")
    ignore_fingerprint: bool = Field(False, description="Load adapters even onto a base with another fingerprint.")


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
    from pathlib import Path

    from ..errors import DataError

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: prompts file not found")
    prompts, names = [], []
    from ..records import read_text

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
    _quiet_transformers()
    from ..adapters.swap import AdapterSet

    aset = AdapterSet(cfg.model, adapters, quant=None if cfg.quant == "auto" else cfg.quant,
                      ignore_fingerprint=cfg.ignore_fingerprint)
    prepared = aset.prepare(prompts, adapters=rows, mode=cfg.mode, chat=cfg.chat, data_dir=cfg.data_dir)
    modes = sorted({p.mode for p in prepared})
    if cfg.mode == "auto" and not as_json:
        _say(f"mode: {', '.join(modes)} (as the adapter was trained; --mode raw sends the prompt as given)")
    outs = aset.generate(prompts, adapters=rows, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                         stop=cfg.stop or None, chat=cfg.chat, mode=cfg.mode, data_dir=cfg.data_dir)
    for p, name, o, prep in zip(prompts, rows, outs, prepared):
        if as_json:
            click.echo(json.dumps({"adapter": name, "mode": prep.mode, "prompt": p, "input": prep.text,
                                   "completion": o}, ensure_ascii=False))
        elif len(prompts) == 1:
            click.echo(o)
        else:
            click.echo(f"[{name}] {p}\n{o}\n")
    return 0


# --------------------------------------------------------------------------------------------- combine

class CombineConfig(RunConfig):
    out: str = Field(description="Directory to write the combined adapter to.")
    weights: Optional[str] = Field(None, description="Comma-separated weights, one per adapter (default: equal).")
    how: Literal["linear", "cat", "svd"] = Field(
        "cat", description="cat: exact weighted sum, rank = sum of ranks; svd: exact sum re-factored to "
                           "--svd-rank; linear: weights the factors (equal ranks; an approximation).")
    svd_rank: Optional[int] = Field(None, ge=1, description="Rank of an svd combination (default: largest parent).")
    model: Optional[str] = Field(None, description="Base model; default: the first adapter's recorded base.")
    ignore_fingerprint: bool = Field(False, description="Combine even if a parent's base fingerprint differs.")
    overwrite: bool = Field(False, description="Replace an earlier combined adapter at --out (only a lorasp "
                                               "combined adapter; removed once the new one is complete).")


@click.command("combine")
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@config_options(CombineConfig)
def combine_cmd(adapters, cfg: CombineConfig):
    """Weighted combination of ADAPTERS (same base) through peft; the manifest records the parents.

    \b
    lorasp combine adapters/arith adapters/gsm8k --weights 0.7,0.3 --how cat --out adapters/mix
    lorasp combine adapters/a adapters/b --how svd --svd-rank 16 --out adapters/ab16

    next: lorasp eval --adapter OUT
    """
    from ..adapters.combine import combine, parse_weights

    from ..outputs import check_output

    check_output(cfg.out, "combine", overwrite=cfg.overwrite, inputs=[("ADAPTER", a) for a in adapters]
                 + [("--model", cfg.model)])  # before transformers is even imported (combine() checks again)
    if len(adapters) >= 2:
        parse_weights(cfg.weights, len(adapters))  # a bad --weights is reported before anything is imported
    _quiet_transformers()

    m = combine(list(adapters), cfg.out, weights=cfg.weights, how=cfg.how, svd_rank=cfg.svd_rank,
                model=cfg.model, ignore_fingerprint=cfg.ignore_fingerprint, overwrite=cfg.overwrite)
    parents = ", ".join(f"{p['path']} x {p['weight']:g}" for p in m["parents"])
    click.echo(f"combined ({cfg.how}, r={m['peft']['r']}) {parents} -> {cfg.out}")
    return 0


# --------------------------------------------------------------------------------------------- adapters

@click.group("adapters")
def adapters_group():
    """Inspect lorasp artifacts (adapters, merged and combined models).

    \b
    lorasp adapters list adapters/
    lorasp adapters show adapters/arith-lora
    """


@adapters_group.command("list")
@click.argument("directory", type=click.Path(), default=".")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def adapters_list(directory, as_json):
    """The artifacts under DIRECTORY: base, method, data, chosen checkpoint and headline scores.

    \b
    lorasp adapters list adapters/ [--json]

    next: lorasp adapters show PATH
    """
    from ..adapters.listing import _fmt_scores, listing

    rows = listing(directory)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        click.echo(f"no lorasp artifacts under {directory}")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("path", "kind", "base", "quant", "method", "data", "step", "before -> after", "scores"):
        table.add_column(col, overflow="fold")
    for r in rows:
        if r.get("error"):
            table.add_row(r["path"], "[red]error[/red]", r["error"], "", "", "", "", "", "")
            continue
        data = str(r.get("data") or "")
        if r.get("n_examples"):
            data += f" ({r['n_examples']})"
        table.add_row(r["path"], r["kind"], f"{r['base']} [{r['base_id']}]", str(r["quant"]), str(r["method"]),
                      data, "" if r["chosen_step"] is None else str(r["chosen_step"]), r.get("before_after") or "",
                      _fmt_scores(r["scores"], intervals=r.get("intervals")))
    Console(width=160, file=sys.stdout).print(table)
    return 1 if any(r.get("error") for r in rows) else 0


@adapters_group.command("show")
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option("--full", is_flag=True, help="Print the whole manifest (loss history, held-out ids, ...) as YAML.")
def adapters_show(artifact, as_json, full):
    """One artifact on one screen: base, method, before -> after, data, formats, training, selection, vLLM check,
    files. --full prints the whole manifest, --json everything as JSON.

    \b
    lorasp adapters show adapters/arith-lora [--full | --json]

    next: lorasp eval --adapter ARTIFACT; lorasp report ARTIFACT
    """
    from ..adapters.listing import show, summary_lines

    info = show(artifact)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return 0
    if not full:
        for line in summary_lines(info):
            click.echo(line)
        click.echo("(--full: the whole manifest; --json: everything as JSON)")
        return 0
    import yaml

    click.echo(f"# {info['path']}")
    if info.get("headline"):
        step = (info["manifest"].get("selection") or {}).get("chosen_step")
        click.echo(f"held-out scores of the chosen checkpoint (step {step}; 95% intervals):")
        for k, h in info["headline"].items():
            click.echo(f"  {k}: {100 * h['accuracy']:.1f}% [{100 * h['ci'][0]:.1f}, {100 * h['ci'][1]:.1f}] "
                       f"(n={h['n']})")
    for when, res in ((info["manifest"].get("before_after") or {}).items()):
        if when in ("before", "after") and isinstance(res, dict):
            from ..stats import fmt_acc

            click.echo(f"{when}: " + ", ".join(f"{t} {fmt_acc(r['correct'], r['n'])}" for t, r in res.items()
                                               if isinstance(r, dict) and isinstance(r.get("n"), int)
                                               and isinstance(r.get("correct"), int)))
    click.echo(yaml.safe_dump(info["manifest"], sort_keys=False, allow_unicode=True).rstrip())
    if "adapter_config" in info:
        click.echo("adapter_config (non-default fields):")
        for k, v in info["adapter_config"].items():
            click.echo(f"  {k}: {v}")
        probs = info["vllm_problems"]
        click.echo("vLLM: " + ("loads unchanged" if not probs else "PROBLEMS: " + "; ".join(probs)))
    click.echo("files: " + ", ".join(f"{k} ({v:,} B)" for k, v in info["files"].items()))
    return 0


# --------------------------------------------------------------------------------------------- runs

@click.command("runs")
@click.argument("directory", type=click.Path(), default=".")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_cmd(directory, as_json):
    """Every teach run, fit and eval run under DIRECTORY (default: here), each with its headline figure.

    \b
    lorasp runs              # teach runs (samples, correct, accuracy), fits (before -> after), evals (accuracy)
    lorasp runs runs/ --json

    next: lorasp adapters show PATH (a fit); the eval's report.md; lorasp fit --data PATH (a teach run)
    """
    from ..runs import find_runs

    rows = find_runs(directory)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        click.echo(f"no teach runs, fits or evals under {directory}")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("path", "kind", "what", "headline", "created"):
        table.add_column(col, overflow="fold")
    for r in rows:
        kind = "[red]error[/red]" if r["kind"] == "error" else r["kind"]
        if r.get("status") not in (None, "complete", "error"):
            kind += f" ({r['status']})"
        table.add_row(r["path"], kind, r["what"], r["headline"], str(r.get("created") or ""))
    Console(width=160, file=sys.stdout).print(table)
    return 1 if any(r["kind"] == "error" for r in rows) else 0
