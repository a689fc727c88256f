"""Checkpoint selection rules, held-out set config and checkpoint pruning (no model needed)."""

from __future__ import annotations

import pytest

from lora_spec.errors import ConfigError, DataError
from lora_spec.selection import (
    HeldOutSet,
    SelectionOptions,
    keep_set,
    parse_dataset_spec,
    parse_rule,
    prune_checkpoints,
    select_checkpoint,
)


def ck(step, loss=None, path=None, **scores):
    return {"step": step, "loss": loss, "scores": dict(scores), "path": path}


CURVES = [
    ck(0, None, in_dist=0.10, ood=0.30, generic=0.40),
    ck(10, 1.20, in_dist=0.40, ood=0.45, generic=0.38),
    ck(20, 0.90, in_dist=0.60, ood=0.50, generic=0.30),  # best ood
    ck(30, 0.70, in_dist=0.75, ood=0.42, generic=0.25),  # best in_dist
    ck(40, 0.65, in_dist=0.70, ood=0.40, generic=0.20),  # lowest loss, last
]


@pytest.mark.parametrize("rule,step", [("in_dist", 30), ("ood", 20), ("generic", 10), ("loss", 40),
                                       ("last", 40), ("ood=0.7,in_dist=0.3", 20), ("in_dist=0.8,ood=0.2", 30),
                                       ("generic=1,ood=0", 10)])
def test_rules_pick_the_argmax(rule, step):
    assert select_checkpoint(CURVES, rule)["step"] == step


def test_weighted_value_is_the_weighted_sum():
    # 0.5*in_dist + 0.5*ood: step 20 -> 0.55, step 30 -> 0.585 (best), step 40 -> 0.55
    assert select_checkpoint(CURVES, "in_dist=0.5,ood=0.5")["step"] == 30


def test_step0_is_never_chosen_even_when_the_base_is_best():
    # generic is best at step 0 (0.40) but the base model is the "before" reference, not a candidate
    assert select_checkpoint(CURVES, "generic")["step"] == 10


def test_ties_go_to_the_earliest_step():
    cks = [ck(0, ood=0.1), ck(5, 2.0, ood=0.5), ck(10, 1.0, ood=0.5), ck(15, 1.0, ood=0.5)]
    assert select_checkpoint(cks, "ood")["step"] == 5
    assert select_checkpoint(cks, "loss")["step"] == 10


def test_unscorable_checkpoints_are_skipped_and_an_empty_choice_is_an_error():
    cks = [ck(0, ood=0.1), ck(5, 2.0), ck(10, 1.0, ood=0.2)]
    assert select_checkpoint(cks, "ood")["step"] == 10
    with pytest.raises(DataError, match=r"--select-by generic: no checkpoint has the score\(s\) generic "
                                        r"\(scores present: ood"):
        select_checkpoint(cks, "generic")
    with pytest.raises(DataError, match="no trained checkpoint"):
        select_checkpoint([ck(0, ood=0.1)], "ood")


def test_per_task_key_rule():
    cks = [ck(0), ck(5, 1.0, **{"ood/svamp": 0.2, "ood/asdiv": 0.9}),
           ck(10, 1.0, **{"ood/svamp": 0.6, "ood/asdiv": 0.1})]
    assert select_checkpoint(cks, "ood/svamp")["step"] == 10
    assert select_checkpoint(cks, "ood/asdiv")["step"] == 5


@pytest.mark.parametrize("bad,msg", [
    ("", "empty"), ("best", "unknown selection rule 'best'"), ("ood=x", "not a number"),
    ("ood=-1", ">= 0"), ("ood=0", "at least one weight"), ("loss=1,ood=1", "cannot be weighted"),
    ("ood=1,ood=2", "appears twice"), ("oops=1", "unknown score 'oops'"), ("ood,in_dist", "expected key=weight"),
])
def test_bad_rules(bad, msg):
    with pytest.raises(ValueError, match=msg):
        parse_rule(bad)
    with pytest.raises(ConfigError, match=msg):
        select_checkpoint(CURVES, bad)


