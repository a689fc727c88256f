"""A hostile user: bad inputs and outputs across teach, fit, eval, merge, combine, generate, adapters, report and
data files. Every case must exit non-zero with exactly one line on stderr (``error: ...``) that names the file,
flag or field, print no traceback and no "unexpected", and leave every input and earlier output byte-for-byte as
it was (the whole workspace is hashed before and after each case).

The cases run through the real entry point (``lora_spec.cli.main``) in-process, which is where exit codes and
messages are made; all of them fail before a model is loaded. ``test_console_script_*`` runs a few through the
installed ``lorasp`` script to show that the in-process path is the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import main_cli, make_adapter, run_cli, tree_hashes


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_llama_path):
    """A workspace holding one of everything a user may point lorasp at."""
    from lora_spec.teach import teach

    w = tmp_path_factory.mktemp("hostile")
    teach(dataset="arith", teacher="gold", first=6, out=str(w / "run"), progress=False)
    make_adapter(tiny_llama_path, w / "ad", seed=1, r=4)
    shutil.copytree(w / "ad", w / "ad2")  # a second parent (its weights do not matter: nothing is loaded)
    (w / "merged").mkdir()  # an earlier merge's output (only its manifest matters before anything is loaded)
    (w / "merged" / "lorasp.json").write_text(json.dumps({"kind": "merged", "base": {"name": "tiny-llama"}}))
    (w / "merged" / "model.safetensors").write_bytes(b"weights")
    (w / "evalres").mkdir()
    (w / "evalres" / "results.json").write_text("{}")
    (w / "evalres" / "report.md").write_text("# earlier results\n")
    (w / "notes").mkdir()
    (w / "notes" / "notes.txt").write_text("my own notes\n")
    (w / "afile").write_text("a regular file\n")
    (w / "teacher.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary")
    (w / "prompts.bin").write_bytes(b"\xff\xfe\x00\x01\x02")
    (w / "empty.jsonl").write_text("")
    (w / "bad.json").write_text('[{"question": "What is 1+1?", "output": "unterminated]\n')
    (w / "badrec.jsonl").write_text('{"question": "q"}\n')
    (w / "unknown.yaml").write_text("rankk: 4\n")
    (w / "badtype.yaml").write_text("samples: many\n")
    (w / "badyaml.yaml").write_text("samples: [1,\n")
    (w / "badmanifest").mkdir()
    (w / "badmanifest" / "lorasp.json").write_text('{"kind": "adapter", ')
    run_bad = w / "run_badline"
    run_bad.mkdir()
    for f in ("problems.jsonl", "manifest.json"):
        (run_bad / f).write_bytes((w / "run" / f).read_bytes())
    (run_bad / "samples.jsonl").write_text((w / "run" / "samples.jsonl").read_text().splitlines()[0]
                                           + '\n{"problem_id": "x", "sample_index": 0,\n')
    run_bin = w / "run_binary"
    run_bin.mkdir()
    for f in ("problems.jsonl", "manifest.json"):
        (run_bin / f).write_bytes((w / "run" / f).read_bytes())
    (run_bin / "samples.jsonl").write_bytes(b"\x00\x9f\x92\x96 not text\n")
    return w


# (id, argv with {w} for the workspace, exit code, substrings the one error line must hold)
CASES = [
    # --- teach: teacher files, prompts, outputs, flags
    ("teach-binary-teacher-file", "teach --dataset arith --first 2 --teacher file --teacher-opt path={w}/teacher.bin "
     "--out {w}/new", 1, ["teacher.bin:1", "not UTF-8"]),
    ("teach-empty-teacher-file", "teach --dataset arith --first 2 --teacher file --teacher-opt path={w}/empty.jsonl "
     "--out {w}/new", 1, ["empty.jsonl", "empty file"]),
    ("teach-bad-json-teacher-file", "teach --dataset arith --first 2 --teacher file --teacher-opt path={w}/bad.json "
     "--out {w}/new", 1, ["bad.json:1", "invalid JSON", "column"]),
    ("teach-record-without-text", "teach --dataset arith --first 2 --teacher file --teacher-opt "
     "path={w}/badrec.jsonl --out {w}/new", 1, ["badrec.jsonl:1", "text"]),
    ("teach-teacher-file-is-a-dir", "teach --dataset arith --first 2 --teacher file --teacher-opt path={w}/notes "
     "--out {w}/new", 1, ["notes", "a directory"]),
    ("teach-missing-teacher-file", "teach --dataset arith --first 2 --teacher file --teacher-opt "
     "path={w}/nosuch.json --out {w}/new", 1, ["nosuch.json", "no such file"]),
    ("teach-file-teacher-without-path", "teach --dataset arith --teacher file --out {w}/new", 2, ["path="]),
    ("teach-into-foreign-dir", "teach --dataset arith --first 2 --out {w}/notes", 2, ["--out", "notes",
                                                                                      "not a lorasp output"]),
    ("teach-into-file", "teach --dataset arith --first 2 --out {w}/afile", 2, ["--out", "afile", "not a directory"]),
    ("teach-into-adapter", "teach --dataset arith --first 2 --out {w}/ad", 2, ["--out", "ad", "adapter"]),
    ("teach-binary-prompt-file", "teach --dataset arith --first 2 --prompt file:{w}/prompts.bin --out {w}/new", 1,
     ["prompts.bin:1", "not UTF-8"]),
    ("teach-unknown-prompt", "teach --dataset arith --prompt gsm8k-complx-8shot --out {w}/new", 2,
     ["--prompt", "gsm8k-complex-8shot"]),
    ("teach-zero-samples", "teach --dataset arith --samples 0 --out {w}/new", 2, ["samples"]),
    ("teach-unknown-teacher", "teach --dataset arith --teacher gpt5 --out {w}/new", 1, ["gpt5"]),
    ("teach-openai-without-model", "teach --dataset arith --teacher openai --out {w}/new", 2, ["--model"]),
    ("teach-openai-bad-url", "teach --dataset arith --teacher openai --model m --base-url ftp://x --out {w}/new", 2,
     ["--base-url"]),
    ("teach-bad-dataset-opt", "teach --dataset arith --dataset-opt noequals --out {w}/new", 2, ["--dataset-opt"]),
    ("teach-config-unknown-key", "teach --config {w}/unknown.yaml --out {w}/new", 2, ["rankk"]),
    ("teach-config-bad-type", "teach --config {w}/badtype.yaml --out {w}/new", 2, ["samples"]),
    ("teach-config-bad-yaml", "teach --config {w}/badyaml.yaml --out {w}/new", 2, ["badyaml.yaml", "YAML"]),
    # --- fit: outputs, inputs, data files, flags
    ("fit-out-is-data", "fit --data {w}/run --out {w}/run", 2, ["--out", "input --data"]),
    ("fit-out-holds-data", "fit --data {w}/run --out {w}", 2, ["--out", "holds the input --data"]),
    ("fit-out-foreign-dir", "fit --data {w}/run --out {w}/notes", 2, ["--out", "notes", "not a lorasp output"]),
    ("fit-out-file", "fit --data {w}/run --out {w}/afile", 2, ["--out", "afile", "not a directory"]),
    ("fit-over-artifact", "fit --data {w}/run --out {w}/ad", 2, ["--out", "ad", "--overwrite"]),
    ("fit-over-merged", "fit --data {w}/run --out {w}/merged --overwrite", 2, ["--out", "merged", "merged model"]),
    ("fit-over-eval-results", "fit --data {w}/run --out {w}/evalres --overwrite", 2, ["--out", "evalres", "eval"]),
    ("fit-missing-data", "fit --data {w}/nosuch --out {w}/new", 1, ["--data", "nosuch", "not found"]),
    ("fit-data-not-a-run", "fit --data {w}/notes --out {w}/new", 1, ["notes", "not a teach run"]),
    ("fit-data-bad-line", "fit --data {w}/run_badline --out {w}/new", 1, ["run_badline/samples.jsonl:2",
                                                                          "invalid JSON"]),
    ("fit-data-binary", "fit --data {w}/run_binary --out {w}/new", 1, ["run_binary/samples.jsonl:1", "not UTF-8"]),
    ("fit-bad-formats", "fit --data {w}/run --formats zero_shot_cot=x --out {w}/new", 2, ["--formats"]),
    ("fit-bad-loss", "fit --data {w}/run --loss kl --out {w}/new", 2, ["--loss"]),
    ("fit-full-quantized", "fit --data {w}/run --method full --quant nf4 --out {w}/new", 2, ["--method full"]),
    ("fit-bad-targets", "fit --data {w}/run --targets , --out {w}/new", 2, ["--targets"]),
    # --- eval
    ("eval-out-file", "eval --suite arith --limit 2 --out {w}/afile", 2, ["--out", "afile", "not a directory"]),
    ("eval-over-results", "eval --suite arith --limit 2 --out {w}/evalres", 2, ["--out", "evalres", "--overwrite"]),
    ("eval-out-foreign", "eval --suite arith --limit 2 --out {w}/notes", 2, ["--out", "notes"]),
    ("eval-out-is-adapter", "eval --adapter {w}/ad --suite arith --out {w}/ad", 2, ["--out", "input --adapter"]),
    ("eval-unknown-suite", "eval --suite nosuchsuite --out {w}/new", 1, ["nosuchsuite"]),
    ("eval-bad-mode", "eval --suite arith --mode nosuchmode --out {w}/new", 2, ["--mode", "nosuchmode"]),
    # --- merge
    ("merge-out-is-adapter", "merge {w}/ad --out {w}/ad", 2, ["--out", "input ADAPTER"]),
    ("merge-out-foreign", "merge {w}/ad --out {w}/notes", 2, ["--out", "notes", "not a lorasp output"]),
    ("merge-over-merged", "merge {w}/ad --out {w}/merged", 2, ["--out", "merged", "--overwrite"]),
    ("merge-over-other-kind", "merge {w}/ad --out {w}/ad2 --overwrite", 2, ["--out", "ad2", "adapter"]),
    ("merge-out-file", "merge {w}/ad --out {w}/afile", 2, ["--out", "afile"]),
    ("merge-missing-adapter", "merge {w}/nosuch --out {w}/new", 1, ["nosuch", "not found"]),
    ("merge-quantized-unforced", "merge {w}/ad --out {w}/new --base quantized", 2, ["--force-quantized"]),
    # --- combine
    ("combine-out-is-parent", "combine {w}/ad {w}/ad2 --out {w}/ad", 2, ["--out", "input ADAPTER"]),
    ("combine-out-holds-parent", "combine {w}/ad {w}/ad2 --out {w}", 2, ["--out", "holds the input ADAPTER"]),
    ("combine-out-foreign", "combine {w}/ad {w}/ad2 --out {w}/notes", 2, ["--out", "notes"]),
    ("combine-bad-weights", "combine {w}/ad {w}/ad2 --weights x,y --out {w}/new", 2, ["--weights"]),
    ("combine-weight-count", "combine {w}/ad {w}/ad2 --weights 1,2,3 --out {w}/new", 2, ["--weights", "3 weights"]),
    ("combine-one-adapter", "combine {w}/ad --out {w}/new", 2, ["two adapters"]),
    ("combine-parent-not-adapter", "combine {w}/ad {w}/notes --out {w}/new", 1, ["notes"]),
    # --- generate
    ("generate-name-part-of-lora", "generate --adapter a={w}/ad --prompt hi", 2, ["'a'", "lora_"]),
    ("generate-name-reserved", "generate --adapter base={w}/ad --prompt hi", 2, ["'base'", "reserved"]),
    ("generate-bad-adapter-spec", "generate --adapter {w}/ad --prompt hi", 2, ["--adapter", "NAME=DIR"]),
    ("generate-binary-prompts-file", "generate --model tiny-llama --prompts-file {w}/prompts.bin", 1,
     ["prompts.bin:1", "not UTF-8"]),
    ("generate-no-prompt", "generate --adapter x={w}/ad", 2, ["--prompt"]),
    ("generate-unknown-use", "generate --adapter x={w}/ad --use y --prompt hi", 2, ["'y'"]),
    # --- export
    ("export-out-foreign", "export {w}/ad --out {w}/notes", 2, ["--out", "notes", "not a lorasp output"]),
    ("export-out-is-artifact", "export {w}/ad --out {w}/ad", 2, ["--out", "input ARTIFACT"]),
    # --- adapters / report
    ("adapters-show-foreign", "adapters show {w}/notes", 1, ["notes", "lorasp"]),
    ("adapters-show-bad-manifest", "adapters show {w}/badmanifest", 1, ["badmanifest/lorasp.json:1",
                                                                         "invalid JSON"]),
    ("report-foreign", "report {w}/notes", 1, ["notes"]),
    ("report-out-foreign", "report {w}/ad --out {w}/notes", 2, ["--out", "notes", "not a lorasp artifact"]),
    ("report-out-file", "report {w}/ad --out {w}/afile", 2, ["--out", "afile", "not a directory"]),
]


def _params():
    return [pytest.param(argv, code, want, id=cid) for cid, argv, code, want in CASES]


def _check(w: Path, code: int, err: str, want_code: int, want: list[str], before: dict) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == want_code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "unexpected" not in err, err
    for s in want:
        assert s.format(w=w) in lines[0], (s, lines[0])
    assert "at at" not in lines[0]
    assert tree_hashes(w) == before, "a bad input changed the workspace"


@pytest.mark.parametrize("argv,want_code,want", _params())
def test_bad_input_is_one_line_and_changes_nothing(ws, capsys, argv, want_code, want):
    import shlex

    before = tree_hashes(ws)
    code, _, err = main_cli(capsys, *shlex.split(argv.format(w=ws)))
    _check(ws, code, err, want_code, want, before)


def test_console_script_gives_the_same_lines(ws):
    """Two cases through the installed ``lorasp`` script (a real process, real exit codes)."""
    import shlex

    for argv, want_code, want in [("fit --data {w}/run --out {w}/run", 2, ["input --data"]),
                                  ("merge {w}/ad --out {w}/notes", 2, ["not a lorasp output"])]:
        before = tree_hashes(ws)
        r = run_cli(*shlex.split(argv.format(w=ws)), env={"LORASP_DEBUG": ""})
        _check(ws, r.returncode, r.stderr, want_code, want, before)


def test_fit_out_dot_names_the_current_directory(ws, capsys, monkeypatch):
    monkeypatch.chdir(ws / "notes")
    before = tree_hashes(ws)
    code, _, err = main_cli(capsys, "fit", "--data", str(ws / "run"), "--out", ".")
    _check(ws, code, err, 2, ["--out .", "current directory"], before)
    assert "empty name" not in err


def test_at_least_forty_cases():
    assert len(CASES) >= 40
