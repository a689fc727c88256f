"""Checkpoint selection: held-out sets, the periodic evaluator and the rules that pick the exported checkpoint.

Specialization trades generic ability for the target skill, and the best in-distribution checkpoint is often not
the best out-of-distribution one (Fu et al., 2023). So ``fit`` scores the model on three held-out sets at
step 0 (the base model, "before"), every ``eval_every`` steps and at the end:

- ``in_dist``: the training distribution's dev split (``gsm8k:dev`` or ``arith:dev``; ``auto`` follows the
  training dataset);
- ``ood``: seeded slices of MultiArith, SVAMP and ASDiv;
- ``generic``: a seeded slice across BIG-Bench Hard tasks.

Each set has a size limit (split evenly over its datasets), a prompt mode and a seed. The scores of every
checkpoint are kept in ``lorasp.json`` (``checkpoints[*].scores``), and ``select_checkpoint`` picks the exported
checkpoint by a rule: ``in_dist``, ``ood``, ``generic`` (highest accuracy), ``loss`` (lowest training loss),
``last``, or a weighted combination such as ``ood=0.7,in_dist=0.3``.

**Ties go to the earliest step.** A checkpoint that reaches the same held-out score after fewer updates has
drifted less from the base model, which is what keeps generic ability (the paper's trade-off), and the rule is
deterministic. Step 0 (the untouched base model) is the "before" reference, never a candidate: an artifact is
always a trained checkpoint. The report says so when the base model beats the chosen checkpoint.

**Telling checkpoints apart.** Each checkpoint record also keeps its per-problem results (``correct``), so
checkpoints are compared paired, on the same problems (``lora_spec.stats``). ``prefer_earliest`` exports the
earliest checkpoint that is not significantly worse than the best (exact McNemar p >= 0.05). Real runs score 150 /
150 / 160 problems (a 95% half-width of at most 8 points); the quickstart keeps its 16 / 9 / 8.

The parts: ``config`` (held-out sets and the selection options), ``rules`` (which checkpoint a rule picks,
pruning) and ``heldout`` (the evaluator); ``fit`` wires them into a run (``lora_spec.fit``).
"""

from .config import (DEFAULT_BBH_TASKS, MODES, QUICKSTART_SETS, REAL_GENERIC, REAL_IN_DIST, REAL_OOD, DatasetSpec,
                     HeldOutSet, SelectionOptions, default_generic, default_in_dist, default_ood, parse_dataset_spec,
                     parse_set_string, quickstart_sets)
from .heldout import PREDICTIONS_FILE, HeldOutEvaluator, SetTasks, resolve_auto, write_predictions
from .rules import (ALPHA, CORRECT, EVAL_SECONDS, LOSS_KEYS, SETS, SIMPLE_RULES, Rule, as_rule, candidates,
                    checkpoint_value, correct_vector, earliest_within_noise, keep_set, parse_rule, prune_checkpoints,
                    rule_set, select_checkpoint)

__all__ = ["ALPHA", "CORRECT", "DEFAULT_BBH_TASKS", "EVAL_SECONDS", "LOSS_KEYS", "MODES", "PREDICTIONS_FILE", "QUICKSTART_SETS",
           "REAL_GENERIC", "REAL_IN_DIST", "REAL_OOD", "SETS", "SIMPLE_RULES", "DatasetSpec", "HeldOutEvaluator",
           "HeldOutSet", "Rule", "SelectionOptions", "SetTasks", "as_rule", "candidates", "checkpoint_value",
           "correct_vector", "default_generic", "default_in_dist", "default_ood", "earliest_within_noise", "keep_set",
           "parse_dataset_spec", "parse_rule", "parse_set_string", "prune_checkpoints", "quickstart_sets",
           "resolve_auto", "rule_set", "select_checkpoint", "write_predictions"]
