"""Make a stage module callable, so that ``lora_spec.fit(...)`` works although ``lora_spec/fit.py`` exists.

Python binds ``lora_spec.fit`` to the *module* as soon as ``lora_spec.fit`` is imported anywhere, which would hide
a function of the same name exported by the package. Giving the module a ``__call__`` keeps both meanings: it is
still a module (``import lora_spec.fit as m``, ``m.FitConfig``, mock paths work) and calling it runs the stage.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function_name: str) -> None:
    module = sys.modules[module_name]

    class StageModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, function_name)(*args, **kwargs)

        def __repr__(self) -> str:
            return f"<lorasp stage {module_name} (callable: {function_name})>"

    module.__class__ = StageModule
