"""Batched generation, scoring, eval suites and `lorasp eval` (tiny fixtures for code paths, SmolLM2 for realism)."""

from __future__ import annotations

import json

import pytest

from lora_spec import registry
from lora_spec.errors import LoraspError
from lora_spec.eval_engine import evaluate_tasks, task_problems
from lora_spec.generation import generate
from lora_spec.records import EvalTask

PROMPTS = ["Question: a b c 12 + 3\n", "x", "Question: how many apples does John have if 3 + 4 = 7 and more\n",
           "the answer is", "Tom has 5 cars"]


@pytest.fixture(scope="module")
def tiny():
    from lora_spec.student import load_student

    return load_student("tiny-llama")


def test_batched_equals_one_at_a_time_and_keeps_order(tiny):
    batched = generate(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=16, batch_size=3, progress=False)
    single = [generate(tiny.model, tiny.tokenizer, [p], max_new_tokens=16, batch_size=1, progress=False)[0]
              for p in PROMPTS]
    assert batched == single
    assert tiny.tokenizer.padding_side == "left"


def test_stop_sequences_cut_and_count(tiny):
    st: dict = {}
    full = generate(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=16, progress=False, stats=st)
    assert st["generated_tokens"] > 0 and st["batches"] == 1
    # stop at a string that the unconstrained output contains: it is cut there, the rest unchanged
    i = next(k for k, o in enumerate(full) if len(o) > 6)
    stop = full[i][3:6]
    cut = generate(tiny.model, tiny.tokenizer, PROMPTS, max_new_tokens=16, progress=False, stop=[stop])
    assert cut[i] == full[i][:full[i].find(stop)].strip()
    for f, c in zip(full, cut):
        assert f.startswith(c)


def test_seq2seq_peft_and_nf4_students(tiny, tiny_t5_path):
    from peft import LoraConfig, get_peft_model

    from lora_spec.student import load_student

    t5 = load_student("tiny-t5")
    out = generate(t5.model, t5.tokenizer, PROMPTS, kind="seq2seq", max_new_tokens=6, batch_size=2, progress=False)
    single = [generate(t5.model, t5.tokenizer, [p], kind="seq2seq", max_new_tokens=6, progress=False)[0]
              for p in PROMPTS]
    assert out == single and len(out) == len(PROMPTS)
    base = load_student("tiny-llama")
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert len(generate(peft_model, base.tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False)) == 2
    q = load_student("tiny-llama", quant="nf4")
    assert len(generate(q.model, q.tokenizer, PROMPTS[:2], max_new_tokens=4, progress=False)) == 2


def test_evaluate_tasks_result_shape(tiny, data_dir):
    tasks = registry.create("evals", "math", limit=3, mode="zs_answer", max_new_tokens=6).tasks()
    assert [t.name for t in tasks] == ["gsm8k", "multiarith", "asdiv", "svamp"]
    res = evaluate_tasks(tiny.model, tiny.tokenizer, tasks, progress=False, data_dir=data_dir)
    for name, r in res.items():
        assert r["n"] == 3 and r["mode"] == "zs_answer" and 0 <= r["accuracy"] <= 1
        assert r["correct"] == sum(p["correct"] for p in r["predictions"])
        assert set(r["predictions"][0]) >= {"id", "question", "gold", "output", "extracted", "correct"}
        assert r["seconds"] > 0 and r["generated_tokens"] > 0
        # each prediction says how many tokens it took and whether it used the whole budget of 6
        toks = [p["tokens"] for p in r["predictions"]]
        assert all(1 <= t <= 6 for t in toks) and sum(toks) == r["generated_tokens"]
        assert [p["at_budget"] for p in r["predictions"]] == [t == 6 for t in toks]
        assert r["at_budget"] == toks.count(6)


def test_limit_is_a_seeded_sample(data_dir):
    t = EvalTask(name="asdiv", dataset="asdiv", limit=20)
    a, b = task_problems(t, data_dir), task_problems(t, data_dir)
    assert [p.id for p in a] == [p.id for p in b] and len(a) == 20
    grades = {p.meta["grade"] for p in a}
    assert len(grades) > 1  # not just the first (grade-1) problems


