"""``lorasp teach``."""

from __future__ import annotations


import click

from ..config import config_options
from ..teach import TeachConfig


@click.command("teach")
@click.option("--dry-run", is_flag=True, help="Say what would run (problems, samples, output) and exit; the "
                                              "teacher is not asked anything.")
@config_options(TeachConfig)
def teach_cmd(dry_run, cfg: TeachConfig):
    """Sample chain-of-thought solutions from a teacher, keep the correct ones (resumable).

    \b
    lorasp teach --dataset gsm8k --split train --teacher openai --model M --base-url URL \\
                 --prompt gsm8k-complex-8shot --samples 8 --temperature 0.5 --top-logprobs 5 --out runs/teach/gsm8k

    Every answer is committed to OUT/store.sqlite as it arrives: rerunning the same command after a crash,
    Ctrl-C or kill -9 asks the teacher only for what is missing. OUT also gets problems.jsonl, samples.jsonl
    (correct samples; --keep all keeps every one, marked) and manifest.json. The API key is read from the
    environment variable named by --api-key-env and is never written anywhere. --first N takes the first N
    problems of the split (in file order; a rerun with a larger N asks only for the new ones).

    next: lorasp fit --data OUT (tune a student on the correct samples)
    """
    from ..teach import plan, teach_result

    if dry_run:
        p = plan(cfg)
        click.echo("dry run: the teacher is not asked anything, nothing is written")
        click.echo(f"data:    {p['dataset']} ({p['split']}): {p['problems']} problems"
                   + (f" (the first {p['first']})" if p["first"] else ""))
        click.echo(f"teacher: {p['teacher']}" + (f" ({p['model']})" if p["model"] else "")
                   + f", prompt {p['prompt']}, {p['samples']} sample(s) per problem: {p['requested']} samples")
        click.echo(f"writes:  {p['out']}" + (" (a run is there: samples already stored are not asked again)"
                                             if p["resumes"] else ""))
        return 0

    res = teach_result(cfg)
    out, m = res.out, res.manifest
    c, a = m["counts"], m["accuracy"]
    fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    click.echo(f"{out}: {c['received']}/{c['requested']} samples ({c['failed']} failed, "
               f"{m['this_run']['resumed_from_store']} already stored), {c['correct']} correct; "
               f"first-sample accuracy {fmt(a['first_sample'])}, majority vote {fmt(a['majority_vote'])}; "
               f"{c['exported']} exported to samples.jsonl; {m['wall_time_s']:.1f}s")
    if c.get("unavailable"):
        click.echo(f"note: {c['unavailable']} of {c['requested']} samples are not available from the teacher "
                   f"(e.g. {m.get('unavailable_example')}); they are skipped, not retried", err=True)
    if m["status"] != "complete":
        click.echo(f"warning: run is {m['status']}: {c['requested'] - c['received'] - c.get('unavailable', 0)} "
                   f"samples missing"
                   + (f" (e.g. {m['failure_examples'][0]})" if m.get("failure_examples") else "")
                   + "; rerun the same command to retry them", err=True)
        return 1
    click.echo(f"next: lorasp fit --data {out}", err=True)
    return 0
