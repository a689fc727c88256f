"""``lorasp score`` (the stage and its ``ScoreConfig``: :mod:`lora_spec.score`)."""

from __future__ import annotations

import click

from ..config import config_options
from ..score import ScoreConfig
from . import quiet_transformers


@click.command("score")
@click.argument("run", type=click.Path())
@click.option("--dry-run", is_flag=True, help="Say what would be scored and exit; the scorer is not loaded or asked.")
@config_options(ScoreConfig)
def score_cmd(run, dry_run, cfg: ScoreConfig):
    """Add a scorer's top-k log-probabilities at every token of RUN's kept samples (teacher forcing; resumable).

    RUN is a teach run directory. Its samples may come from any teacher (file, gold, a server without
    log-probabilities): the scorer reads each sample's text after its prompt and records its k most likely tokens
    at every position, so that lorasp fit --loss distribution|mix:A can train on the run.

    \b
    lorasp score runs/teach/gsm8k --teacher hf --model merged/arith-teacher --top-logprobs 5
    lorasp score runs/teach/gsm8k --teacher openai --model M --base-url http://127.0.0.1:8000/v1

    Every score is committed to RUN/store.sqlite as it arrives: rerunning the same command after a crash, Ctrl-C
    or kill -9 asks only for the samples not scored yet. samples.jsonl is exported again with the scorer's tokens
    and top-k (the sampling teacher's stay in the store) and manifest.json gains a "scores" section. The openai
    scorer needs /v1/completions with echo and logprobs (vLLM; llama-cpp-python with --logits_all true) or vLLM's
    prompt_logprobs (--teacher-opt score_api=prompt_logprobs).

    next: lorasp fit --data RUN --loss distribution
    """
    from ..score import score, score_plan

    if dry_run:
        p = score_plan(run, cfg)
        click.echo("dry run: the scorer is not loaded or asked anything, nothing is written")
        click.echo(f"run:     {p['run']}: {p['samples']} kept samples"
                   + (f" ({p['scored_before']} scored by this model already)" if p["scored_before"] else ""))
        click.echo(f"scorer:  {p['teacher']}" + (f" ({p['model']})" if p["model"] else "")
                   + f", top-{p['top_logprobs']} after prompt {p['prompt']}")
        return 0
    quiet_transformers()
    s = score(run, cfg)
    click.echo(f"{run}: {s['scored']}/{s['samples']} samples scored ({s['failed']} failed, "
               f"{s['this_run']['resumed_from_store']} already scored), {s['tokens_scored']:,} tokens, "
               f"top-{s['top_logprobs']}; {s['this_run']['wall_time_s']:.1f}s")
    if s["status"] != "complete":
        click.echo(f"warning: scoring is {s['status']}: {s['samples'] - s['scored']} samples have no scores"
                   + (f" (e.g. {s['failure_examples'][0]})" if s.get("failure_examples") else "")
                   + "; rerun the same command to retry them", err=True)
        return 1
    click.echo(f"next: lorasp fit --data {run} --loss distribution", err=True)
    return 0
