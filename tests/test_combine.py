"""``lorasp combine``: weighted combinations through peft's add_weighted_adapter; the manifest records parents."""

from __future__ import annotations

import json

import pytest

from tests.helpers import main_cli, make_adapter, run_in_process

KEY = "base_model.model.model.layers.{i}.self_attn.{m}"


def _deltas(adapter, r, alpha):
    """{module: scaling * B @ A} straight from the safetensors file."""
    from safetensors.torch import load_file

    w = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for k in w:
        if k.endswith("lora_A.weight"):
            mod = k[: -len(".lora_A.weight")]
            out[mod] = (w[f"{mod}.lora_B.weight"] @ w[k]) * (alpha / r)
    return out


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_llama_path):
    d = tmp_path_factory.mktemp("combine")
    a = make_adapter(tiny_llama_path, d / "a", seed=1, r=4, alpha=8, std=0.2,
                     extra={"data": {"source": "gsm8k", "n_examples": 100}})
    b = make_adapter(tiny_llama_path, d / "b", seed=2, r=2, alpha=4, std=0.2, targets=("q_proj", "k_proj"))
    c = make_adapter(tiny_llama_path, d / "c", seed=3, r=4, alpha=8, std=0.2)
    return d, a, b, c


def test_cat_is_the_exact_weighted_sum(parents):
    import torch

    d, a, b, _ = parents
    out = d / "cat"
    r = run_in_process("combine", str(a), str(b), "--weights", "0.7,0.3", "--how", "cat", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "combined (cat, r=6)" in r.stdout
    m = json.loads((out / "lorasp.json").read_text())
    assert m["kind"] == "combined" and m["combination"] == {"how": "cat", "weights": [0.7, 0.3], "svd_rank": None}
    assert [p["weight"] for p in m["parents"]] == [0.7, 0.3]
    assert m["parents"][0]["path"] == str(a.resolve()) and m["parents"][0]["data"] == "gsm8k"
    pa = json.loads((a / "lorasp.json").read_text())
    assert m["parents"][0]["digest"] == pa["adapter"]["digest"] and m["base"] == pa["base"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 6 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj"}
    da, db, dc = _deltas(a, 4, 8), _deltas(b, 2, 4), _deltas(out, 6, cfg["lora_alpha"])
    for mod, delta in dc.items():
        want = 0.7 * da.get(mod, 0) + 0.3 * db.get(mod, 0)
        assert torch.allclose(delta, want, atol=1e-6), mod
    assert (out / "README.md").exists()


def test_svd_and_linear(parents):
    import torch

    from lora_spec.adapters.combine import combine

    d, a, b, c = parents
    m = combine([a, b], d / "svd", weights="0.5,0.5", how="svd", svd_rank=6)
    assert m["peft"]["r"] == 6
    cfg = json.loads((d / "svd" / "adapter_config.json").read_text())
    da, db, ds = _deltas(a, 4, 8), _deltas(b, 2, 4), _deltas(d / "svd", 6, cfg["lora_alpha"])
    for mod, delta in ds.items():  # rank 6 reaches the rank of the sum: exact up to SVD round-off
        assert torch.allclose(delta, 0.5 * da.get(mod, 0) + 0.5 * db.get(mod, 0), atol=1e-4), mod
    m = combine([a, c], d / "lin", weights=[0.6, 0.4], how="linear")
    assert m["combination"]["how"] == "linear" and m["peft"]["r"] == 4
    # the combined adapter loads and runs like any other
    from lora_spec import AdapterSet

    s = AdapterSet(None, {"mix": d / "lin", "first": a})
    assert len(s.generate(["how many apples"], adapters=["mix"], max_new_tokens=3)) == 1


def test_combine_errors(parents, tmp_path, capsys):
    d, a, b, c = parents
    code, _, err = main_cli(capsys, "combine", str(a), str(b), "--how", "linear", "--out", str(tmp_path / "x"))
    assert code == 2 and "equal ranks" in err and err.count("\n") == 1 and err.startswith("error: "), err
    code, _, err = main_cli(capsys, "combine", str(a), str(c), "--weights", "1,2,3", "--out", str(tmp_path / "x"))
    assert code == 2 and "3 weights for 2 adapters" in err, err
    code, _, err = main_cli(capsys, "combine", str(a), "--out", str(tmp_path / "x"))
    assert code == 2 and "at least two" in err, err
    code, _, err = main_cli(capsys, "combine", str(a), str(c), "--how", "ties", "--out", str(tmp_path / "x"))
    assert code == 2 and "'how'" in err, err
    code, _, err = main_cli(capsys, "combine", str(a), str(tmp_path), "--out", str(tmp_path / "x"))
    assert code == 1 and "neither a lorasp artifact" in err, err
    assert not (tmp_path / "x").exists()
