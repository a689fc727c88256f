"""Config files and overrides through the real `lorasp` commands (subprocess): print, errors, exit code 2."""

from __future__ import annotations

import yaml

from tests.conftest import run_cli


def test_fit_print_config_merges_yaml_and_flags(tmp_path):
    f = tmp_path / "fit.yaml"
    f.write_text("rank: 8\nmethod: dora\nquant: nf4\nformats: zero_shot_cot=1\n")
    r = run_cli("fit", "--config", str(f), "--rank", "4", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["rank"] == 4 and cfg["method"] == "dora" and cfg["quant"] == "nf4"


def test_teach_print_config():
    r = run_cli("teach", "--dataset", "gsm8k", "--samples", "3", "--print-config")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["dataset"] == "gsm8k" and cfg["samples"] == 3


def _one_line_error(r, *needles):
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_fit_unknown_key_wrong_type_out_of_range(tmp_path):
    f = tmp_path / "fit.yaml"
    f.write_text("rank: 8\nrnak: 4\n")
    _one_line_error(run_cli("fit", "--config", str(f)), f"{f}:2", "unknown key 'rnak'")
    f.write_text("lr: fast\n")
    _one_line_error(run_cli("fit", "--config", str(f)), f"{f}:1", "field 'lr'")
    _one_line_error(run_cli("fit", "--rank", "abc"), "--rank", "field 'rank'", "valid integer")
    _one_line_error(run_cli("fit", "--rank", "0"), "--rank", "greater than")
    _one_line_error(run_cli("fit", "--method", "qlora"), "--method", "field 'method'")


def test_teach_out_of_range(tmp_path):
    _one_line_error(run_cli("teach", "--samples", "0"), "--samples", "field 'samples'")
