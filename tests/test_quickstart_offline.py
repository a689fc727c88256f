"""The embedded default needs no data directory and no Hub: default held-out sets whose files are missing are
skipped with a warning; a held-out set the user asked for is still a one-line error."""

from __future__ import annotations

import json

from tests.helpers import run_in_process

ENV = {"LORASP_DATA_DIR": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ARGS = ["--student", "tiny-llama", "--dataset", "arith", "--teacher", "gold", "--first", "16", "--max-steps", "2",
        "--batch-size", "4", "--eval-every", "2", "--before-after", "0", "--tracker", "none", "--no-progress",
        "--in-dist", "auto;limit=2;max_new_tokens=8"]


def test_default_held_out_sets_without_data_are_skipped_with_a_warning(tmp_path):
    out = tmp_path / "adapter"
    r = run_in_process("fit", *ARGS, "--out", str(out), env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ood: multiarith skipped, its data is not available here" in r.stderr
    assert "generic: bbh" in r.stderr and "LORASP_DATA_DIR" in r.stderr
    m = json.loads((out / "lorasp.json").read_text())
    scored = [c for c in m["checkpoints"] if c.get("scores")]
    assert scored and all("in_dist" in c["scores"] and "ood" not in c["scores"] for c in scored)


def test_an_explicit_held_out_set_without_data_is_an_error(tmp_path):
    r = run_in_process("fit", *ARGS, "--ood", "svamp;limit=2", "--out", str(tmp_path / "a"), env=ENV)
    err = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and err.startswith("error: --ood svamp") and "not found" in err, r.stderr[-1500:]
