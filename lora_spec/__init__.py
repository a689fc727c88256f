"""lorasp: specialize small language models towards multi-step reasoning (Fu et al., ICML 2023).

The public API is imported lazily so that ``import lora_spec`` stays cheap::

    from lora_spec import teach, fit, evaluate, merge, load_adapter, AdapterSet

Throughout the package, an import sits inside a function only when it would load a third-party library (torch,
transformers, ...), so that ``lorasp --help`` stays fast; ``tests/test_import_graph.py`` holds every module to that.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    # name -> module that defines it; filled in as the stages land
    "load_student": "lora_spec.student",
    "Problem": "lora_spec.records",
    "Sample": "lora_spec.records",
    "Example": "lora_spec.records",
    "TeacherRequest": "lora_spec.records",
    "LoraspError": "lora_spec.errors",
    "Aligner": "lora_spec.align",
    "LossSpec": "lora_spec.losses",
    "TopKStore": "lora_spec.topk",
    "load_adapter": "lora_spec.adapters.artifact",
    "AdapterSet": "lora_spec.adapters.swap",
    "save_adapter": "lora_spec.adapters.artifact",
    "generate": "lora_spec.generation",
    "merge": "lora_spec.adapters.merge",
    "combine": "lora_spec.adapters.combine",
    "load_run": "lora_spec.teach",
    "TeachConfig": "lora_spec.teach",
    "FitConfig": "lora_spec.fit",
    "FitResult": "lora_spec.fit",
    "run_eval": "lora_spec.evaluate",
    "EvalConfig": "lora_spec.evaluate",
    "evaluate_tasks": "lora_spec.evaluate",
    "extract_answer": "lora_spec.answers",
    "answers_match": "lora_spec.answers",
    "build_prompt": "lora_spec.prompts",
    "select_checkpoint": "lora_spec.selection",
    "HeldOutEvaluator": "lora_spec.selection",
    "HeldOutSet": "lora_spec.selection",
    "write_report": "lora_spec.report",
}

# Stages whose function shares its module's name: the module itself is callable (see lora_spec/_stage.py).
_STAGES = {"teach": "lora_spec.teach", "fit": "lora_spec.fit", "evaluate": "lora_spec.evaluate"}

__all__ = sorted(set(_API) | set(_STAGES)) + ["__version__"]


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(_STAGES[name])
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'lora_spec' has no attribute {name!r}")