def test_scoring_uses_each_problems_answer_type(tiny, monkeypatch, data_dir):
    """A model that always writes the gold answer in the CoT format scores 100% on every answer type."""
    import lora_spec.eval_engine as engine
    from lora_spec.prompts import answer_target

    tasks = [EvalTask(name=f"bbh/{t}", dataset="bbh", dataset_params={"task": t}, mode="zs_answer", scorer="auto",
                      limit=5)
             for t in ("boolean_expressions", "date_understanding", "dyck_languages", "formal_fallacies",
                       "sports_understanding", "multistep_arithmetic_two")]
    tasks.append(EvalTask(name="asdiv", dataset="asdiv", mode="zs_answer", scorer="auto"))
    golds = {}
    for t in tasks:
        for p in task_problems(t, data_dir):
            golds[p.question] = p.meta.get("raw_answer", p.answer)

    def fake_generate(model, tokenizer, prompts, **kw):
        outs = []
        for pr in prompts:
            q = next(q for q in golds if f"Question: {q}\n" in pr)
            outs.append("Some reasoning, 1 + 2 = 3.\n" + answer_target(golds[q]))
        kw["stats"].update(seconds=0.1, generated_tokens=len(outs))
        return outs

    monkeypatch.setattr(engine, "generate", fake_generate)
    res = engine.evaluate_tasks(tiny.model, tiny.tokenizer, tasks, progress=False, data_dir=data_dir)
    for name, r in res.items():
        bad = [p for p in r["predictions"] if not p["correct"]]
        assert not bad, (name, bad[:2])


def test_chains_of_thought_are_checked_for_wrong_arithmetic(monkeypatch, tiny):
    """Per CoT task: how many of the equations the outputs write state a wrong result (answer-only: not counted);
    report.md says it, so a student that computes wrongly is told from one that reasons wrongly."""
    import lora_spec.eval_engine as engine
    import lora_spec.evaluate as ev

    outs = iter(["3 * 4 = 12, 12 + 1 = 14.\nThe answer is 14.", "2 + 2 = 4. The answer is 4.", "The answer is 5."])
    monkeypatch.setattr(engine, "generate", lambda m, t, prompts, **kw: [next(outs) for _ in prompts])
    task = EvalTask(name="arith", dataset="arith", mode="zs_cot", limit=3)
    r = engine.evaluate_tasks(tiny.model, tiny.tokenizer, [task], progress=False)["arith"]
    assert r["equations"] == {"checked": 3, "wrong": 1}
    monkeypatch.setattr(engine, "generate", lambda m, t, prompts, **kw: ["2 + 2 = 5. The answer is 5."] * len(prompts))
    r2 = engine.evaluate_tasks(tiny.model, tiny.tokenizer, [EvalTask(name="arith", dataset="arith", mode="zs_answer",
                                                                 limit=3)], progress=False)["arith"]
    assert "equations" not in r2  # answer-only mode: no chain of thought to check
    doc = {"model": {"name": "m", "kind": "causal", "quant": "none", "fingerprint": {"id": "f"}},
           "prompting": {"chat_template": False}, "limit": 3, "limit_seed": 0, "wall_seconds": 1.0, "created": "now",
           "suites": {"arith": {"macro_accuracy": 0.5, "micro_accuracy": 0.5, "n": 3, "tasks": ["arith"]}},
           "tasks": {"arith": {k: v for k, v in r.items() if k != "predictions"}}}
    assert ("Equations in the chains of thought (`a op b = c`, plain arithmetic) that state a wrong result (many: the "
            "model computes wrongly, whatever its reasoning): arith 1 of 3 (33%).") in ev.render_report(doc)


# --------------------------------------------------------------------------------------------- lorasp eval (CLI)

def _run(*args, **kw):
    from tests.helpers import run_in_process

    return run_in_process("eval", *args, **kw)


