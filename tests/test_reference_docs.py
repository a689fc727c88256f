"""The generated reference pages (docs/reference/cli.md, config.md, artifact.md) are current and complete.

``scripts/gen_reference.py`` writes them from the click commands, the pydantic configs and the code that writes
``lorasp.json``. A page that differs from what the code generates now fails here, naming the command that
regenerates it; an option or config key missing from a page fails too (the generator must cover everything)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _generator()


@pytest.mark.parametrize("page", sorted(GEN.PAGES))
def test_generated_page_is_current(page):
    path = ROOT / page
    assert path.exists(), f"{page} is missing; generate it with: {GEN.REGENERATE}"
    assert path.read_text() == GEN.PAGES[page](), f"{page} is stale; regenerate it with: {GEN.REGENERATE}"


def test_generation_is_deterministic_and_machine_free():
    for page, fn in GEN.PAGES.items():
        text = fn()
        assert text == fn(), page
        for local in (str(ROOT), str(Path.home())):
            assert local not in text, f"{page} names a path of this machine ({local})"


def test_cli_page_has_every_command_and_option():
    text = GEN.render_cli()
    commands = GEN._commands()
    assert len(commands) >= 15
    for path, cmd in commands:
        assert f"## {path} " in text, path
        for p in cmd.params:
            if getattr(p, "hidden", False):
                continue
            names = [p.human_readable_name] if isinstance(p, click.Argument) else p.opts
            for n in names:
                assert f"`{n}`" in text, f"{path}: {n} missing from the CLI reference"


def test_config_page_has_every_key_with_type_default_and_range():
    text = GEN.render_config()
    for command, target in GEN.CONFIGS:
        cls = GEN._load(target)
        assert f"## {command}\n" in text
        for name, field in cls.model_fields.items():
            rows = [line for line in text.splitlines() if line.startswith(f"| `{name}` | `--{name.replace('_', '-')}` |")]
            assert rows, f"{command}: key {name} missing from the config reference"
    assert "| `rank` | `--rank` | integer | `16` | ≥ 1, ≤ 4096 |" in text


def test_artifact_page_describes_every_manifest_field():
    keys = [k for k, _ in GEN.manifest_keys()]
    assert {"base", "selection", "checkpoints", "train", "prompting", "versions"} <= set(keys)
    undescribed = [k for k in keys if k not in GEN.ARTIFACT_FIELDS]
    assert not undescribed, f"lorasp.json fields without a description in scripts/gen_reference.py: {undescribed}"


def test_check_mode_names_the_command(tmp_path, monkeypatch, capsys):
    """``--check`` on a stale page exits 1 and says how to regenerate."""
    (tmp_path / "docs" / "reference").mkdir(parents=True)
    (tmp_path / "docs" / "reference" / "cli.md").write_text("an old page\n")
    monkeypatch.setattr(GEN, "ROOT", tmp_path)
    monkeypatch.setattr(GEN, "PAGES", {"docs/reference/cli.md": lambda: "the current page\n"})
    assert GEN.main(["--check"]) == 1
    assert "make reference" in capsys.readouterr().err
