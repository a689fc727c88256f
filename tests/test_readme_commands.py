"""The command lines of the README and the docs stay true to the CLI (issue 18: "the README's examples run
verbatim"; issue 35: the same for every page under ``docs/``).

Every ``lorasp ...`` that README.md or a ``docs/**/*.md`` page shows, in a fenced ``bash`` block or an inline code
span, is checked against the real click commands: the command exists and every ``--option`` it names is one of that command's options. The
examples of fenced blocks for teach/fit/eval go further: they run verbatim with ``--print-config`` appended,
which parses and validates every value through the command's config model without loading a model, asking a
teacher or training (the Python API block and the quickstart run for real in CI: ``make readme-api``,
``make quickstart``)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from tests.helpers import main_cli

ROOT = Path(__file__).resolve().parents[1]
# README.md and every docs page (the generated references included), by their path relative to the repository
PAGES = {str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]}
VALIDATED = {"teach", "fit", "eval"}  # commands with --print-config (config-model commands)


def _command(words: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """Resolve ``lorasp`` + words to the click command; returns (command, its path, the remaining words)."""
    from lora_spec.cli import cli

    cmd, path, rest = cli, [], list(words)
    while isinstance(cmd, click.Group) and rest and re.match(r"^[a-z][\w-]*$", rest[0]):
        sub = cmd.get_command(click.Context(cmd), rest[0])
        if sub is None:
            raise AssertionError(f"unknown command: lorasp {' '.join(path + rest[:1])}")
        cmd, path, rest = sub, path + [rest[0]], rest[1:]
    return cmd, path, rest


def _options(cmd: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for p in cmd.params:
        names.update(p.opts + p.secondary_opts)
    return names


def _fenced_examples(text: str) -> list[str]:
    lines = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang not in ("bash", "sh", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            m = re.search(r"(?:^|\s)(lorasp\s.*)$", line)
            if m and re.match(r"^(\S+=\S*\s+)*lorasp\s", line):
                lines.append(m.group(1))
    return lines


def _inline_spans(text: str) -> list[str]:
    return [" ".join(m.split()) for m in re.findall(r"`(lorasp [^`]+)`", text)]


EXAMPLES = sorted({(page, e) for page, text in PAGES.items() for e in _fenced_examples(text)})
SPANS = sorted({(page, s) for page, text in PAGES.items() for s in _inline_spans(text)})


def test_the_readme_and_docs_have_commands_to_check():
    assert "README.md" in PAGES and len(PAGES) >= 10, sorted(PAGES)
    readme = [e for page, e in EXAMPLES if page == "README.md"]
    assert len(readme) >= 6, readme
    assert len(EXAMPLES) >= 30 and len(SPANS) >= 60, (len(EXAMPLES), len(SPANS))


@pytest.mark.parametrize("page,text", sorted(set(EXAMPLES + SPANS)))
def test_every_readme_command_and_option_exists(page, text):
    words = text.split()[1:]
    try:
        cmd, path, rest = _command(words)
    except AssertionError as exc:
        raise AssertionError(f"{page}: `{text}`: {exc}") from None
    known = _options(cmd)
    named = {w.split("=", 1)[0] for w in re.findall(r"(?<![\w-])--[a-z][\w-]*(?:=\S+)?", " ".join(rest))}
    # --x/--no-x pairs print as one flag in synopses
    unknown = sorted(o for o in named if o not in known)
    assert not unknown, f"{page}: `{text}`: lorasp {' '.join(path)} has no option {', '.join(unknown)}"


@pytest.mark.parametrize("page,text", [(p, e) for p, e in EXAMPLES if "[" not in e and "|" not in e])
def test_fenced_examples_parse_verbatim(page, text, capsys, tmp_path, monkeypatch):
    """Each fenced example, verbatim: teach/fit/eval build and validate their whole config (``--print-config``);
    the other commands parse their arguments with click (types, choices, arity)."""
    monkeypatch.chdir(tmp_path)
    words = shlex.split(text)[1:]
    cmd, path, rest = _command(words)
    if path[0] in VALIDATED:
        code, out, err = main_cli(capsys, *words, "--print-config")
        assert code == 0 and out.strip(), f"{page}: example `{text}` fails: {err.strip()}"
    else:
        cmd.make_context(" ".join(["lorasp", *path]), list(rest))