def test_cli_errors_are_one_line(tmp_path):
    r = _run("--suite", "mth", "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and r.stderr.strip() == ("error: unknown eval 'mth'; did you mean 'math' or 'arith'?")
    r = _run("--suite", "math", "--limit", "3", "--dry-run", cwd=tmp_path)  # no --out: runs/eval/<model name>
    assert r.returncode == 0 and "writes runs/eval/smollm2-135m/results.json" in r.stdout, r.stderr
    assert not (tmp_path / "runs").exists()
    r = _run("--suite", "math", "--adapter", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: --adapter: {tmp_path / 'nope'} is not a directory"
    r = _run("--suite", "bbh", "--task", "bbh/navigat", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "error: --task: 'bbh/navigat' is not a task of suite(s) bbh" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _run("--suite", "math", "--data-dir", str(empty), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert f"{empty / 'gsm8k' / 'test.jsonl'} not found" in r.stderr and "LORASP_DATA_DIR" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()


def test_cli_with_an_adapter_on_a_tiny_student(tmp_path, tiny_llama_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama_path)),
                       LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    m.save_pretrained(str(tmp_path / "ad"))
    out = tmp_path / "ev"
    r = _run("--model", "tiny-llama", "--adapter", str(tmp_path / "ad"), "--suite", "arith", "--suite", "bbh",
             "--task", "arith", "--task", "bbh/web_of_lies", "--limit", "3", "--mode", "zs_cot",
             "--max-new-tokens", "6", "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["tasks"]) == {"arith", "bbh/web_of_lies"}
    assert doc["adapter"]["digest"] and doc["adapter"]["path"].endswith("ad")
    assert doc["model"]["fingerprint"]["id"] and doc["tasks"]["arith"]["mode"] == "zs_cot"
    preds = [json.loads(x) for x in (out / "predictions" / "bbh__web_of_lies.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["scorer"] == "yesno" for p in preds)
    assert "bbh/web_of_lies" in (out / "report.md").read_text()
    # every accuracy has its n and 95% Wilson interval: results.json, report.md and the terminal
    from lora_spec.stats import wilson

    t = doc["tasks"]["arith"]
    assert t["ci"] == pytest.approx(list(wilson(t["correct"], t["n"])))
    assert doc["suites"]["arith"]["micro_ci"] == pytest.approx(t["ci"]) and doc["limit_seed"] == 0
    lo, hi = t["ci"]
    assert f"| arith | zs_cot | 3 | {t['correct']} | {t['accuracy']:.1%} | [{100 * lo:.1f}, {100 * hi:.1f}] |" in \
        (out / "report.md").read_text()
    assert f"n=3     accuracy={t['accuracy']:.1%} 95% CI [{100 * lo:.1f}, {100 * hi:.1f}]" in r.stdout
    # outputs that used the whole budget of 6 tokens are counted per task, and report.md names them
    at = {name: sum(json.loads(x)["at_budget"] for x in (out / doc["tasks"][name]["predictions_file"])
                    .read_text().splitlines()) for name in doc["tasks"]}
    assert {name: doc["tasks"][name]["at_budget"] for name in doc["tasks"]} == at and sum(at.values()) > 0
    for name, k in at.items():  # one line per suite (arith, bbh), after its table
        assert (f"Outputs that used the whole token budget (cut short or looping; `tokens` and `at_budget` in the "
                f"predictions): {name} {k} of 3." in (out / "report.md").read_text()) == (k > 0)
    # a run compared with itself: no change, within noise
    from tests.conftest import run_cli

    r = run_cli("compare", str(out), str(out / "results.json"))
    assert r.returncode == 0, r.stderr
    assert "| arith | 3 |" in r.stdout and "+0.0 [" in r.stdout and "within noise" in r.stdout


@pytest.mark.slow
def test_cli_on_the_real_student(tmp_path, smollm2_path):
    from lora_spec.student import base_fingerprint

    out = tmp_path / "ev"
    r = _run("--model", "smollm2-135m", "--suite", "math", "--suite", "arith", "--task", "gsm8k", "--task", "arith",
             "--limit", "2", "--mode", "zs_cot", "--max-new-tokens", "48", "--threads", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "gsm8k" in r.stdout and "suite math" in r.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["fingerprint"]["id"] == base_fingerprint(smollm2_path)["id"]
    assert doc["prompting"]["chat_template"] is True and doc["adapter"] is None
    for name in ("gsm8k", "arith"):
        t = doc["tasks"][name]
        assert t["n"] == 2 and t["generated_tokens"] > 10
        preds = [json.loads(x) for x in (out / t["predictions_file"]).read_text().splitlines()]
        assert all(len(p["output"].split()) >= 3 for p in preds)  # real text, not noise or nothing
        assert all(p["correct"] == (p["extracted"] is not None and p["extracted"] == p["gold"]) for p in preds)


MORE = PROMPTS + ["one two three four five six seven eight nine ten", "7 * 8 =", "Q: 100 - 1?\nA:"]


def _hf_greedy(model, tok, prompts, n):
    """Reference: transformers' own generate, one prompt at a time (no padding, no batching)."""
    import torch

    outs, n_tokens = [], 0
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        new = ids[0, enc["input_ids"].shape[1]:]
        n_tokens += len(new)
        outs.append(tok.decode(new, skip_special_tokens=True).strip())
    return outs, n_tokens


@pytest.mark.parametrize("batch_size", [1, 2, 3, 16])
def test_continuous_batching_matches_transformers_generate(tiny, batch_size):
    """Rows finish at different steps (a short token budget for some via stops), leave the batch and are replaced
    by waiting prompts; every output must still equal transformers' unbatched greedy generate."""
    ref, n_tokens = _hf_greedy(tiny.model, tiny.tokenizer, MORE, 12)
    st: dict = {}
    out = generate(tiny.model, tiny.tokenizer, MORE, max_new_tokens=12, batch_size=batch_size, progress=False,
                   stats=st)
    assert out == ref
    assert st["generated_tokens"] == n_tokens
    # stop strings taken from the reference outputs make rows finish early at different steps
    stops = [r[4:7] for r in ref if len(r) > 8][:3]
    st = {}
    cut = generate(tiny.model, tiny.tokenizer, MORE, max_new_tokens=12, batch_size=batch_size, progress=False,
                   stop=stops, stats=st)
    if 1 < batch_size < len(MORE):
        assert st["joins"] > 0  # waiting prompts really were joined into a running batch
    for r, c in zip(ref, cut):
        k = min([r.find(s) for s in stops if s in r], default=len(r))
        assert c == r[:k].strip()


def test_kv_buffers_write_in_place_and_change_nothing(tiny, monkeypatch):
    """Decoding into over-allocated KV buffers (one position written per step; rows joined, selected and trimmed;
    a buffer that runs out of room grows) gives exactly the outputs of transformers' concatenating cache."""
    from lora_spec import generation

    prefix = "Answer briefly. Example: 2 + 2 = 4. Example: 3 + 5 = 8. Now the question.\n"
    prompts = [prefix + p for p in MORE] + MORE
    ref, _ = _hf_greedy(tiny.model, tiny.tokenizer, prompts, 12)
    stops = [r[4:7] for r in ref if len(r) > 8][:3]  # rows finish at different steps: selects, joins, trims
    seen = []
    real_buffer = generation._buffer_cache
    monkeypatch.setattr(generation, "_buffer_cache", lambda cache, room: seen.append(room) or real_buffer(cache, room))
    for bs in (3, 16):
        st: dict = {}
        out = generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=12, batch_size=bs, progress=False,
                       stop=stops, stats=st)
        monkeypatch.setattr(generation, "BUFFER_KV", False)
        plain = generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=12, batch_size=bs, progress=False,
                         stop=stops)
        monkeypatch.setattr(generation, "BUFFER_KV", True)
        assert out == plain and (bs == 16 or st["joins"] > 0)
    assert seen and set(seen) == {12}
    # no room at all: every step grows the buffers (amortized), and the outputs are still the same
    monkeypatch.setattr(generation, "_buffer_cache", lambda cache, room: real_buffer(cache, 0))
    assert generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=12, batch_size=3, progress=False) == ref


def test_sliding_window_cache_falls_back_to_whole_batches(tiny):
    """A model whose KV cache has sliding-window layers cannot have rows joined mid-flight; the output is still
    exactly transformers' greedy generate."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tiny.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=6,
                        max_position_embeddings=128, pad_token_id=tiny.tokenizer.pad_token_id,
                        eos_token_id=tiny.tokenizer.eos_token_id)
    model = MistralForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tiny.tokenizer.eos_token_id
    ref, _ = _hf_greedy(model, tiny.tokenizer, MORE, 10)
    st: dict = {}
    assert generate(model, tiny.tokenizer, MORE, max_new_tokens=10, batch_size=3, progress=False, stats=st) == ref
    stops = [r[4:7] for r in ref if len(r) > 8][:3]  # rows finish at different steps
    cut = generate(model, tiny.tokenizer, MORE, max_new_tokens=10, batch_size=3, progress=False, stop=stops,
                   stats=st)
    for r, c in zip(ref, cut):
        assert c == r[:min([r.find(s) for s in stops if s in r], default=len(r))].strip()
    assert st["joins"] == 0
    # every prompt token is run exactly once: no prefill is made and then thrown away
    assert st["prefill_tokens"] == sum(len(tiny.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in MORE)


def test_a_shared_prompt_prefix_runs_once_and_changes_nothing(tiny):
    """Few-shot exemplars / a system message shared by every prompt are prefilled once and copied per row; the
    outputs must still equal transformers' unbatched greedy generate, with fewer prompt tokens run."""
    prefix = "Answer briefly. Example: 2 + 2 = 4. Example: 3 + 5 = 8. Now the question.\n"
    prompts = [prefix + p for p in MORE]
    ref, n_tokens = _hf_greedy(tiny.model, tiny.tokenizer, prompts, 10)
    st: dict = {}
    out = generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=10, batch_size=3, progress=False, stats=st)
    assert out == ref and st["generated_tokens"] == n_tokens
    assert st["shared_prefix"] >= 8
    plain: dict = {}
    assert generate(tiny.model, tiny.tokenizer, prompts, max_new_tokens=10, batch_size=3, progress=False,
                    stats=plain, share_prefix=False) == ref
    assert plain["shared_prefix"] == 0
    assert st["prefill_tokens"] == plain["prefill_tokens"] - (len(prompts) - 1) * st["shared_prefix"]


def test_generation_tokenizes_prompts_as_training_did(tiny, tiny_llama_path, monkeypatch):
    """With a tokenizer that adds a BOS (Llama-style), generation (eval, held-out selection, generate) feeds the
    model the prompt ids training used: one BOS, also when a chat template already wrote it into the text."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    from lora_spec import generation
    from lora_spec.batching import encode_examples, encode_prompts
    from lora_spec.records import Example

    tok = AutoTokenizer.from_pretrained(tiny_llama_path)
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                       special_tokens=[(tok.bos_token, tok.bos_token_id)])
    plain, chat = "Question: 2 + 3\nAnswer:", f"{tok.bos_token}Question: 2 + 3\nAnswer:"
    ids = encode_prompts(tok, [plain, chat])
    assert ids[0][0] == tok.bos_token_id and ids[0][1] != tok.bos_token_id
    assert ids[1] == ids[0]  # the template's BOS, not a second one
    assert tok([chat], add_special_tokens=True)["input_ids"][0][:2] == [tok.bos_token_id] * 2  # what it would be
    enc, _ = encode_examples([Example("zero_shot_cot", p, " 5", str(i)) for i, p in enumerate((plain, chat))],
                             tok, "causal", 512)
    seen = {}
    real = generation._decode_causal

    def spy(model, tokenizer, token_ids, order, **kw):
        seen["ids"] = [list(x) for x in token_ids]
        return real(model, tokenizer, token_ids, order, **kw)

    monkeypatch.setattr(generation, "_decode_causal", spy)
    generation.generate(tiny.model, tok, [plain, chat], max_new_tokens=2, progress=False)
    assert seen["ids"] == ids == [list(e.input_ids[:len(p)]) for e, p in zip(enc, ids)]


# --------------------------------------------------------------------------------------------- the eval journal

def _cut_after(monkeypatch, k: int):
    """Make the k+1-th journalled prediction raise, as a crash or Ctrl-C in the middle of an eval would."""
    from lora_spec.eval_journal import EvalJournal

    real = EvalJournal.add
    seen = {"n": 0}

    def add(self, task, row):
        if seen["n"] >= k:
            raise KeyboardInterrupt
        seen["n"] += 1
        real(self, task, row)

    monkeypatch.setattr(EvalJournal, "add", add)


def _eval_cfg(out, **kw):
    from lora_spec.evaluate import EvalConfig

    base = dict(model="tiny-llama", suite=["arith", "bbh"], task=["arith", "bbh/web_of_lies"], limit=6,
                mode="zs_cot", max_new_tokens=8, batch_size=2, progress=False, out=str(out))
    return EvalConfig(**{**base, **kw})


def test_a_cut_eval_keeps_its_predictions_and_a_rerun_continues(tmp_path, monkeypatch, data_dir):
    import lora_spec.eval_engine as engine
    import lora_spec.evaluate as ev
    from lora_spec.eval_journal import JOURNAL_DIR
    from lora_spec.outputs import output_kind

    whole = ev.eval_result(_eval_cfg(tmp_path / "whole")).doc
    assert not (tmp_path / "whole" / JOURNAL_DIR).exists()  # complete: the journal is gone
    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        _cut_after(m, 4)
        with pytest.raises(LoraspError, match=r"^interrupted: 4 predictions kept in .*\.eval-journal; rerun the "
                                              r"same command to continue$"):
            ev.eval_result(_eval_cfg(out))
    assert output_kind(out) == "eval_partial" and not (out / "results.json").exists()
    journal = (out / JOURNAL_DIR / "arith.jsonl").read_text().splitlines()
    assert len(journal) == 1 + 4 and json.loads(journal[0])["max_new_tokens"] == 8
    # a kill in the middle of a write leaves a torn last line: that prediction is redone, the others kept
    with (out / JOURNAL_DIR / "arith.jsonl").open("a") as fh:
        fh.write('{"id": "torn", "outp')
    r = _run("--model", "tiny-llama", "--suite", "arith", "--suite", "bbh", "--task", "arith", "--task",
             "bbh/web_of_lies", "--limit", "6", "--mode", "zs_cot", "--max-new-tokens", "8", "--out", str(out),
             "--dry-run")
    assert r.returncode == 0 and "continues the interrupted eval" in r.stdout and "4 predictions" in r.stdout, r
    assert "at most 64 new tokens" in r.stdout, r.stdout  # (6 - 4) arith + 6 web_of_lies problems, 8 tokens each
    calls = []
    real_generate = engine.generate
    monkeypatch.setattr(engine, "generate", lambda m, t, prompts, **kw: calls.append(len(prompts)) or
                        real_generate(m, t, prompts, **kw))
    doc = ev.eval_result(_eval_cfg(out)).doc
    assert calls == [2, 6]  # only the arith problems the cut run had not finished, then all of web_of_lies
    assert doc["tasks"]["arith"]["resumed"] == 4 and "resumed" not in doc["tasks"]["bbh/web_of_lies"]
    for name in ("arith", "bbh/web_of_lies"):
        a = [json.loads(x) for x in (out / doc["tasks"][name]["predictions_file"]).read_text().splitlines()]
        b = [json.loads(x) for x in (tmp_path / "whole" / whole["tasks"][name]["predictions_file"])
             .read_text().splitlines()]
        assert a == b and doc["tasks"][name]["correct"] == whole["tasks"][name]["correct"]
    assert output_kind(out) == "eval" and not (out / JOURNAL_DIR).exists()


def test_a_torn_line_is_cut_off_so_a_journal_survives_any_number_of_cuts(tmp_path):
    from lora_spec.eval_journal import EvalJournal

    j = EvalJournal(tmp_path, {"model": "m"})
    j.open("t", "zs_cot", 8)
    j.add("t", {"id": "1", "prompt_hash": "a", "output": "x"})
    j.close()
    with j.path("t").open("ab") as fh:  # killed in the middle of writing the second prediction
        fh.write(b'{"id": "2", "prompt_ha')
    assert list(EvalJournal(tmp_path, {"model": "m"}).kept("t", "zs_cot", 8)) == ["1 a"]
    for i in (2, 3):  # rerun, cut again (cleanly), rerun: every complete line stays readable
        j = EvalJournal(tmp_path, {"model": "m"})
        j.open("t", "zs_cot", 8)
        j.add("t", {"id": str(i), "prompt_hash": "a", "output": "x"})
        j.close()
    assert list(EvalJournal(tmp_path, {"model": "m"}).kept("t", "zs_cot", 8)) == ["1 a", "2 a", "3 a"]
    assert b"prompt_ha\n" not in j.path("t").read_bytes()


def test_a_cut_eval_with_other_settings_is_refused_in_one_line(tmp_path, monkeypatch, data_dir):
    import lora_spec.evaluate as ev
    from lora_spec.eval_journal import JOURNAL_DIR

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        _cut_after(m, 3)
        with pytest.raises(LoraspError, match="interrupted: 3 predictions kept"):
            ev.eval_result(_eval_cfg(out))
    args = ["--model", "tiny-llama", "--suite", "arith", "--task", "arith", "--limit", "6", "--mode", "zs_cot",
            "--out", str(out)]
    r = _run(*args, "--max-new-tokens", "9")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: {out}: holds an interrupted eval of arith with max_new_tokens 8, not 9; rerun it with its settings "
        f"to continue it, pass --overwrite to discard it, or choose another --out"), r.stderr
    r = _run(*args, "--max-new-tokens", "8", "--quant", "nf4")  # another model: checked once it is loaded
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"error: {out}: holds an interrupted eval of arith with quant 'none', not 'nf4'; rerun it with its settings "
        f"to continue it, pass --overwrite to discard it, or choose another --out"), r.stderr
    assert len((out / JOURNAL_DIR / "arith.jsonl").read_text().splitlines()) == 4  # untouched
    r = _run(*args, "--max-new-tokens", "9", "--overwrite")  # starts over
    assert r.returncode == 0 and "kept from an interrupted run" not in r.stderr, r.stderr
    assert json.loads((out / "results.json").read_text())["tasks"]["arith"]["n"] == 6
    assert not (out / JOURNAL_DIR).exists()
    bad = tmp_path / "bad"
    (bad / JOURNAL_DIR).mkdir(parents=True)
    (bad / JOURNAL_DIR / "arith.jsonl").write_text('[]\nnot json\n{"id": "1"}\n')
    r = _run(*args, "--max-new-tokens", "8", "--out", str(bad))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "arith.jsonl:1:" in r.stderr or "arith.jsonl:2:" in r.stderr, r.stderr


def test_sigterm_stops_an_eval_keeping_its_predictions(tmp_path):
    """``kill`` (SIGTERM, how a nohup job or a scheduler stops a process) ends an eval with exit code 130, one line,
    its finished predictions in the journal and its lock released (the rerun takes no stale lock over)."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from lora_spec.eval_journal import JOURNAL_DIR

    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-llama", "--suite", "arith", "--limit", "300", "--mode", "zs_cot",
            "--max-new-tokens", "48", "--batch-size", "1", "--no-progress", "--out", str(out)]
    exe = Path(sys.executable).with_name("lorasp")
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = out / JOURNAL_DIR / "arith.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:  # the header and two predictions
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the eval ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    n = len(journal.read_text().splitlines()) - 1
    assert n >= 2 and last == (f"error: interrupted: {n} predictions kept in {out / JOURNAL_DIR}; rerun the same "
                               f"command to continue"), err
    assert "Traceback" not in err
    r = _run(*args[1:], "--dry-run")
    assert r.returncode == 0 and f"{n} predictions of 1 task(s) kept" in r.stdout, r.stdout
    assert (out / ".lorasp.lock").read_text() == ""  # released (an owner's pid is left only by a dead process)


def test_a_cut_overwrite_is_continued_without_overwrite_and_never_discarded(tmp_path, monkeypatch, data_dir):
    """`eval --overwrite` over complete results, cut: rerunning the same command (--overwrite) would discard the
    kept predictions, so the message names the command that continues (without --overwrite), which the output
    policy lets run although the old results are still there."""
    import lora_spec.eval_engine as engine
    import lora_spec.evaluate as ev
    from lora_spec.eval_journal import JOURNAL_DIR
    from lora_spec.outputs import output_kind
    from lora_spec.runs import find_runs

    out = tmp_path / "ev"
    first = ev.eval_result(_eval_cfg(out)).doc
    with monkeypatch.context() as m:
        _cut_after(m, 5)
        with pytest.raises(LoraspError, match=r"^interrupted: 5 predictions kept in .*; rerun the command without "
                                              r"--overwrite to continue \(with it, the eval starts over\)$"):
            ev.eval_result(_eval_cfg(out, overwrite=True))
    assert output_kind(out) == "eval_partial" and json.loads((out / "results.json").read_text()) == first
    (row,) = find_runs(tmp_path)
    assert row["status"] == "interrupted" and "5 predictions kept" in row["headline"], row
    calls = []
    real_generate = engine.generate
    monkeypatch.setattr(engine, "generate", lambda m, t, prompts, **kw: calls.append(len(prompts)) or
                        real_generate(m, t, prompts, **kw))
    doc = ev.eval_result(_eval_cfg(out)).doc  # no --overwrite: continued, not refused
    assert calls == [1, 6] and doc["tasks"]["arith"]["resumed"] == 5
    assert output_kind(out) == "eval" and not (out / JOURNAL_DIR).exists()
    assert doc["tasks"]["arith"]["correct"] == first["tasks"]["arith"]["correct"]
    # an --overwrite with fewer tasks: predictions/ holds what results.json lists, no file of the earlier run
    doc = ev.eval_result(_eval_cfg(out, overwrite=True, suite=["arith"], task=["arith"])).doc
    assert list(doc["tasks"]) == ["arith"] and [p.name for p in (out / "predictions").iterdir()] == ["arith.jsonl"]


def test_a_learned_position_table_bounds_generation_and_training(tmp_path, tiny_llama_path, capsys):
    """GPT-2/OPT/BART-style models fail with an index error past their learned positions: lorasp sizes the table,
    stops each row's generation where it ends, refuses prompts that do not fit and training rows that could not."""
    import torch
    from transformers import (AutoTokenizer, BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel,
                              OPTConfig, OPTForCausalLM)

    from lora_spec.errors import ModelError
    from lora_spec.student import learned_positions, load_student
    from tests.helpers import main_cli

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_path))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=200, n_embd=32, n_layer=1, n_head=2,
                                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    opt = OPTForCausalLM(OPTConfig(vocab_size=64, max_position_embeddings=48, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16))
    bart = BartForConditionalGeneration(BartConfig(vocab_size=64, max_position_embeddings=40, d_model=16,
                                                   encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                                   decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16))
    assert (learned_positions(gpt2), learned_positions(opt), learned_positions(bart)) == (200, 48, 40)
    assert learned_positions(load_student("tiny-llama").model) is None  # rotary: no table
    prompts = ["Question: Tom has 3 apples and buys 4 more. How many?\n", "Question: 2 + 2?\n"]
    lens = [len(x) for x in tok(prompts)["input_ids"]]
    n_tokens, budgets = {}, {}
    out = generate(gpt2, tok, prompts, max_new_tokens=500, progress=False,
                   on_output=lambda i, text, n, budget: (n_tokens.__setitem__(i, n), budgets.__setitem__(i, budget)))
    assert len(out) == 2 and all(n_tokens[i] <= 200 - lens[i] for i in range(2))  # ran to the table's end, no error
    assert max(n_tokens[i] + lens[i] for i in range(2)) == 200  # random weights rarely say EOS: the table stopped it
    assert budgets == {i: 200 - lens[i] for i in range(2)}  # each row's own budget is reported with its output
    from lora_spec.eval_engine import prediction_row
    from lora_spec.records import EvalTask, Problem

    task = EvalTask(name="arith", dataset="arith")
    full = next(i for i in range(2) if n_tokens[i] == budgets[i])
    row = prediction_row(task, Problem(id="p", question="q", answer="7"), out[full], n_tokens[full], budgets[full])
    assert row["at_budget"] and row["budget"] == 200 - lens[full] < 500  # a row the table ended is flagged
    with pytest.raises(ModelError, match=r"^1 of 2 prompts do not fit the model's 200 learned positions, its whole "
                                         r"context \(the longest: \d+ tokens, prompt 2\)") as exc:
        generate(gpt2, tok, [prompts[1], "Question: " + "one two three " * 100], max_new_tokens=5, progress=False)
    assert "\n" not in str(exc.value)
    from lora_spec.student import preset_path

    t5tok = AutoTokenizer.from_pretrained(str(preset_path("tiny-t5")))
    bart = BartForConditionalGeneration(BartConfig(
        vocab_size=len(t5tok), max_position_embeddings=40, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        pad_token_id=t5tok.pad_token_id, eos_token_id=t5tok.eos_token_id, bos_token_id=t5tok.pad_token_id,
        decoder_start_token_id=t5tok.pad_token_id, forced_eos_token_id=None))
    n_tokens.clear()
    generate(bart, t5tok, ["two plus two"], kind="seq2seq", max_new_tokens=500, progress=False,
             on_output=lambda i, text, n, budget: n_tokens.__setitem__(i, n))
    assert 0 < n_tokens[0] <= 39  # the decoder's table (40, its start token included) ends the budget
    with pytest.raises(ModelError, match="1 of 1 prompts do not fit the model's 40 learned positions"):
        generate(bart, t5tok, ["one two three " * 40], kind="seq2seq", max_new_tokens=5, progress=False)
    gpt2.save_pretrained(tmp_path / "g2")
    tok.save_pretrained(tmp_path / "g2")
    code, _, err = main_cli(capsys, "fit", "--student", str(tmp_path / "g2"), "--dataset", "arith", "--teacher", "gold",
                            "--first", "16", "--max-steps", "1", "--out", str(tmp_path / "fit"))
    last = err.strip().splitlines()[-1]  # after the (free, kept) gold teach run's status lines
    assert code == 2 and last.startswith(f"error: --max-length 512: the student {tmp_path / 'g2'} has 200 learned "
                                         "positions") and "Traceback" not in err, err
    code, _, err = main_cli(capsys, "fit", "--student", str(tmp_path / "g2"), "--dataset", "arith", "--teacher", "gold",
                            "--first", "16", "--max-steps", "1", "--max-length", "200", "--eval-every", "0",
                            "--select-by", "last", "--before-after", "0", "--out", str(tmp_path / "fit"))
    assert code == 0, err  # rows fitted to the table train


