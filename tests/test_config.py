"""Config machinery: YAML + flag overrides, --print-config, one-line errors naming the key, exit code 2."""

from __future__ import annotations

from typing import Literal

import click
import pytest
import yaml
from pydantic import Field

from lora_spec.config import RunConfig, build, config_options
from lora_spec.errors import ConfigError


class DemoConfig(RunConfig):
    rank: int = Field(16, ge=1, description="LoRA rank")
    lr: float = Field(2e-4, gt=0)
    method: Literal["lora", "dora", "full"] = "lora"
    suite: list[str] = Field(default_factory=lambda: ["math"])
    safe: bool = False
    out: str | None = None


@click.command()
@config_options(DemoConfig)
def demo(cfg):
    click.echo(f"rank={cfg.rank} lr={cfg.lr} method={cfg.method} suite={','.join(cfg.suite)} safe={cfg.safe}")


def invoke(*args):
    """Through lorasp's own main(), which turns errors into one line + exit code."""
    from lora_spec import cli as cli_mod

    cli_mod.cli.add_command(demo, "demo-config")
    try:
        with pytest.raises(SystemExit) as exc:
            cli_mod.main(["demo-config", *args])
    finally:
        cli_mod.cli.commands.pop("demo-config", None)
    return exc.value.code


def test_yaml_then_flags(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("rank: 8\nmethod: dora\nsuite: [math, bbh]\n")
    assert invoke("--config", str(f), "--rank", "32", "--safe") == 0
    assert capsys.readouterr().out.strip() == "rank=32 lr=0.0002 method=dora suite=math,bbh safe=True"
    assert invoke("--suite", "arith", "--suite", "bbh", "--no-safe") == 0
    assert capsys.readouterr().out.strip() == "rank=16 lr=0.0002 method=lora suite=arith,bbh safe=False"


def test_print_config_round_trips(tmp_path, capsys):
    assert invoke("--rank", "4", "--print-config") == 0
    printed = capsys.readouterr().out
    data = yaml.safe_load(printed)
    assert data["rank"] == 4 and data["method"] == "lora"
    f = tmp_path / "again.yaml"
    f.write_text(printed)
    assert build(DemoConfig, str(f), {}).rank == 4


@pytest.mark.parametrize("yaml_text,flags,expect", [
    ("rank: 8\nbogus: 1\n", [], ":2: unknown key 'bogus'"),
    ("rank: 8\nlr: -1\n", [], ":2: field 'lr': input should be greater than 0"),
    ("method: lora\nrank: many\n", [], ":2: field 'rank': input should be a valid integer"),
    ("", ["--rank", "0"], "--rank: field 'rank': input should be greater than or equal to 1"),
    ("", ["--method", "qlora"], "--method: field 'method': input should be 'lora', 'dora' or 'full'"),
    ("rank: [1, 2\n", [], "invalid YAML"),
    ("- just\n- a list\n", [], "expected a mapping"),
])
def test_config_errors_are_one_line_with_exit_2(tmp_path, capsys, yaml_text, flags, expect):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    code = invoke("--config", str(f), *flags)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert expect in err, err


def test_missing_config_file(tmp_path, capsys):
    assert invoke("--config", str(tmp_path / "nope.yaml")) == 2
    assert "config file not found" in capsys.readouterr().err


def test_build_api_raises_config_error():
    with pytest.raises(ConfigError, match="unknown key 'ranks'"):
        build(DemoConfig, None, {"ranks": 3})
