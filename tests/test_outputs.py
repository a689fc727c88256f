"""Output directories (``lora_spec.outputs``): every output directory has one owner. lorasp replaces only what it wrote, one writer at a time, and
every wait has a deadline.

A hostile but realistic user plants their own files in (and around) every ``--out``: each command either refuses
with exit code != 0 and one line (the workspace unchanged, byte for byte), or, under ``--overwrite``, replaces only
lorasp's own files and says which of the user's it kept. Then: two merges on one ``--out``, a teacher server that
trickles one byte a second (a real HTTP server on 127.0.0.1), a 50 MB teacher answer, a moved project folder, a
symlinked ``--out``, a real full disk (a small tmpfs) and crash residue of a killed write.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import main_cli, make_adapter, run_in_process, tree_hashes

LORASP = [str(Path(sys.executable).with_name("lorasp"))] if Path(sys.executable).with_name("lorasp").exists() \
    else [sys.executable, "-m", "lora_spec.cli"]


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("precision", "eval: precision"))]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _user_sqlite(path: Path) -> None:
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE expenses (day TEXT, amount REAL)")
    db.execute("INSERT INTO expenses VALUES ('2026-12-01', 12.5)")
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_llama_path):
    """A workspace: a teach run, two tiny adapters, an earlier export, merge and combine output, eval results,
    and the user's own look-alikes (a manifest.json + problems.jsonl of their own, their own store.sqlite)."""
    from lora_spec.artifact_files import write_manifest
    from lora_spec.outputs import EXPORT_FORMAT
    from lora_spec.teach import teach

    w = tmp_path_factory.mktemp("ownership")
    teach(dataset="arith", teacher="gold", first=6, out=str(w / "run"), progress=False)
    make_adapter(tiny_llama_path, w / "ad", seed=1, r=4)
    make_adapter(tiny_llama_path, w / "ad2", seed=2, r=4)
    for kind in ("merged", "combined"):  # earlier outputs (only their markers matter before any model loads)
        (w / kind).mkdir()
        write_manifest(w / kind, {"kind": kind, "base": {"name": "tiny-llama"}})
        (w / kind / "model.safetensors").write_bytes(b"old weights")
        (w / kind / "notes.txt").write_text("my notes\n")
    (w / "gguf").mkdir()
    (w / "gguf" / "export.json").write_text(json.dumps({"format_id": EXPORT_FORMAT, "files": [
        "Modelfile", "adapter.gguf", "export.json"]}))
    (w / "gguf" / "Modelfile").write_text("FROM ./base.gguf\nADAPTER ./adapter.gguf\n")
    (w / "gguf" / "adapter.gguf").write_bytes(b"GGUF old")
    (w / "gguf" / "base.gguf").write_bytes(b"GGUF the user's own base, 4 GB in real life")
    (w / "gguf" / "notes.md").write_text("how I run it\n")
    (w / "evalres").mkdir()
    (w / "evalres" / "results.json").write_text(json.dumps({"lorasp_version": "0", "tasks": {}}))
    (w / "evalres" / "report.md").write_text("# earlier results\n")
    (w / "evalres" / "notes.txt").write_text("mine\n")
    (w / "mine").mkdir()  # item 2: a user's own files of the teach run's names
    (w / "mine" / "manifest.json").write_text(json.dumps({"project": "tax return", "version": 3}))
    (w / "mine" / "problems.jsonl").write_text(json.dumps({"problem": "the roof leaks"}) + "\n")
    (w / "mydb").mkdir()
    _user_sqlite(w / "mydb" / "store.sqlite")
    (w / "notes").mkdir()
    (w / "notes" / "notes.txt").write_text("my own notes\n")
    return w


# --------------------------------------------------------------------------------------------- the table