def test_the_calculator_is_recorded_and_a_cut_eval_keeps_its_setting(tmp_path, monkeypatch, data_dir):
    """`--calculator` reaches the decoder, is written into results.json and report.md, and a cut eval is continued
    only with the same setting (its predictions were made with, or without, exact arithmetic)."""
    import lora_spec.eval_engine as engine
    import lora_spec.evaluate as ev
    import lora_spec.generation as gen

    seen = []
    real = gen.generate

    def spy(*a, **kw):
        seen.append(kw.get("calculator"))
        return real(*a, **kw)

    monkeypatch.setattr(engine, "generate", spy)
    out = tmp_path / "calc"
    doc = ev.eval_result(_eval_cfg(out, calculator=True)).doc
    assert seen == [True, True]  # both tasks are CoT here
    assert doc["prompting"]["calculator"] is True
    assert all(t["calculator"] is True and t["calculator_calls"] >= 0 for t in doc["tasks"].values())
    assert "- calculator: on" in (out / "report.md").read_text()
    seen.clear()
    ev.eval_result(_eval_cfg(tmp_path / "answer", calculator=True, mode="zs_answer"))
    assert seen == [False, False]  # answer-only prompts write no equation
    monkeypatch.setattr(engine, "generate", real)

    cut = tmp_path / "cut"
    with monkeypatch.context() as m:
        _cut_after(m, 2)
        with pytest.raises(LoraspError, match="interrupted: 2 predictions kept"):
            ev.eval_result(_eval_cfg(cut))
    with pytest.raises(LoraspError, match="with calculator False, not True"):
        ev.eval_result(_eval_cfg(cut, calculator=True))
    assert "calculator" not in ev.eval_result(_eval_cfg(cut)).doc["tasks"]["arith"]