def test_keep_set_always_keeps_chosen_and_last():
    cks = [dict(c, path=f"/x/{c['step']}") for c in CURVES]
    assert keep_set(cks, 1, "ood") == {20, 40}
    assert keep_set(cks, 2, "ood") == {20, 40}
    assert keep_set(cks, 3, "ood") == {20, 40, 10}  # then the next best ood (0.45 at step 10)
    assert keep_set(cks, 1, "last") == {40}
    assert keep_set(cks, 3, "last") == {40, 30, 20}
    assert keep_set(cks, None, "ood") == {10, 20, 30, 40}


def test_prune_deletes_directories_but_keeps_scores(tmp_path):
    cks = []
    for c in CURVES:
        d = None
        if c["step"] > 0:
            d = tmp_path / f"checkpoint-{c['step']}"
            d.mkdir()
            (d / "adapter_model.safetensors").write_bytes(b"x")
        cks.append(dict(c, path=str(d) if d else None))
    pruned = prune_checkpoints(cks, 2, "in_dist")
    assert sorted(pruned) == [10, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-30", "checkpoint-40"]
    assert [c["scores"]["ood"] for c in cks] == [c["scores"]["ood"] for c in CURVES]  # records stay
    assert [c.get("pruned", False) for c in cks] == [False, True, True, False, False]
    # online pruning is consistent: the final choice was never pruned
    assert select_checkpoint(cks, "in_dist")["path"] is not None


def test_online_pruning_never_loses_the_final_choice(tmp_path):
    """Prune after every checkpoint as training goes on; the checkpoint chosen at the end must still exist."""
    import random

    rng = random.Random(3)
    for trial in range(30):
        cks = [ck(0, ood=rng.random())]
        for step in range(1, 12):
            d = tmp_path / f"t{trial}-{step}"
            d.mkdir()
            cks.append(ck(step, rng.random(), path=str(d), ood=round(rng.random(), 1)))
            prune_checkpoints(cks, 2, "ood")
        best = select_checkpoint(cks, "ood")
        assert best["path"] is not None and (tmp_path / f"t{trial}-{best['step']}").exists()
        assert cks[-1]["path"] is not None
        assert sum(1 for c in cks if c["path"]) <= 2


def test_held_out_set_strings_and_mappings():
    s = HeldOutSet.model_validate("multiarith,svamp,asdiv;limit=12;mode=icl_cot;seed=3")
    assert s.datasets == ["multiarith", "svamp", "asdiv"] and s.limit == 12 and s.mode == "icl_cot" and s.seed == 3
    s = HeldOutSet.model_validate("bbh@task=navigate,bbh@task=web_of_lies;limit=4")
    assert s.datasets == ["bbh@task=navigate", "bbh@task=web_of_lies"]
    assert parse_dataset_spec("bbh@task=navigate").params == (("task", "navigate"),)
    assert parse_dataset_spec("gsm8k:dev").split == "dev"
    assert HeldOutSet.model_validate("none").enabled is False
    assert HeldOutSet.model_validate({"datasets": ["gsm8k:dev"], "limit": 5}).limit == 5
    # the string form round-trips
    s = HeldOutSet.model_validate("svamp;limit=7;mode=zs_answer;seed=1;max_new_tokens=32")
    assert HeldOutSet.model_validate(s.as_string()) == s


def test_a_held_out_set_can_generate_with_the_calculator(smollm2, data_dir, monkeypatch):
    """``calculator=1`` in a set string: that set's outputs are generated with lorasp's decode-time calculator (so a
    checkpoint is chosen for a deployment that has it); other sets are not."""
    import lora_spec.selection.heldout as H
    from lora_spec.answers import equation_errors
    from lora_spec.selection import HeldOutEvaluator

    s = HeldOutSet.model_validate("gsm8k:dev;limit=3;calculator=1")
    assert s.calculator and HeldOutSet.model_validate(s.as_string()) == s and s.as_string().endswith(";calculator=1")
    assert not HeldOutSet.model_validate("gsm8k:dev;limit=3").calculator
    seen, real = [], H.generate

    def spy(*a, **k):
        seen.append(k.get("calculator"))
        return real(*a, **k)

    monkeypatch.setattr(H, "generate", spy)
    opts = SelectionOptions(in_dist="gsm8k:dev;limit=3;max_new_tokens=96;calculator=1", generic="none",
                            ood="multiarith;limit=2;max_new_tokens=96")
    ev = HeldOutEvaluator(opts, train_dataset="gsm8k", data_dir=data_dir)
    ev(smollm2.model, smollm2.tokenizer, 0)
    assert sorted(seen) == [False, True]
    calc = [p["output"] for p in ev.history[-1]["predictions"] if p["set"] == "in_dist"]
    checked, wrong = map(sum, zip(*(equation_errors(o) for o in calc)))
    assert checked >= 1 and wrong == 0, calc


@pytest.mark.parametrize("bad,msg", [
    ("svamp;limit=0", "greater than or equal to 1"), ("svamp;mode=cot", "icl_cot"),
    ("svamp;size=3", "unknown held-out set key 'size'"), ("limit=3", "starts with its datasets"),
    ("gsm8k:dev:x", "expected name"), ("svamp;limit", "expected key=value"),
])
def test_bad_held_out_sets(bad, msg):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=msg):
        HeldOutSet.model_validate(bad)


