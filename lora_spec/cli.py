"""The ``lorasp`` command line. It only parses arguments, builds a config and calls one function per command.

Commands live in their own modules and are imported only when invoked, so ``lorasp --help`` and
``lorasp plugins`` stay fast (no torch import).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
import warnings

import click

from . import __version__
from .errors import LoraspError, one_line
from .memory import reexec_with_allocator
from .safeload import ALLOW_PICKLE_HELP, TRUST_REMOTE_CODE_HELP, set_policy

# command name -> "module:attribute" of a click.Command, imported on first use
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("lora_spec.commands.plugins:plugins", "List every installed plugin with its group and distribution."),
    "models": ("lora_spec.commands.plugins:models", "List the student presets and whether they are cached."),
    "merge": ("lora_spec.commands.merge:merge_cmd", "Merge an adapter into its base; writes a full model and checks parity."),
    "generate": ("lora_spec.commands.generate:generate_cmd", "Generate with a base and adapters (switch or mix per row)."),
    "adapters": ("lora_spec.commands.adapters:adapters_group", "List the artifacts under a folder, or show one."),
    "runs": ("lora_spec.commands.runs:runs_cmd", "List teach runs, fits and evals under a folder, with headlines."),
    "combine": ("lora_spec.commands.combine:combine_cmd", "Weighted combination of adapters (linear|cat|svd) via peft."),
    "export": ("lora_spec.commands.export:export_cmd", "Export for llama.cpp/Ollama: LoRA or model GGUF + Modelfile."),
    "push": ("lora_spec.commands.export:push_cmd", "Upload an artifact to the Hugging Face Hub (Hub-ready copy)."),
    "teach": ("lora_spec.commands.teach:teach_cmd", "Sample chain-of-thought from a teacher, filter by answer (resumable)."),
    "score": ("lora_spec.commands.score:score_cmd", "Add a teacher's top-k logprobs to a teach run's samples (teacher forcing)."),
    "fit": ("lora_spec.commands.fit:fit_cmd", "Tune a student on teacher CoT in four formats (LoRA/DoRA/QLoRA/full)."),
    "eval": ("lora_spec.commands.eval:eval_cmd", "Evaluate a student (+ adapter) on math / BBH / arith suites, batched."),
    "recipes": ("lora_spec.commands.plugins:recipes", "List the shipped fit recipes (lorasp fit --config NAME)."),
    "compare": ("lora_spec.commands.eval:compare_cmd", "Paired comparison of two eval results on the same problems."),
    "report": ("lora_spec.commands.report:report", "Re-render an artifact's specialization report (report.md, curves.png)."),
}

# commands that load models, tokenizers or adapters get --allow-pickle and --trust-remote-code (lora_spec.safeload)
SAFE_LOAD_COMMANDS = ("teach", "score", "fit", "eval", "merge", "generate", "combine")


def _add_load_policy_options(cmd: click.Command) -> None:
    """The two opt-ins of :mod:`lora_spec.safeload` as flags of ``cmd`` (never config keys): each invocation sets
    the process policy from its own flags, so it is off unless this command line asks for it."""

    def setter(key: str):
        def callback(ctx, param, value):
            set_policy(**{key: bool(value)})
            return value
        return callback

    cmd.params.append(click.Option(["--allow-pickle"], is_flag=True, default=False, expose_value=False,
                                   is_eager=True, callback=setter("allow_pickle"), help=ALLOW_PICKLE_HELP))
    cmd.params.append(click.Option(["--trust-remote-code"], is_flag=True, default=False, expose_value=False,
                                   is_eager=True, callback=setter("trust_remote_code"), help=TRUST_REMOTE_CODE_HELP))


# ``lorasp --help`` lists the commands in the order of the workflow, not alphabetically
WORKFLOW = ("teach", "score", "fit", "eval", "compare", "generate", "report", "runs", "adapters", "merge", "combine",
            "export", "push", "recipes", "models", "plugins")


def _workflow_order(names) -> list[str]:
    return sorted(names, key=lambda n: (WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW), n))


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return _workflow_order(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        if name not in COMMANDS:
            return None
        target = COMMANDS[name][0]
        mod, attr = target.split(":")
        cmd = getattr(importlib.import_module(mod), attr)
        if name in SAFE_LOAD_COMMANDS:
            _add_load_policy_options(cmd)
        self.commands[name] = cmd
        return cmd

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1]) for name in _workflow_order(COMMANDS)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="lorasp")
def cli():
    """lorasp: specialize a small language model towards multi-step reasoning.

    A teacher writes chain-of-thought solutions (`teach`), a quantized student is tuned on the four-format
    mixture with LoRA/DoRA or full fine-tuning (`fit`), checkpoints are chosen on in-distribution,
    out-of-distribution and generic held-out sets, and the result is a swappable reasoning adapter
    (`eval`, `merge`, `generate`, `adapters`).

    \b
    lorasp fit --dry-run       # what the quickstart would do, then `lorasp fit` does it
    lorasp teach ...  ->  lorasp fit --data RUN  ->  lorasp eval --adapter OUT  ->  lorasp generate / merge
    """


def quiet_libraries(argv: list[str]) -> None:
    """Keep the terminal to lorasp's own lines: silence the library notices users cannot act on, at their source.

    Only named ones: bitsandbytes' CPU-kernel notice ("Failed to load CPU gemm_4bit_forward ... kernels", logged
    on import when its Hub kernel cannot be fetched), the ``kernels`` package's "Skipping publisher trust check"
    for that kernel under ``HF_HUB_OFFLINE=1``, transformers' deprecation FutureWarnings raised
    from inside transformers/peft (e.g. ``is_gradient_checkpointing``), and, under ``--no-progress``, the
    Hugging Face progress bars ("Loading weights"). ``LORASP_DEBUG=1`` keeps everything.
    """

    if os.environ.get("LORASP_DEBUG"):
        return
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("kernels._internals.hf_hub").addFilter(
        lambda rec: not str(rec.msg).startswith("Skipping publisher trust check"))
    for mod in (r"transformers(\..*)?", r"peft(\..*)?"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=mod)
    if "--no-progress" in argv:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if "transformers" in sys.modules:  # pragma: no cover - only when lorasp is driven in-process
            from transformers.utils import logging as tlog

            tlog.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    debug = bool(os.environ.get("LORASP_DEBUG"))
    if argv is None:  # the process's entry point (not an in-process call): jemalloc for model commands

        reexec_with_allocator(sys.argv[1:])
    quiet_libraries(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = cli.main(args=argv, prog_name="lorasp", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx else "lorasp"
        click.echo(f"error: {one_line(exc.format_message())} (see '{cmd} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except LoraspError as exc:
        if debug:
            raise
        click.echo(f"error: {one_line(exc.message)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # a file lorasp could not read or write: name it, no traceback
        if debug:
            raise
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "?"
        full = {errno.ENOSPC: "the disk is full: ", errno.EFBIG: "the file size limit was reached (ulimit -f): ",
                errno.EDQUOT: "the disk quota is used up: "}.get(exc.errno, "")
        click.echo(f"error: {where}: {full}{exc.strerror or one_line(exc)} ({type(exc).__name__})", err=True)
        sys.exit(1)
    except Exception as exc:  # never a traceback for users; LORASP_DEBUG=1 shows it
        if debug:
            raise
        click.echo(f"error: unexpected {type(exc).__name__}: {one_line(exc)[:500]} "
                   f"(rerun with LORASP_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
