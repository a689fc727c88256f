"""Using the CLI as a new user does: generate and eval prompt as training did, strict/flexible scores, defaults
that show the truth, dry runs, help, progress lines, and the README's Python API block (on a tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import QUESTION, main_cli, training_prompt

FIT_STDERR: list[str] = []


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory):
    """A real (two-step) fit of tiny-llama on arith: its lorasp.json is what `lorasp fit` writes. Its stderr (not a
    terminal; progress lines every 0 s) is kept in FIT_STDERR."""
    import contextlib
    import io
    import os

    import lora_spec

    d = tmp_path_factory.mktemp("tiny_fit")
    buf = io.StringIO()
    old = os.environ.get("LORASP_PROGRESS_EVERY")
    os.environ["LORASP_PROGRESS_EVERY"] = "0"
    try:
        with contextlib.redirect_stderr(buf):
            lora_spec.fit(student="tiny-llama", dataset="arith", teacher="gold", first=12, max_steps=2, batch_size=4,
                          before_after=0, eval_every=0, tracker="none", progress=True, out=str(d / "arith-lora"))
    finally:
        if old is None:
            os.environ.pop("LORASP_PROGRESS_EVERY", None)
        else:
            os.environ["LORASP_PROGRESS_EVERY"] = old
    FIT_STDERR.append(buf.getvalue())
    return d / "arith-lora"


def test_generate_prompts_as_training_did(tiny_fit, capsys):
    """`lorasp generate` on a fitted adapter: the model's input is the training prompt of the same question (the
    adapter's main format, zs_cot, from lorasp.json); a trigger the user typed is not doubled."""
    from transformers import AutoTokenizer

    m = json.loads((tiny_fit / "lorasp.json").read_text())
    assert m["prompting"]["mode"] == "zs_cot" and m["prompting"]["chat"] is False
    tok = AutoTokenizer.from_pretrained(m["base"]["path"])
    code, out, err = main_cli(capsys, "generate", "--adapter", f"math={tiny_fit}", "--prompt",
                              QUESTION + " Let's think step by step.", "--prompt", QUESTION, "--max-new-tokens", "3",
                              "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    want = training_prompt(QUESTION, "zero_shot_cot", tok)
    assert want.endswith("Let's think step by step\n")
    assert [r["mode"] for r in rows] == ["zs_cot", "zs_cot"]
    assert rows[0]["input"] == want and rows[1]["input"] == want
    code, out, err = main_cli(capsys, "generate", "--adapter", f"math={tiny_fit}", "--prompt", QUESTION, "--mode",
                              "zs_answer", "--max-new-tokens", "2", "--json")
    assert code == 0 and json.loads(out)["input"] == training_prompt(QUESTION, "zero_shot_answer", tok), err
    code, out, err = main_cli(capsys, "generate", "--adapter", f"math={tiny_fit}", "--prompt", QUESTION, "--mode",
                              "raw", "--max-new-tokens", "2", "--json")
    assert code == 0 and json.loads(out)["input"] == QUESTION, err
    code, _, err = main_cli(capsys, "generate", "--adapter", f"math={tiny_fit}", "--prompt", "x", "--mode", "cot")
    assert code == 2 and err.count("\n") == 1 and "--mode" in err, err


def test_chat_prompt_equals_training_prompt(smollm2_path):
    """With a chat template (SmolLM2): system message, template and pre-filled trigger are those of training, for
    a manifest written by fit and for one written before `prompting` was recorded."""
    from transformers import AutoTokenizer

    from lora_spec.prompts import DEFAULT_SYSTEM, artifact_prompting, question_prompt

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    new = {"formats": {"zero_shot_cot": 8.0, "in_context_cot": 1.0, "zero_shot_answer": 1.0}, "chat": True,
           "prompting": {"mode": "zs_cot", "chat": True, "system": DEFAULT_SYSTEM, "n_shots": 2}}
    old = {"formats": {"in_context_cot": 4, "zero_shot_cot": 2, "zero_shot_answer": 1}, "chat": True}
    for manifest in (new, old):
        pr = artifact_prompting(manifest)
        assert pr["chat"] is True and pr["system"] == DEFAULT_SYSTEM
        assert pr["mode"] == ("zs_cot" if manifest is new else "icl_cot")
        for mode, fmt in (("zs_cot", "zero_shot_cot"), ("zs_answer", "zero_shot_answer")):
            got = question_prompt(QUESTION, mode, tok, chat=pr["chat"], system=pr["system"])
            assert got == training_prompt(QUESTION, fmt, tok, chat=None)
            assert DEFAULT_SYSTEM in got and "Question: Tom has 12" in got
    assert artifact_prompting(None)["mode"] is None


def test_eval_defaults_to_the_adapters_mode_and_out(tiny_fit, tmp_path, monkeypatch, capsys):
    """`lorasp eval --adapter A` scores in A's training mode (zs_cot; the arith suite's own is icl_cot), says so,
    and writes to runs/eval/<adapter name> without --out; results carry strict and flexible accuracy."""
    monkeypatch.chdir(tmp_path)
    code, out, err = main_cli(capsys, "eval", "--adapter", str(tiny_fit), "--suite", "arith", "--limit", "2",
                              "--max-new-tokens", "4", "--no-progress")
    assert code == 0, err
    assert "mode zs_cot for every task: the adapter's main training format" in err
    doc = json.loads((tmp_path / "runs" / "eval" / "arith-lora" / "results.json").read_text())
    r = doc["tasks"]["arith"]
    assert r["mode"] == "zs_cot" and doc["prompting"]["mode_from"] == "adapter"
    assert {"accuracy", "correct", "flexible_accuracy", "flexible_correct"} <= set(r)
    assert "flexible" in out and "strict" in (tmp_path / "runs" / "eval" / "arith-lora" / "report.md").read_text()
    code, _, err = main_cli(capsys, "eval", "--adapter", str(tiny_fit), "--suite", "arith", "--limit", "1",
                            "--max-new-tokens", "2", "--mode", "icl_answer", "--no-progress", "--out", "e2")
    assert code == 0 and "main training format" not in err, err
    assert json.loads(Path("e2/results.json").read_text())["tasks"]["arith"]["mode"] == "icl_answer"


def test_strict_and_flexible_scores():
    """Strict needs the answer sentence; flexible falls back to the last number (lm-eval's two filters)."""
    from lora_spec.answers import answers_match, extract_answer

    degenerate = "3 bags of 5 is 15. 12 + 15 = 27. 27 - 7 = 20. 20 20 20 20"
    assert extract_answer(degenerate) == "20" and extract_answer(degenerate, strict=True) is None
    stated = "12 + 15 - 7 = 20.\nThe answer is 20."
    assert extract_answer(stated, strict=True) == "20" == extract_answer(stated)
    assert extract_answer("The answer is (C).", "option", strict=True) == "(C)"
    assert extract_answer("I think (C) fits", "option", strict=True) is None
    assert extract_answer("I think (C) fits", "option") == "(C)"
    assert extract_answer("it is True", "bool", strict=True) is None and extract_answer("it is True", "bool")
    assert extract_answer("So the answer is No.", "yesno", strict=True) == "No"
    assert extract_answer("#### 1,080", strict=True) == "1080" and answers_match("1080", "1,080")


def test_eval_tasks_report_strict_headline_and_flexible(monkeypatch):
    """evaluate_tasks: accuracy counts only stated answers; flexible_accuracy also the last-number fallback."""
    from lora_spec import eval_engine as ev
    from lora_spec.records import EvalTask, Problem

    problems = [Problem(f"arith/{i}", f"q{i}", "20", meta={"dataset": "arith"}) for i in range(3)]
    outs = ["The answer is 20.", "12 + 15 - 7 = 20. 20 20 20", "The answer is 19."]
    monkeypatch.setattr(ev, "task_problems", lambda task, data_dir=None, seed=0: problems)
    monkeypatch.setattr(ev, "generate", lambda *a, **k: list(outs))
    res = ev.evaluate_tasks(None, None, [EvalTask("t", "arith", mode="zs_cot")], chat=False, progress=False)["t"]
    assert (res["correct"], res["flexible_correct"]) == (1, 2)
    assert res["accuracy"] == pytest.approx(1 / 3) and res["flexible_accuracy"] == pytest.approx(2 / 3)
    p = res["predictions"][1]
    assert p["extracted"] is None and not p["correct"] and p["extracted_flexible"] == "20" and p["correct_flexible"]


def test_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    """The README's Python API block, exactly as written except its first line's sizes (tiny-llama, 2 steps, 2
    problems), runs start to end: teach, fit, evaluate (default out), AdapterSet.generate, merge."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_api", root / "scripts" / "readme_api.py")
    readme_api = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_api)
    block = readme_api.readme_block()  # the block CI runs verbatim (make readme-api), found the same way
    line = 'model, steps, n = "smollm2-135m", 20, 30'
    assert block.count(line) == 1 and "smollm2-135m" not in block.replace(line, "")
    block = block.replace(line, 'model, steps, n = "tiny-llama", 2, 2')
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Python API)", "exec"), {"__name__": "readme"})
    doc = json.loads((tmp_path / "runs" / "eval" / "arith" / "results.json").read_text())
    assert doc["tasks"]["arith"]["n"] == 2 and doc["tasks"]["arith"]["mode"] == "zs_cot"
    assert (tmp_path / "adapters" / "arith" / "adapter_model.safetensors").exists()
    assert (tmp_path / "merged" / "arith" / "config.json").exists()
    printed = capsys.readouterr().out
    assert printed.startswith("['") or printed.startswith('["'), printed
    # the merged model keeps the adapter's prompting: generate --model MERGED prompts as training did
    code, out, err = main_cli(capsys, "generate", "--model", "merged/arith", "--prompt", QUESTION, "--json",
                              "--max-new-tokens", "2")
    assert code == 0 and json.loads(out)["mode"] == "zs_cot", err
    assert json.loads(out)["input"] == f"Question: {QUESTION}\nLet's think step by step\n"


def test_print_config_shows_the_values_that_run(capsys):
    """`lorasp fit --print-config` on the quickstart prints the resolved values, not the unresolved defaults."""
    import yaml

    code, out, err = main_cli(capsys, "fit", "--print-config")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert (cfg["select_by"], cfg["first"], cfg["out"], cfg["lr"], cfg["dataset"], cfg["before_after"]) == \
        ("in_dist", 512, "adapters/arith-lora", 1e-3, "arith", 50)
    code, out, _ = main_cli(capsys, "teach", "--print-config", "--dataset", "arith", "--split", "dev")
    assert code == 0 and yaml.safe_load(out)["out"] == "runs/teach/arith-dev"
    code, out, _ = main_cli(capsys, "eval", "--print-config", "--model", "tiny-llama")
    assert code == 0 and yaml.safe_load(out)["out"] == "runs/eval/tiny-llama"


def test_dry_runs_do_no_work(tmp_path, monkeypatch, capsys):
    """--dry-run of teach, fit and eval says what would run and writes nothing; fit's estimate comes from the
    seconds per step that an earlier fit with the same settings recorded."""
    from lora_spec.fit import FitConfig
    from lora_spec.fit_plan import record_calibration

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORASP_CACHE", str(tmp_path / "cache"))
    args = ["fit", "--dry-run", "--dataset", "arith", "--teacher", "gold", "--student", "tiny-llama", "--first",
            "40", "--batch-size", "4", "--eval-every", "5", "--out", "adapters/x"]
    code, out, err = main_cli(capsys, *args)
    assert code == 0, err
    assert "40 problems -> 40 training rows (in_context_cot 4, zero_shot_cot 32, zero_shot_answer 4)" in out
    assert "10 optimizer steps" in out and "evaluations: 3 (step 0, every 5 steps, the end)" in out
    assert "no measurement yet" in out
    from lora_spec.precision import resolve_precision

    used = resolve_precision("auto")
    assert f"precision:   {used.line()}" in out
    # a measurement in another precision is not this fit's estimate
    other = "bf16" if used.name == "fp32" else "fp32"
    record_calibration(FitConfig(student="tiny-llama", batch_size=4), steps=4, train_seconds=1.0,
                       tokens_per_second=100.0, precision=other)
    code, out, err = main_cli(capsys, *args)
    assert code == 0 and "no measurement yet" in out, out
    record_calibration(FitConfig(student="tiny-llama", batch_size=4), steps=4, train_seconds=10.0,
                       tokens_per_second=100.0, precision=used.name)
    code, out, err = main_cli(capsys, *args)
    assert code == 0 and "time:        ~0m 25s of training (2.5 s/step, measured " in out, out
    # one run on a busy machine (30 s/step) does not set the estimate: the median of the last runs does
    for seconds in (120.0, 10.0):
        record_calibration(FitConfig(student="tiny-llama", batch_size=4), steps=4, train_seconds=seconds,
                           tokens_per_second=100.0, precision=used.name)
    code, out, err = main_cli(capsys, *args)
    assert code == 0 and "~0m 25s of training (2.5 s/step, the median of the last 3 runs, the latest" in out, out
    for _ in range(4):  # five are kept: the busy run is the oldest and goes
        record_calibration(FitConfig(student="tiny-llama", batch_size=4), steps=4, train_seconds=4.0,
                           tokens_per_second=100.0, precision=used.name)
    code, out, err = main_cli(capsys, *args)
    assert code == 0 and "~0m 10s of training (1.0 s/step, the median of the last 5 runs" in out, out
    code, out, err = main_cli(capsys, "teach", "--dry-run", "--first", "7", "--samples", "3", "--out", "t")
    assert code == 0 and "7 problems (the first 7)" in out and "1 sample(s) per problem: 7 samples" in out, err
    code, out, err = main_cli(capsys, "eval", "--dry-run", "--model", "tiny-llama", "--suite", "arith", "--limit", "5")
    assert code == 0 and "arith" in out and "5 problems" in out and "runs/eval/tiny-llama/results.json" in out, err
    assert "at most 800 new tokens" in out and "no measurement yet" in out
    from lora_spec.calibration import device, record

    assert f"precision: {used.line()}" in out
    record(f"eval|tiny-llama|none|{device()}|{used.name}", tokens_per_second=40.0)
    code, out, err = main_cli(capsys, "eval", "--dry-run", "--model", "tiny-llama", "--suite", "arith", "--limit", "5")
    assert code == 0 and "time: at most ~0.3 min (40.0 generated tokens/s, measured " in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no adapters/, runs/ or t/


def test_fit_dry_run_measures_row_lengths_with_a_local_tokenizer(tmp_path, monkeypatch, capsys, tiny_llama_path):
    """With a teach run and a student already on the machine, --dry-run tokenizes the rows: their lengths, the
    in-context rows that drop exemplars to fit --max-length and the rows still cut (what choosing it needs)."""
    monkeypatch.chdir(tmp_path)
    code, _, err = main_cli(capsys, "teach", "--dataset", "arith", "--teacher", "gold", "--first", "30", "--out", "run",
                            "--no-progress")
    assert code == 0, err
    base = ["fit", "--dry-run", "--data", "run", "--student", str(tiny_llama_path), "--formats", "in_context_cot=1,"
            "zero_shot_cot=1", "--n-shots", "4"]
    code, out, err = main_cli(capsys, *base, "--max-length", "4096")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("lengths:"))
    longest = int(line.split("longest ")[1].split(";")[0])
    assert "--max-length 4096: no row is cut" in line and "drop exemplars" not in line
    code, out, err = main_cli(capsys, *base, "--max-length", str(longest - 1))
    line = next(x for x in out.splitlines() if x.startswith("lengths:"))
    assert code == 0 and f"--max-length {longest - 1}: " in line and "in-context rows drop exemplars to fit" in line, out
    assert "rows are cut" not in line  # a 4-shot row one token too long fits with 3 exemplars
    code, out, err = main_cli(capsys, *base, "--max-length", "8")
    assert code == 0 and "rows are cut (" in out and "zero_shot_cot 15" in out, out
    # a student that is not on this machine: nothing is downloaded or built, the dry run says so
    code, out, err = main_cli(capsys, "fit", "--dry-run", "--data", "run", "--student", "nobody/not-cached-model")
    assert code == 0 and "row lengths: not measured (the tokenizer of 'nobody/not-cached-model' is not on this " \
        "machine yet)" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_limit_means_one_thing(tmp_path, capsys):
    """--limit is a seeded sample everywhere it exists (eval, held-out sets); teach/fit's first-N is --first, and
    the old name there is a one-line error naming the new one (flag, YAML line, Python keyword), not an alias."""
    import lora_spec
    from lora_spec.errors import ConfigError

    code, _, err = main_cli(capsys, "teach", "--dry-run", "--limit", "7")
    assert code == 2 and err.startswith("error: --limit: 'limit' is now 'first' (--first): the first N problems"), err
    assert len(err.strip().splitlines()) == 1 and "seeded random sample" in err
    cfg = tmp_path / "fit.yaml"
    cfg.write_text("student: tiny-llama\nlimit: 40\n")
    code, _, err = main_cli(capsys, "fit", "--config", str(cfg), "--dry-run")
    assert code == 2 and f"{cfg}:2: 'limit' is now 'first' (--first)" in err, err
    with pytest.raises(ConfigError, match="'limit' is now 'first'"):
        lora_spec.teach(dataset="arith", limit=3, out=str(tmp_path / "t"), progress=False)
    code, out, err = main_cli(capsys, "plugins", "show", "datasets", "arith", "--first", "2")
    assert code == 0 and len([ln for ln in out.splitlines() if ln.startswith("{")]) == 2, err
    code, out, _ = main_cli(capsys, "teach", "--help")
    assert "--first INTEGER" in out and "--limit" not in out


def test_required_options_are_named(capsys):
    code, _, err = main_cli(capsys, "merge", "some/adapter")
    assert code == 2 and err.startswith("error: missing required option --out (Directory to write the merged"), err
    code, _, err = main_cli(capsys, "combine", "a", "b")
    assert code == 2 and "missing required option --out" in err and "got {}" not in err, err


def test_progress_lines_when_not_on_a_terminal():
    """Not on a terminal: one line every N seconds with count, percent, figures, elapsed and ETA; nothing when
    disabled; a bar (no plain lines) on a terminal."""
    import io

    from lora_spec.progress import Progress

    now = [0.0]
    buf = io.StringIO()
    p = Progress("fit", 10, stream=buf, every=30, columns=("loss", "tok/s"), clock=lambda: now[0])
    for step in range(1, 11):
        now[0] += 10
        p.update(step, loss=f"{1 / step:.4f}", **{"tok/s": "1,000"})
    p.close()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "fit: 3/10 (30%), loss 0.3333, tok/s 1,000, elapsed 0m30s, ETA 1m10s", lines
    assert len(lines) == 4 and lines[-1].startswith("fit: 10/10 (100%)") and "ETA" not in lines[-1]
    quiet = io.StringIO()
    q = Progress("x", 5, stream=quiet, every=0, enabled=False)
    q.update(advance=5)
    q.close()
    assert quiet.getvalue() == ""
    tty = io.StringIO()
    t = Progress("gen", 2, stream=tty, every=0, terminal=True, columns=("tok/s",))
    t.update(advance=2, **{"tok/s": "50"})
    t.close()
    assert "gen" in tty.getvalue() and "2/2" in tty.getvalue() and "elapsed" not in tty.getvalue()


def test_fit_writing_to_a_file_prints_progress_lines(tiny_fit):
    """A fit whose stderr is not a terminal still reports its steps (here every 0 s: each step)."""
    err = FIT_STDERR[0]
    assert "fit: 1/2 (50%), loss " in err and "fit: 2/2 (100%)" in err and "tok/s" in err, err


def test_artifact_files_are_readable_by_others(tiny_fit):
    """Weights are written 0644 (umask 022), not safetensors' 0600; so is everything else in the artifact."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_fit.iterdir()}
    assert "adapter_model.safetensors" in modes and set(modes.values()) == {0o666 & ~mask}, modes
    assert tiny_fit.stat().st_mode & 0o777 == 0o777 & ~mask


def test_merged_tokenizer_uses_the_training_system_message(smollm2_path, tmp_path):
    """A merged model's chat template, used by anyone through apply_chat_template, renders the system message
    training used (not SmolLM2's default one); a conversation with its own system message is unchanged."""
    from transformers import AutoTokenizer

    from lora_spec.adapters.merge import _save_tokenizer
    from lora_spec.prompts import DEFAULT_SYSTEM, question_prompt

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    original = tok.chat_template
    _save_tokenizer(tok, tmp_path, {"formats": {"zero_shot_cot": 1}, "chat": True})
    assert tok.chat_template == original  # the in-memory tokenizer is left as it was
    merged = AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": "Question: " + QUESTION}]
    text = merged.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text + "Let's think step by step\n" == question_prompt(QUESTION, "zs_cot", tok, chat=True)
    assert DEFAULT_SYSTEM in text and "SmolLM" not in text
    own = [{"role": "system", "content": "Be brief."}] + msgs
    assert merged.apply_chat_template(own, tokenize=False) == tok.apply_chat_template(own, tokenize=False)


def test_report_is_written_without_held_out_evaluation(tiny_fit):
    """Every fit writes report.md and curves.png, held-out evaluation or not; the table says what its loss is."""
    md = (tiny_fit / "report.md").read_text()
    assert (tiny_fit / "curves.png").stat().st_size > 1000
    assert "No held-out evaluation ran" in md and "train loss: the mean over the optimizer steps since" in md


def test_help_types_order_examples_and_next_steps(capsys):
    """Numeric options show their type; a command's own options come before inherited ones; commands are listed
    in workflow order; every command has an example; the main ones say what to run next."""
    import re

    code, out, _ = main_cli(capsys, "fit", "--help")
    assert code == 0
    assert re.search(r"--rank INTEGER", out) and re.search(r"--lr FLOAT", out) and "--method [lora|dora|full]" in out
    assert not re.search(r"--(rank|lr|epochs|max-steps|batch-size|eval-every|first) TEXT", out)
    opts = out.split("Options:")[1]
    assert opts.index("--student") < opts.index("--data ") < opts.index("--in-dist")
    code, out, _ = main_cli(capsys, "--help")
    names = re.findall(r"^  (\w+) ", out.split("Commands:")[1], re.M)
    assert names[:7] == ["teach", "score", "fit", "eval", "compare", "generate", "report"]
    assert names[-2:] == ["models", "plugins"]
    for cmd in (["teach"], ["score"], ["fit"], ["eval"], ["generate"], ["report"], ["runs"], ["merge"], ["combine"],
                ["adapters"], ["adapters", "list"], ["adapters", "show"]):
        code, out, _ = main_cli(capsys, *cmd, "--help")
        assert code == 0 and f"lorasp {' '.join(cmd)} " in out, (cmd, out)
        if cmd[0] in ("teach", "score", "fit", "eval", "merge", "combine", "report"):
            assert "next: " in out, cmd


def test_runs_lists_teach_fit_and_eval_with_headlines(tiny_fit, tmp_path, capsys):
    """`lorasp runs DIR`: the teach run, the fit and an eval run under a folder, percents everywhere."""
    import shutil

    from lora_spec.adapters.listing import before_after_line

    root = tmp_path / "work"
    shutil.copytree(tiny_fit.parent, root, ignore=shutil.ignore_patterns("*.checkpoints"))
    ev = root / "eval"
    ev.mkdir()
    (ev / "results.json").write_text(json.dumps({
        "model": {"name": "tiny-llama"}, "adapter": {"path": str(tiny_fit)}, "created": "2026-01-01T00:00:00",
        "suites": {"arith": {"tasks": ["arith"], "n": 8, "macro_accuracy": 0.25, "flexible_macro_accuracy": 0.375}},
        "tasks": {"arith": {"mode": "zs_cot"}}}))
    code, out, err = main_cli(capsys, "runs", str(root), "--json")
    assert code == 0, err
    rows = {r["path"]: r for r in json.loads(out)}
    assert [rows[p]["kind"] for p in ("arith-lora.teach", "arith-lora", "eval")] == ["teach", "fit", "eval"]
    assert rows["arith-lora.teach"]["headline"].startswith("12/12 samples, 12 correct; first-sample 100.0%")
    assert rows["eval"]["headline"] == "arith 25.0% (flexible 37.5%) zs_cot, n=8"
    assert rows["eval"]["what"] == "tiny-llama + arith-lora"
    cut = root / "cut-eval" / ".eval-journal"  # an interrupted eval (lora_spec.eval_journal): listed, not hidden
    cut.mkdir(parents=True)
    (cut / "gsm8k.jsonl").write_text('{"eval_journal": 1}\n{"id": "1"}\n{"id": "2"}\n{"id": "3", "outp')
    code, out, err = main_cli(capsys, "runs", str(root), "--json")
    row = {r["path"]: r for r in json.loads(out)}["cut-eval"]
    assert code == 0 and row["status"] == "interrupted" and row["kind"] == "eval", err
    assert row["headline"] == "2 predictions kept (gsm8k); rerun its command to continue"
    m = {"before_after": {"before": {"arith:test": {"accuracy": 0.04}}, "after": {"arith:test": {"accuracy": 0.38}}}}
    assert before_after_line(m) == "arith:test 4.0% -> 38.0%"
    m = {"selection": {"rule": "ood", "chosen_step": 20},
         "checkpoints": [{"step": 0, "scores": {"ood": 0.1}}, {"step": 20, "scores": {"ood": 0.25}}]}
    assert before_after_line(m) == "ood 10.0% -> 25.0% (step 20)"