def test_default_sets_can_tell_checkpoints_apart_and_the_quickstart_stays_small():
    from lora_spec import stats
    from lora_spec.fit import FitConfig, resolve_defaults

    o = SelectionOptions()
    assert o.select_by == "ood" and o.in_dist.datasets == ["auto"]
    assert sorted(d.split("@")[0] for d in o.ood.datasets) == ["asdiv", "multiarith", "svamp"]
    assert all(d.startswith("bbh@task=") for d in o.generic.datasets)
    # real runs: >= 100 problems per score, and a 95% half-width <= 8 points at any accuracy (worst case 50%)
    for s in (o.in_dist, o.ood):
        assert s.limit >= 100
        lo, hi = stats.wilson(s.limit // 2, s.limit)
        assert (hi - lo) / 2 <= 0.08
    per_task = o.generic.limit // len(o.generic.datasets)
    _m, lo, hi = stats.macro([per_task // 2] * len(o.generic.datasets), [per_task] * len(o.generic.datasets))
    assert o.generic.limit >= 100 and (hi - lo) / 2 <= 0.08
    # short answers get short budgets
    assert o.generic.max_new_tokens <= 16 and o.ood.max_new_tokens < o.in_dist.max_new_tokens
    # the quickstart keeps its small, fast sets unless the user gives one
    q = resolve_defaults(FitConfig())
    assert (q.in_dist.limit, q.ood.limit, q.generic.limit) == (16, 9, 8)
    assert q.in_dist.max_new_tokens == q.ood.max_new_tokens == 128
    assert not {"in_dist", "ood", "generic"} & q.model_fields_set  # still defaults: skipped when data is missing
    q2 = resolve_defaults(FitConfig(ood="svamp;limit=30"))
    assert q2.ood.limit == 30 and q2.in_dist.limit == 16
    real = resolve_defaults(FitConfig(dataset="gsm8k"))
    assert (real.in_dist.limit, real.ood.limit, real.generic.limit) == (o.in_dist.limit, o.ood.limit,
                                                                        o.generic.limit)


def test_when_fit_evaluates_and_which_rule_applies():
    from lora_spec.fit import FitConfig
    from lora_spec.fit import effective_rule
    from lora_spec.fit_config import resolve_eval_every

    assert resolve_eval_every(FitConfig(), quickstart=True, total=64) == 22  # the quickstart: step 0, 22, 44, end
    assert resolve_eval_every(FitConfig(), quickstart=False, total=80) == 0  # opt-in elsewhere
    assert resolve_eval_every(FitConfig(select_by="ood"), quickstart=False, total=10) == 4  # asking for ood turns it on
    assert resolve_eval_every(FitConfig(select_by="loss"), quickstart=False, total=10) == 0
    assert resolve_eval_every(FitConfig(eval_every=7), quickstart=True, total=80) == 7
    assert effective_rule(FitConfig(), None) == "last"
    assert effective_rule(FitConfig(select_by="loss", eval_every=0), None) == "loss"
    assert effective_rule(FitConfig(select_by="ood=0.7,in_dist=0.3"), object()) == "ood=0.7,in_dist=0.3"


def test_the_quickstart_selects_on_its_skill_unless_told_otherwise():
    from lora_spec.fit import FitConfig, resolve_defaults

    assert resolve_defaults(FitConfig()).select_by == "in_dist"  # no --data/--dataset: the arith quickstart
    assert resolve_defaults(FitConfig(select_by="ood")).select_by == "ood"
    assert resolve_defaults(FitConfig(dataset="arith")).select_by == "ood"  # any other run: the paper's OOD rule
    assert resolve_defaults(FitConfig(in_dist="none")).select_by == "ood"  # no in_dist set: the ordinary default
    assert "select_by" not in resolve_defaults(FitConfig(in_dist="none")).model_fields_set


def _bits(step, path=None, **vecs):
    """A checkpoint whose scores come from per-problem results (``correct``), as the evaluator records them."""
    c = ck(step, 1.0 / max(step, 1), path, **{k: v.count("1") / len(v) for k, v in vecs.items()})
    c["scores"].update({f"{k}/t": v.count("1") / len(v) for k, v in vecs.items()})
    c["correct"] = {f"{k}/t": v for k, v in vecs.items()}
    return c


def test_prefer_earliest_takes_the_earliest_checkpoint_not_significantly_worse():
    from lora_spec import stats

    n = 100
    cks = [_bits(0, ood="0" * n),
           _bits(10, "/x/10", ood="1" * 30 + "0" * 70),  # 30%: significantly worse than 50%
           _bits(20, "/x/20", ood="0" * 10 + "1" * 44 + "0" * 46),  # 44%: within noise of 50%
           _bits(30, "/x/30", ood="1" * 50 + "0" * 50),  # the best
           _bits(40, "/x/40", ood="1" * 46 + "0" * 54)]
    best = select_checkpoint(cks, "ood")
    assert best["step"] == 30
    vb = [ch == "1" for ch in cks[3]["correct"]["ood/t"]]
    assert stats.mcnemar(vb, [ch == "1" for ch in cks[1]["correct"]["ood/t"]]) < 0.05
    assert stats.mcnemar(vb, [ch == "1" for ch in cks[2]["correct"]["ood/t"]]) >= 0.05
    assert select_checkpoint(cks, "ood", prefer_earliest=True)["step"] == 20
    assert select_checkpoint(cks, "ood/t", prefer_earliest=True)["step"] == 20  # a per-task score works too
    # a pruned checkpoint is never chosen; without per-problem results the rule is the plain argmax
    cks[2]["pruned"], cks[2]["path"] = True, None
    assert select_checkpoint(cks, "ood", prefer_earliest=True)["step"] == 30
    plain = [{k: v for k, v in c.items() if k != "correct"} for c in cks]
    assert select_checkpoint(plain, "ood", prefer_earliest=True)["step"] == 30
    # pruning keeps the earliest-within-noise choice, the best and the last
    cks[2]["pruned"], cks[2]["path"] = False, "/x/20"
    assert keep_set(cks, 1, "ood", prefer_earliest=True) == {20, 30, 40}


def test_prefer_earliest_needs_one_score():
    from pydantic import ValidationError

    SelectionOptions(prefer_earliest=True, select_by="in_dist")
    with pytest.raises(ValidationError, match="--prefer-earliest compares checkpoints on one held-out score"):
        SelectionOptions(prefer_earliest=True, select_by="ood=0.5,in_dist=0.5")
    with pytest.raises(ValidationError, match="not on 'loss'"):
        SelectionOptions(prefer_earliest=True, select_by="loss")


def test_online_pruning_with_prefer_earliest_never_loses_the_final_choice(tmp_path):
    import random

    rng = random.Random(5)
    for trial in range(30):
        cks = [_bits(0, ood="".join(rng.choice("01") for _ in range(40)))]
        for step in range(1, 10):
            d = tmp_path / f"t{trial}-{step}"
            d.mkdir()
            p1 = rng.random()
            cks.append(_bits(step, str(d), ood="".join("1" if rng.random() < p1 else "0" for _ in range(40))))
            prune_checkpoints(cks, 1, "ood", prefer_earliest=True)
        chosen = select_checkpoint(cks, "ood", prefer_earliest=True)
        assert chosen["path"] is not None and (tmp_path / f"t{trial}-{chosen['step']}").exists()
        assert chosen["step"] <= select_checkpoint(cks, "ood")["step"]


def test_held_out_sets_and_eval_limit_draw_the_same_problems(data_dir):
    """Item 4 of issue 13: "N problems with seed S" is one sampler for held-out sets and lorasp eval --limit."""
    from lora_spec.eval_engine import task_problems
    from lora_spec.records import EvalTask
    from lora_spec.selection import HeldOutEvaluator

    opts = SelectionOptions(in_dist="none", ood="multiarith,svamp,asdiv;limit=30;seed=3",
                            generic="bbh@task=navigate,bbh@task=web_of_lies;limit=10;mode=zs_answer")
    ev = HeldOutEvaluator(opts, data_dir=data_dir)
    for name, params in (("multiarith", {}), ("svamp", {}), ("asdiv", {})):
        held = [p.id for p in ev.sets["ood"].problems[name]]
        evald = [p.id for p in task_problems(EvalTask(name=name, dataset=name, dataset_params=params, limit=10),
                                             data_dir, seed=3)]
        assert held == evald and len(held) == 10
        assert evald != [p.id for p in task_problems(EvalTask(name=name, dataset=name, limit=10), data_dir, seed=0)]
    for task in ("navigate", "web_of_lies"):
        held = [p.id for p in ev.sets["generic"].problems[task]]
        evald = [p.id for p in task_problems(EvalTask(name=f"bbh/{task}", dataset="bbh",
                                                      dataset_params={"task": task}, limit=5), data_dir)]
        assert held == evald and len(held) == 5


def test_fit_settings_reach_the_loop_by_name():
    """Issue 15: one config object from the command line to the loop. Every loop setting that FitConfig has reaches
    TrainArgs under the same name (no field-by-field copy that a new flag could miss)."""
    from dataclasses import fields

    from lora_spec.fit import FitConfig, resolve_defaults
    from lora_spec.trainer import TrainArgs

    cfg = resolve_defaults(FitConfig(epochs=2.5, max_steps=7, lr=3e-3, weight_decay=0.1, warmup=3, schedule="linear",
                                     batch_size=3, grad_accum=2, max_grad_norm=0.5, max_length=99, seed=11,
                                     save_every=4, group_by_length=False, progress=False, tracker="none",
                                     micro_batch_tokens=77))
    args = TrainArgs.of(cfg, eval_every=5, mixed_precision="no")
    shared = [f.name for f in fields(TrainArgs) if f.name in FitConfig.model_fields]
    assert len(shared) >= 16
    for name in shared:
        if name != "eval_every":
            assert getattr(args, name) == getattr(cfg, name), name
    assert args.eval_every == 5 and args.mixed_precision == "no"
    assert not {"keep_checkpoints", "select_by"} & {f.name for f in fields(TrainArgs)}  # selection is fit's


def test_one_home_for_the_step_arithmetic():
    """The trainer, the held-out schedule and --dry-run count steps and evaluations with the same functions."""
    from lora_spec.batching import steps_per_epoch, total_steps
    from lora_spec.trainer import due, eval_schedule

    assert steps_per_epoch(100, 8, 2, 1) == 6 and steps_per_epoch(7, 8) == 0
    assert total_steps(100, 8, 2, 1, epochs=1.5) == 9 and total_steps(100, 8, max_steps=4) == 4
    assert total_steps(7, 8) == 1  # fewer rows than a batch: the trainer refuses, the plan still shows one step
    assert eval_schedule(10, 4) == [0, 4, 8, 10] and eval_schedule(8, 4) == [0, 4, 8]
    assert [s for s in range(1, 11) if due(s, 3, 10)] == [3, 6, 9] and not due(5, 0, 10)


# --------------------------------------------------------------------------------------------- reference loss

def test_held_out_loss_rules_pick_the_lowest_loss():
    cks = [ck(0, None, in_dist_loss=1.9), ck(10, 1.2, in_dist_loss=1.40, ood_loss=2.0),
           ck(20, 0.9, in_dist_loss=1.31, ood_loss=2.2), ck(30, 0.7, in_dist_loss=1.31, ood_loss=1.8),
           ck(40, 0.6, in_dist_loss=1.35)]
    assert select_checkpoint(cks, "in_dist_loss")["step"] == 20  # ties: the earliest step
    assert select_checkpoint(cks, "ood_loss")["step"] == 30  # step 40 has no ood loss: skipped
    r = parse_rule("generic_loss")
    assert r.kind == "heldout_loss" and "lowest generic reference loss" in r.describe()
    with pytest.raises(DataError, match="no checkpoint has the score"):
        select_checkpoint(cks, "generic_loss")
    with pytest.raises(ValueError, match="cannot be weighted"):
        parse_rule("in_dist_loss=0.5,ood=0.5")
    # keep_set keeps the argmin
    assert 20 in keep_set([{**c, "path": f"p{c['step']}"} for c in cks], 2, "in_dist_loss")


def test_held_out_set_score_key_and_the_rules_that_need_it():
    from pydantic import ValidationError

    s = HeldOutSet.model_validate("gsm8k:dev;limit=50;score=loss")
    assert s.score == "loss" and s.scores_loss and not s.scores_accuracy
    assert HeldOutSet.model_validate(s.as_string()) == s and s.as_string().endswith(";score=loss")
    assert HeldOutSet.model_validate("svamp").as_string() == "svamp;limit=16;mode=zs_cot;seed=0"  # accuracy
    assert HeldOutSet.model_validate("svamp;score=both").scores_loss
    with pytest.raises(ValidationError, match="'accuracy', 'both' or 'loss'"):
        HeldOutSet.model_validate("svamp;score=nll")
    with pytest.raises(ValidationError, match="scores only the loss"):
        SelectionOptions(in_dist="gsm8k:dev;score=loss", select_by="in_dist")
    with pytest.raises(ValidationError, match="scores only accuracy"):
        SelectionOptions(ood="svamp", select_by="ood_loss")
    with pytest.raises(ValidationError, match="held-out set, which is off"):
        SelectionOptions(generic="none", select_by="generic_loss")
    with pytest.raises(ValidationError, match="--eval-every is 0"):
        SelectionOptions(eval_every=0, select_by="in_dist_loss")
    assert SelectionOptions(in_dist="gsm8k:dev;score=loss", select_by="in_dist_loss").select_by == "in_dist_loss"


def test_a_loss_only_set_turns_evaluation_on_and_the_default_rule_falls_back_to_it():
    from types import SimpleNamespace

    from lora_spec.fit import FitConfig, effective_rule
    from lora_spec.fit_config import resolve_eval_every

    assert resolve_eval_every(FitConfig(in_dist="auto;score=loss", select_by="in_dist_loss"), quickstart=False,
                              total=10) == 4
    ev = SimpleNamespace(sets={"in_dist": SimpleNamespace(config=HeldOutSet.model_validate("x;score=loss"))})
    assert effective_rule(FitConfig(), ev) == "in_dist_loss"  # the default rule (ood) has nothing to score
    ev.sets["ood"] = SimpleNamespace(config=HeldOutSet.model_validate("svamp"))
    assert effective_rule(FitConfig(), ev) == "ood"


def test_a_cot_loss_set_without_worked_solutions_is_refused_early(data_dir):
    from lora_spec.selection import HeldOutEvaluator

    with pytest.raises(ConfigError, match="--ood: score=loss in mode zs_cot needs reference solutions"):
        HeldOutEvaluator(SelectionOptions(in_dist="none", generic="none", ood="svamp,asdiv;limit=4;score=loss"),
                         data_dir=data_dir)
    ev = HeldOutEvaluator(SelectionOptions(in_dist="none", generic="none", ood="svamp;limit=4;score=both"),
                          data_dir=data_dir)
    assert any("covers the 0 of 4 problems" in w for w in ev.warnings)
    ev = HeldOutEvaluator(SelectionOptions(in_dist="none", generic="none",
                                           ood="svamp;limit=4;score=loss;mode=zs_answer"), data_dir=data_dir)
    assert not ev.warnings and ev.sets["ood"].config.score == "loss"