# (id, argv with {w}, substrings of the one error line). Every case must refuse: exit != 0, one line, and the
# workspace unchanged. Items 1-3 of issue 37, and "nothing lorasp writes goes inside another artifact".
REFUSED = [
    # 1. export onto an earlier export without --overwrite (it replaced the whole directory, exit 0)
    ("export-over-export", "export {w}/ad --out {w}/gguf", ["--overwrite", "base.gguf", "would be kept"]),
    ("export-into-notes", "export {w}/ad --out {w}/notes", ["not a lorasp output", "notes.txt"]),
    ("export-inside-artifact", "export {w}/ad --out {w}/ad2/gguf", ["inside", "ad2", "never writes into"]),
    # 2. teach took a user's manifest.json + problems.jsonl, or a store.sqlite, for its own run
    ("teach-users-manifest", "teach --dataset arith --first 3 --teacher gold --out {w}/mine --no-progress",
     ["not a lorasp output", "manifest.json"]),
    ("teach-users-sqlite", "teach --dataset arith --first 3 --teacher gold --out {w}/mydb --no-progress",
     ["not a lorasp output", "store.sqlite"]),
    ("teach-inside-adapter", "teach --dataset arith --first 3 --teacher gold --out {w}/ad/sub --no-progress",
     ["inside", "lorasp adapter artifact"]),
    ("teach-inside-run", "teach --dataset arith --first 3 --teacher gold --out {w}/run/sub --no-progress",
     ["inside", "teach run"]),
    ("fit-inside-adapter", "fit --data {w}/run --student tiny-llama --out {w}/ad/sub", ["inside"]),
    ("fit-over-adapter", "fit --data {w}/run --student tiny-llama --out {w}/ad2", ["--overwrite"]),
    ("fit-into-users-manifest", "fit --data {w}/run --student tiny-llama --out {w}/mine", ["not a lorasp output"]),
    ("merge-over-merged", "merge {w}/ad --out {w}/merged", ["--overwrite", "notes.txt", "would be kept"]),
    ("merge-inside-export", "merge {w}/ad --out {w}/gguf/m", ["inside", "lorasp export"]),
    ("merge-into-users-db", "merge {w}/ad --out {w}/mydb", ["not a lorasp output"]),
    ("combine-over-combined", "combine {w}/ad {w}/ad2 --out {w}/combined", ["--overwrite", "notes.txt"]),
    ("combine-inside-run", "combine {w}/ad {w}/ad2 --out {w}/run/c", ["inside", "teach run"]),
    ("eval-over-results", "eval --adapter {w}/ad --suite arith --out {w}/evalres", ["--overwrite"]),
    ("eval-inside-adapter", "eval --adapter {w}/ad --suite arith --out {w}/ad2/eval", ["inside"]),
    ("eval-into-users-manifest", "eval --adapter {w}/ad --suite arith --out {w}/mine", ["not a lorasp output"]),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_foreign_files_survive_or_the_command_refuses_in_one_line(ws, capsys, case):
    _id, argv, needles = case
    before = tree_hashes(ws)
    code, _, err = main_cli(capsys, *argv.format(w=ws).split())
    lines = _lines(err)
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in err and "unexpected" not in err
    assert tree_hashes(ws) == before  # nothing written, nothing lost


def test_markers_not_names_decide_what_is_lorasps(ws):
    from lora_spec.outputs import foreign_names, output_kind

    assert output_kind(ws / "run") == "teach"
    assert output_kind(ws / "mine") == "foreign"  # manifest.json + problems.jsonl of the user's
    assert output_kind(ws / "mydb") == "foreign"  # a user's SQLite database named store.sqlite
    assert output_kind(ws / "gguf") == "export"
    assert foreign_names(ws / "gguf") == ["base.gguf", "notes.md"]
    assert foreign_names(ws / "merged") == ["notes.txt"]
    stray = ws / "stray_export"
    stray.mkdir()
    (stray / "export.json").write_text('{"my": "own export.json"}')
    try:
        assert output_kind(stray) == "foreign"
    finally:
        shutil.rmtree(stray)


def test_the_sample_store_never_writes_into_a_users_database(tmp_path):
    from lora_spec.errors import DataError
    from lora_spec.store import SampleStore

    db = tmp_path / "store.sqlite"
    _user_sqlite(db)
    before = db.read_bytes()
    with pytest.raises(DataError, match="not a lorasp sample store"):
        SampleStore(db)
    assert db.read_bytes() == before
    assert not (tmp_path / "store.sqlite-wal").exists()


# --------------------------------------------------------------------------------------------- --overwrite

def test_export_overwrite_replaces_only_lorasps_files(ws, tmp_path):
    """Item 1: ``export --overwrite`` onto an earlier export keeps the user's base GGUF and notes, byte for byte,
    and says so."""
    from lora_spec.adapters.export import export

    out = tmp_path / "gguf"
    shutil.copytree(ws / "gguf", out)
    mine = {n: (out / n).read_bytes() for n in ("base.gguf", "notes.md")}
    from lora_spec.outputs import OutputError

    with pytest.raises(OutputError, match="--overwrite"):
        export(ws / "ad", out)
    export(ws / "ad", out, overwrite=True)
    assert (out / "adapter.gguf").read_bytes() != b"GGUF old" and (out / "export.json").exists()
    assert {n: (out / n).read_bytes() for n in mine} == mine
    doc = json.loads((out / "export.json").read_text())
    assert doc["format_id"] == "lorasp-export/1" and "base.gguf" not in doc["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gguf"]  # no temporary, no old copy left


def test_merge_overwrite_keeps_foreign_files_and_says_so(ws, tmp_path):
    """Item 3 (merge): ``merge --overwrite`` deleted the old directory whole, foreign files included."""
    out = tmp_path / "merged"
    shutil.copytree(ws / "merged", out)
    sub = out / "teach-run-of-mine"  # a directory the user put there
    sub.mkdir()
    (sub / "data.txt").write_text("precious\n")
    r = run_in_process("merge", str(ws / "ad"), "--out", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "my notes\n" and (sub / "data.txt").read_text() == "precious\n"
    assert "kept 2 files lorasp did not write: notes.txt, teach-run-of-mine" in r.stderr, r.stderr
    assert json.loads((out / "lorasp.json").read_text())["kind"] == "merged"
    assert (out / "model.safetensors").read_bytes() != b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_atomic_dir_refuses_a_foreign_file_the_new_output_would_replace(tmp_path):
    from lora_spec.artifact_files import atomic_dir
    from lora_spec.outputs import OutputError

    art = tmp_path / "art"
    art.mkdir()
    (art / "lorasp.json").write_text(json.dumps({"kind": "adapter"}))
    (art / "extra.bin").write_bytes(b"mine")
    with pytest.raises(OutputError, match="extra.bin: lorasp did not write it"):
        with atomic_dir(art) as tmp:
            (tmp / "lorasp.json").write_text(json.dumps({"kind": "adapter"}))
            (tmp / "extra.bin").write_bytes(b"new")
    assert (art / "extra.bin").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


# --------------------------------------------------------------------------------------------- one writer

def test_merge_and_combine_take_the_lock_the_second_is_refused_with_the_holders_pid(ws, tmp_path, capsys):
    """Item 4: merge/combine/export on an --out another process is writing: refused naming its pid."""
    out = tmp_path / "m"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from lora_spec.outputs import RunLock; "
                               f"RunLock({str(out)!r}, 'merge output directory').acquire(); "
                               "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (["merge", str(ws / "ad"), "--out", str(out)],
                     ["combine", str(ws / "ad"), str(ws / "ad2"), "--out", str(out)],
                     ["export", str(ws / "ad"), "--out", str(out)]):
            code, _, err = main_cli(capsys, *argv)
            lines = _lines(err)
            assert code == 1 and len(lines) == 1 and f"in use by pid {holder.pid}" in lines[0], err
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [".lorasp.lock"]


@pytest.mark.slow
def test_two_merges_on_one_out_one_wins_the_other_is_refused(ws, tmp_path):
    """Item 4: two real ``lorasp merge`` processes on one --out, started together: exactly one exits 0; the other
    is refused in one line (the lock's holder, or the finished first merge without --overwrite)."""
    out = tmp_path / "m"
    procs = [subprocess.Popen(LORASP + ["merge", str(ws / "ad"), "--out", str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in res)
    assert codes[0] == 0 and codes[1] != 0, res
    loser = next(e for c, e in res if c != 0)
    lines = _lines(loser)
    assert len(lines) == 1 and ("in use by pid" in lines[0] or "pass --overwrite" in lines[0]), loser
    assert json.loads((out / "lorasp.json").read_text())["kind"] == "merged"


# --------------------------------------------------------------------------------------------- crash residue

def test_the_next_merge_removes_a_killed_writes_temporary_directory(ws, tmp_path):
    """Item 7: ``.NAME.tmp-PID-*`` left by a kill -9 during merge's (or fit's) final write is removed by the next
    command that writes beside it, which says so; a live process's temporary directory is left alone."""
    out = tmp_path / "m"
    dead = tmp_path / f".m.tmp-{_dead_pid()}-1700000000000"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"\0" * 4096)
    live = tmp_path / f".m.tmp-{os.getpid()}-1700000000000"  # this test process is alive
    live.mkdir()
    r = run_in_process("merge", str(ws / "ad"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert not dead.exists() and live.exists()
    assert f"removed 1 unfinished temporary directory an interrupted lorasp write left beside {out}" in r.stderr


def test_an_interrupted_replacement_gives_the_users_files_back(tmp_path):
    """A kill between the two renames of a replacement leaves ``.NAME.old-PID``: the next write puts the user's
    files in it back into the output before removing it."""
    from lora_spec.artifact_files import atomic_dir

    final = tmp_path / "art"
    final.mkdir()
    (final / "lorasp.json").write_text(json.dumps({"kind": "adapter"}))
    old = tmp_path / f".art.old-{_dead_pid()}"
    old.mkdir()
    (old / "lorasp.json").write_text(json.dumps({"kind": "adapter"}))
    (old / "notes.txt").write_text("mine\n")
    said: list[str] = []
    with atomic_dir(final, warn=said.append) as tmp:
        (tmp / "lorasp.json").write_text(json.dumps({"kind": "adapter", "new": True}))
    assert (final / "notes.txt").read_text() == "mine\n" and not old.exists()
    assert json.loads((final / "lorasp.json").read_text())["new"] is True
    assert any("removed 1 unfinished temporary directory" in m for m in said), said


# --------------------------------------------------------------------------------------------- teach reruns

def test_a_teach_rerun_never_shrinks_a_run_silently(tmp_path, capsys):
    """Item 5: another --dataset/--split into a run is refused; a smaller --first says in one line that it exports a
    subset and where the rest is."""
    from lora_spec.teach import teach

    out = tmp_path / "run"
    teach(dataset="arith", teacher="gold", first=6, out=str(out), progress=False)
    before = tree_hashes(out)
    code, _, err = main_cli(capsys, "teach", "--dataset", "arith", "--split", "test", "--first", "6", "--teacher",
                            "gold", "--samples", "1", "--out", str(out), "--no-progress")
    lines = _lines(err)
    assert code == 2 and len(lines) == 1 and "--split 'test'" in lines[0] and "'train'" in lines[0], err
    assert tree_hashes(out) == before
    capsys.readouterr()
    teach(dataset="arith", teacher="gold", first=3, out=str(out), progress=False)
    err = capsys.readouterr().err
    assert f"exporting 3 of the 6 problems this run holds; the samples of the other 3 stay in {out / 'store.sqlite'}" \
        in err, err
    assert json.loads((out / "manifest.json").read_text())["format"] == "lorasp-teach-run/1"


# --------------------------------------------------------------------------------------------- deadlines

class _Trickle:
    """A real HTTP server on 127.0.0.1 that answers every POST with headers, then one body byte a second."""

    def __init__(self, every: float = 1.0):
        import http.server

        self.every = every
        self.requests = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"choices": [{"index": 0, "text": " The answer is 2.", "finish_reason": "stop"}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for ch in body:
                        self.wfile.write(ch.encode())
                        self.wfile.flush()
                        time.sleep(outer.every)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_timeout_is_a_deadline_even_when_the_server_trickles(tmp_path):
    """Item 6: a server that trickles one byte a second kept one answer waiting ~46 s under ``--timeout 5``
    (httpx's read timeout restarts on every byte). Now the answer is given up on 5 s after it was asked for (plus
    the retry's backoff), measured, and recorded as a failure that names --timeout."""
    from lora_spec.teach import teach

    srv = _Trickle(every=1.0)
    try:
        t0 = time.monotonic()
        teach(dataset="arith", teacher="openai", model="m", base_url=srv.url, first=1, samples=1, timeout=5,
              max_retries=1, concurrency=1, out=str(tmp_path / "run"), progress=False,
              teacher_opt=["backoff=0.2", "max_backoff=0.2"])
        took = time.monotonic() - t0
    finally:
        srv.close()
    assert srv.requests == 2  # the first try and one retry
    assert took < 2 * 5 + 0.2 + 2.0, took  # two deadlines, the backoff and start-up; it was 2 x ~46 s before
    assert took > 2 * 5 - 0.5, took
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["status"] == "incomplete" and m["counts"]["failed"] == 1, m
    assert "within --timeout 5s" in str(m["failure_examples"]), m


def test_a_50mb_teacher_answer_is_dropped_and_counted(tmp_path):
    """Item 9: a 50 MB sample was stored. Now an answer over --max-answer-chars (default 1,000,000 characters) is
    dropped, counted in the manifest, and the run's files stay small."""
    from lora_spec.teach import teach

    qs = [json.loads(ln) for ln in (Path(teach(dataset="arith", teacher="gold", first=2, progress=False,
                                               out=str(tmp_path / "gold"))) / "problems.jsonl").read_text()
          .splitlines()]
    f = tmp_path / "answers.jsonl"
    with f.open("w") as fh:
        fh.write(json.dumps({"question": qs[0]["question"], "output": "Let me think. " * 3_600_000}) + "\n")
        fh.write(json.dumps({"question": qs[1]["question"], "output": f"The answer is {qs[1]['answer']}."}) + "\n")
    assert f.stat().st_size > 50_000_000
    teach(dataset="arith", teacher="file", teacher_opt=[f"path={f}"], first=2, samples=1,
          out=str(tmp_path / "run"), progress=False)
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["counts"]["too_long"] == 1 and m["counts"]["received"] == 1, m["counts"]
    assert (tmp_path / "run" / "store.sqlite").stat().st_size < 1_000_000
    assert (tmp_path / "run" / "samples.jsonl").stat().st_size < 10_000


def test_fit_cuts_a_huge_text_before_tokenizing_it(tiny_llama_path):
    """Item 9: a 2-step fit of 5 rows at --max-length 512 took 2 min and 10.3 GB (the whole text was tokenized
    before truncation). The rows are cut in characters first: the same tokens, in well under a second."""
    from transformers import AutoTokenizer

    from lora_spec.batching import encode_examples
    from lora_spec.formats import Example

    tok = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    words = " ".join(f"step {i}: 3 + {i} = {3 + i}." for i in range(4000))  # ~100k characters
    small = [Example("", "Q: what is 2+2?\nA:" + words, " " + words + " The answer is 4.")]
    cut, _ = encode_examples(small, tok, "causal", 512)
    whole_p = tok(small[0].prompt)["input_ids"]
    assert len(whole_p) > 512 * 2  # the cut matters, and keeps exactly what the token cut keeps
    from lora_spec import batching

    old = batching.CHARS_PER_TOKEN
    try:
        batching.CHARS_PER_TOKEN = 10 ** 9  # no character cut: the reference
        ref, _ = encode_examples(small, tok, "causal", 512)
    finally:
        batching.CHARS_PER_TOKEN = old
    assert cut[0].input_ids == ref[0].input_ids and cut[0].labels == ref[0].labels
    huge = [Example("", "Q: " + "x" * 25_000_000, " The answer is 4. " + "y " * 12_500_000)]
    t0 = time.monotonic()
    enc, n_cut = encode_examples(huge, tok, "causal", 512)
    assert time.monotonic() - t0 < 5 and n_cut == 1 and len(enc[0].input_ids) == 512


# --------------------------------------------------------------------------------------------- fit

FIT = ["--dataset", "arith", "--teacher", "gold", "--student", "tiny-llama", "--first", "8", "--batch-size", "4",
       "--save-every", "1", "--max-steps", "2", "--no-progress", "--tracker", "none", "--in-dist", "none", "--ood",
       "none", "--generic", "none"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One real tiny fit (2 steps, a checkpoint each), in its own project folder."""
    proj = tmp_path_factory.mktemp("project")
    r = run_in_process("fit", *FIT, "--out", str(proj / "ad"))
    assert r.returncode == 0, r.stderr
    return proj


def _copy_project(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.mark.slow
def test_fit_overwrite_keeps_foreign_files_and_a_moved_project_still_works(fitted, tmp_path):
    """Item 3 (fit): ``fit --overwrite`` deleted the old artifact whole, a user's note and directory included.
    Item 10: after the project folder moved, the finished fit was reported unfinished. Item 7: the killed final
    write's temporary directory is removed. Item 11: a symlinked --out is its target."""
    proj = tmp_path / "moved"
    shutil.move(str(_copy_project(fitted, tmp_path / "orig")), proj)  # the folder moved: old paths are gone
    out = proj / "ad"
    (out / "notes.txt").write_text("mine\n")
    (out / "my-run").mkdir()
    (out / "my-run" / "data.jsonl").write_text("{}\n")
    dead = proj / f".ad.tmp-{_dead_pid()}-1700000000000"
    dead.mkdir()
    (dead / "adapter_model.safetensors").write_bytes(b"\0" * 1024)
    link = tmp_path / "link"
    link.symlink_to(out)
    r = run_in_process("fit", *FIT, "--out", str(link), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert "unfinished fit" not in r.stderr
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "my-run" / "data.jsonl").read_text() == "{}\n"
    assert "kept 2 files lorasp did not write: my-run, notes.txt" in r.stderr, r.stderr
    assert not dead.exists() and link.is_symlink() and link.resolve() == out
    m = json.loads((out / "lorasp.json").read_text())
    assert Path(m["train"]["checkpoint_dir"]) == (proj / "ad.checkpoints").resolve()
    assert not (proj / "ad.checkpoints" / ".lorasp-previous").exists()  # the new fit's first checkpoint came


def test_finished_fit_detection_survives_a_moved_folder(fitted, tmp_path):
    """Item 10, without training: the finished fit's artifact and checkpoints, moved, are still a finished fit."""
    from lora_spec.fit import _finished

    proj = tmp_path / "elsewhere"
    shutil.move(str(_copy_project(fitted, tmp_path / "copy")), proj)
    assert _finished(proj / "ad", proj / "ad.checkpoints")
    assert _finished(fitted / "ad", fitted / "ad.checkpoints")


@pytest.mark.slow
def test_a_failed_fit_overwrite_keeps_the_previous_checkpoints_on_a_full_disk(fitted, tmp_path):
    """Item 8: a ``fit --overwrite`` that fails (here: a real full disk, a small tmpfs) had already deleted the
    previous fit's checkpoints. Now they are set aside and only removed once the new fit wrote its first; a fit
    that fails before that puts them back. Item 11: the disk-full error is one line naming the file."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    used = sum(p.stat().st_size for p in fitted.rglob("*") if p.is_file())
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = (used + 250_000) // 4096 * 4096  # room for the earlier fit and the new small files, not a checkpoint
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    if rc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {rc.stderr.decode().strip()}")
    try:
        proj = _copy_project(fitted, mnt / "p")
        ckpts = proj / "ad.checkpoints"
        before = tree_hashes(ckpts)
        r = run_in_process("fit", "--data", str(proj / "ad.teach"), *FIT[6:], "--out", str(proj / "ad"), "--overwrite",
                    env={"LORASP_DEBUG": ""})
        lines = _lines(r.stderr)
        assert r.returncode == 1, r.stderr
        err = lines[-1]
        assert err.startswith("error: ") and "the disk is full" in err and str(ckpts) in err, r.stderr
        assert "Traceback" not in r.stderr and "unexpected" not in r.stderr
        assert "the earlier fit's 2 checkpoints in" in r.stderr and "are kept" in r.stderr, r.stderr
        after = tree_hashes(ckpts)
        for k, v in before.items():
            if k.startswith("step-"):
                assert after.get(k) == v, k  # every earlier checkpoint, byte for byte
        assert json.loads((proj / "ad" / "lorasp.json").read_text())["kind"] == "adapter"  # the artifact too
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# --------------------------------------------------------------------------------------------- paths

def test_teach_resumes_through_a_symlinked_out(tmp_path):
    """Item 11: ``teach --out LINK`` said "not a directory"; a symlink resolves to its target."""
    from lora_spec.teach import teach

    run = tmp_path / "runs" / "a"
    teach(dataset="arith", teacher="gold", first=3, out=str(run), progress=False)
    link = tmp_path / "latest"
    link.symlink_to(run)
    r = run_in_process("teach", "--dataset", "arith", "--teacher", "gold", "--first", "5", "--out", str(link),
                "--no-progress")
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and json.loads((run / "manifest.json").read_text())["counts"]["problems"] == 5


def test_disk_full_and_file_size_errors_name_the_file(tmp_path):
    """Item 11: ``error: ?: 2048 requested and 1520 written`` and ``unexpected SafetensorError ... File too large``
    named no file. A real file size limit (prlimit --fsize) while lorasp writes an artifact: one line naming it."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit is not installed")
    code = ("import torch; from safetensors.torch import save_file; from lora_spec.adapters.artifact import "
            "atomic_dir\nwith atomic_dir(%r) as tmp:\n    save_file({'w': torch.zeros(100000)}, str(tmp / "
            "'model.safetensors'))\n" % str(tmp_path / "art"))
    prog = ("import sys; from lora_spec.errors import LoraspError\ntry:\n    exec(sys.argv[1])\nexcept LoraspError "
            "as e:\n    print('error:', e.message, file=sys.stderr); sys.exit(1)\n")
    r = subprocess.run(["prlimit", "--fsize=65536", sys.executable, "-c", prog, code], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = _lines(r.stderr)
    # safetensors removes its half-written file and names none: the output being written is named
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'art'}: cannot write its files: the file "
                                                   "size limit was reached (ulimit -f)"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written left


@pytest.mark.slow
def test_eval_of_a_merged_model_suggests_a_command_that_works(ws, tmp_path):
    """Item 11: ``eval --adapter MERGED_DIR`` suggested ``lorasp merge MERGED_DIR``, which then fails."""
    merged = tmp_path / "merged"
    r = run_in_process("merge", str(ws / "ad"), "--out", str(merged))
    assert r.returncode == 0, r.stderr
    r = run_in_process("eval", "--adapter", str(merged), "--suite", "arith", "--limit", "1", "--max-new-tokens", "4",
                "--out", str(tmp_path / "ev"), "--no-progress")
    assert r.returncode == 0, r.stderr
    nxt = [ln for ln in r.stderr.splitlines() if ln.startswith("next: ")]
    assert nxt == [f"next: lorasp generate --model {merged} --prompt \"...\""], r.stderr
    g = run_in_process("generate", "--model", str(merged), "--prompt", "1+1=", "--max-new-tokens", "2")
    assert g.returncode == 0, g.stderr


@pytest.mark.slow
def test_eval_overwrite_keeps_the_users_files(ws, tmp_path):
    """eval writes in place: under --overwrite only lorasp's results are replaced; a file of the user's in the
    output (or in its predictions/) survives."""
    out = tmp_path / "ev"
    args = ["eval", "--adapter", str(ws / "ad"), "--suite", "arith", "--limit", "1", "--max-new-tokens", "4",
            "--out", str(out), "--no-progress"]
    assert run_in_process(*args).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    (out / "predictions" / "my-analysis.jsonl").write_text("{}\n")
    r = run_in_process(*args, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "mine\n"
    assert (out / "predictions" / "my-analysis.jsonl").read_text() == "{}\n"


def test_combine_overwrite_and_a_teach_rerun_keep_the_users_files(ws, tmp_path):
    """Item 3 for combine (replaced whole), and teach (writes its run in place): the user's files survive."""
    from lora_spec.adapters.combine import combine
    from lora_spec.teach import teach

    out = tmp_path / "c"
    shutil.copytree(ws / "combined", out)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        combine([ws / "ad", ws / "ad2"], out, overwrite=True)
    said = buf.getvalue()
    assert (out / "notes.txt").read_text() == "my notes\n" and "kept 1 file lorasp did not write: notes.txt" in said
    assert json.loads((out / "lorasp.json").read_text())["kind"] == "combined"
    run = tmp_path / "run"
    teach(dataset="arith", teacher="gold", first=3, out=str(run), progress=False)
    (run / "notes.txt").write_text("mine\n")
    teach(dataset="arith", teacher="gold", first=5, out=str(run), progress=False)
    assert (run / "notes.txt").read_text() == "mine\n"


def test_residue_is_only_a_dead_process_own_temporaries():
    from lora_spec.outputs import residue

    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"lorasp-residue-{os.getpid()}"
    d.mkdir()
    try:
        dead = _dead_pid()
        for name in (f".gguf.tmp-{dead}-mergeab12_x", f".gguf.tmp-{dead}-1700000000000", f".gguf.old-{dead}",
                     f".gguf.tmp-{os.getpid()}-1", ".gguf-mine", f".other.tmp-{dead}-1", f"gguf.tmp-{dead}-1"):
            (d / name).mkdir()
        found = sorted(p.name for p in residue(d / "gguf"))
        assert found == sorted([f".gguf.old-{dead}", f".gguf.tmp-{dead}-1700000000000",
                                f".gguf.tmp-{dead}-mergeab12_x"])
    finally:
        shutil.rmtree(d)


def test_a_project_folder_that_merely_looks_like_eval_results_is_not_an_output_around_out(tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "results.json").write_text('{"my": "results"}')
    (proj / "report.md").write_text("# my report\n")
    from lora_spec.outputs import check_output

    assert check_output(proj / "runs" / "a", "teach") == (proj / "runs" / "a").resolve()
    (proj / "results.json").write_text('{"lorasp_version": "0.1", "tasks": {}}')
    code, _, err = main_cli(capsys, "teach", "--dataset", "arith", "--teacher", "gold", "--first", "2", "--out",
                            str(proj / "runs" / "a"))
    assert code == 2 and "inside" in err and "lorasp eval results" in err, err
