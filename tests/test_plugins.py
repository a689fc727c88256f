"""The plugin registry through the real CLI: a third-party package, duplicates, broken imports, unknown names."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "lorasp-example-plugin"


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory) -> Path:
    """pip-install the example plugin package into a temporary target directory (not the test venv)."""
    target = tmp_path_factory.mktemp("example-plugin-target")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--target", str(target), str(EXAMPLE)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("lorasp_example_plugin-*.dist-info"))
    return target


def test_cli_help_and_version():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "plugins" in r.stdout and "Commands" in r.stdout
    r = run_cli("--version")
    assert r.returncode == 0 and "lorasp" in r.stdout


def test_plugins_json_lists_builtins_with_their_distribution():
    r = run_cli("plugins", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows, "lorasp registers built-in plugins"
    assert {"group", "name", "distribution", "version", "target", "description", "error"} <= set(rows[0])
    for row in rows:  # built-ins come from lorasp's own pyproject, through entry points
        if row["target"].startswith("lora_spec."):
            assert row["distribution"] == "lorasp"
            assert row["description"], row


def test_third_party_plugin_is_listed_and_loads_by_name(example_installed):
    env = {"PYTHONPATH": str(example_installed)}
    r = run_cli("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rows = {(x["group"], x["name"]): x for x in json.loads(r.stdout)}
    for group in ("datasets", "evals"):
        row = rows[(group, "units")]
        assert row["distribution"] == "lorasp-example-plugin"
        assert row["error"] is None and "unit-conversion" in row["description"].lower()
    table = run_cli("plugins", env=env)
    assert table.returncode == 0 and "lorasp-example-plugin" in table.stdout
    # load by name through lorasp (CLI) and through the Python API
    r = run_cli("plugins", "show", "datasets", "units", "--split", "test", "--first", "2", env=env)
    assert r.returncode == 0, r.stderr
    problems = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(problems) == 2 and all(p["answer"].isdigit() for p in problems)
    code = ("from lora_spec import registry; s = registry.create('evals', 'units', limit=4); "
            "print(s.tasks()[0].dataset, s.tasks()[0].limit)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**__import__('os').environ, **env})
    assert p.returncode == 0 and p.stdout.split() == ["units", "4"], p.stderr


def test_unknown_plugin_name_says_did_you_mean(example_installed):
    r = run_cli("plugins", "show", "datasets", "unitz", env={"PYTHONPATH": str(example_installed)})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "did you mean 'units'" in lines[0]


def _fake_dist(root: Path, dist: str, version: str, entry_points: str, module: str | None = None,
               code: str = "") -> None:
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module:
        (root / f"{module}.py").write_text(textwrap.dedent(code))


@pytest.fixture()
def bad_plugins(tmp_path) -> Path:
    good = '''
        class Data:
            """A fine dataset."""
            name = "twice"
            def splits(self): return ["test"]
            def load(self, split, limit=None): return iter(())
    '''
    _fake_dist(tmp_path, "alpha-plugins", "1.0", "[lorasp.datasets]\ntwice = alpha_mod:Data\n", "alpha_mod", good)
    _fake_dist(tmp_path, "beta-plugins", "2.3", "[lorasp.datasets]\ntwice = beta_mod:Data\n", "beta_mod", good)
    _fake_dist(tmp_path, "broken-plugins", "0.1", "[lorasp.evals]\nbroken = broken_mod:Suite\n", "broken_mod",
               "import this_module_does_not_exist_anywhere\n")
    return tmp_path


def test_duplicate_name_from_two_distributions_is_an_error_naming_both(bad_plugins):
    env = {"PYTHONPATH": str(bad_plugins)}
    r = run_cli("plugins", "show", "datasets", "twice", env=env)
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert "alpha-plugins 1.0" in line and "beta-plugins 2.3" in line and "'twice'" in line
    listing = run_cli("plugins", "--json", env=env)
    assert listing.returncode == 1  # never silently skipped
    rows = [x for x in json.loads(listing.stdout) if x["name"] == "twice"]
    assert {x["distribution"] for x in rows} == {"alpha-plugins", "beta-plugins"}
    assert all("claimed by two distributions" in x["error"] for x in rows)


def test_plugin_that_fails_to_import_is_an_error_naming_plugin_and_distribution(bad_plugins):
    env = {"PYTHONPATH": str(bad_plugins)}
    r = run_cli("plugins", "show", "evals", "broken", env=env)
    assert r.returncode == 1
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "'broken'" in line and "broken-plugins 0.1" in line and "failed to import" in line
    assert "this_module_does_not_exist_anywhere" in line
    listing = run_cli("plugins", env=env)
    assert listing.returncode == 1
    assert "broken-plugins" in listing.stdout and "failed to import" in listing.stderr


def test_unknown_command_and_bad_flag_are_one_line_usage_errors():
    r = run_cli("frobnicate")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "No such command" in r.stderr
    r = run_cli("plugins", "--group", "nope")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--group" in r.stderr


def test_registry_is_lazy():
    """Listing names imports no plugin module (and no torch); the contracts plugins are checked against may load."""
    code = ("import sys; from lora_spec import registry; registry.available('datasets'); "
            "registry.available('teachers'); registry.available('evals'); "
            "mods = [m for m in sys.modules if m.startswith(('lora_spec.plugins.datasets', 'lora_spec.plugins.teachers',"
            " 'lora_spec.plugins.evals')) or m == 'torch']; print(mods)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


def test_create_offers_settings_by_signature_and_checks_the_contract(tmp_path, monkeypatch):
    """registry.create is the one place plugin arguments are passed: settings lorasp offers go only to a factory
    that takes them, a user's parameter the factory lacks is an error, and the object must meet its Protocol."""
    code = '''
        class Data:
            name = "sized"
            def __init__(self, size=3): self.size = size
            def splits(self): return ["test"]
            def load(self, split="test", limit=None): return iter(())
        class NoFingerprint:
            def generate(self, requests): return []
    '''
    _fake_dist(tmp_path, "gamma-plugins", "1.0",
               "[lorasp.datasets]\nsized = gamma_mod:Data\n[lorasp.teachers]\nnofp = gamma_mod:NoFingerprint\n",
               "gamma_mod", code)
    monkeypatch.syspath_prepend(str(tmp_path))
    from lora_spec import registry
    from lora_spec.errors import PluginError
    from lora_spec.plugins.contracts import Dataset, Teacher

    d = registry.create("datasets", "sized", offered={"data_dir": str(tmp_path), "size": 4}, size=5)
    assert d.size == 5 and isinstance(d, Dataset)  # data_dir is not taken, so not passed; the user's size wins
    assert registry.create("datasets", "sized", offered={"size": 4}).size == 4
    with pytest.raises(PluginError, match=r"^dataset 'sized' has no parameter 'data_dir' \(accepted: size\)$"):
        registry.create("datasets", "sized", data_dir=str(tmp_path))
    with pytest.raises(PluginError, match=r"^teacher 'nofp' does not implement generate\(requests\) and "
                                          r"fingerprint\(\)$"):
        registry.create("teachers", "nofp")
    assert not isinstance(registry.resolve("teachers", "nofp")(), Teacher)
