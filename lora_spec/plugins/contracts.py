"""What a lorasp plugin must provide: the contracts of the three entry-point groups, as ``typing.Protocol``s.

A plugin is an entry point in ``lorasp.datasets``, ``lorasp.teachers`` or ``lorasp.evals`` that resolves to a
class or factory (or to a ready object). lorasp creates it with :func:`lora_spec.registry.create`, which passes

- the user's parameters (``--dataset-opt k=v``, ``--teacher-opt k=v``, a dataset's ``params`` in a YAML config):
  a parameter the factory's signature does not take is an error naming the accepted ones;
- the settings lorasp offers (``data_dir`` to datasets; ``model``, ``base_url``, ``temperature``, ``stop``, ...
  to teachers; ``mode``, ``limit``, ``max_new_tokens`` to eval suites) only when the signature takes them (or
  ``**kwargs``), so a plugin declares just the ones it uses,

and then checks the created object against the group's Protocol below (its methods, not its base class: any
class with these methods is a plugin). The first line of the class docstring, or a ``description`` attribute,
is what ``lorasp plugins`` shows. ``examples/lorasp-example-plugin/`` is a complete third-party package.
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, runtime_checkable

from ..records import EvalTask, Problem, Sample, TeacherRequest
from ..teacher_forcing import ScoreRequest, ScoreResult


@runtime_checkable
class Dataset(Protocol):
    """``lorasp.datasets``: problems with gold answers (and, when the set has them, reference rationales)."""

    name: str

    def splits(self) -> list[str]:
        """The split names this dataset has (e.g. ``["train", "test"]``)."""
        ...

    def load(self, split: str = "test", limit: int | None = None) -> Iterable[Problem]:
        """The problems of ``split`` in a fixed order (the first ``limit`` of them); an unknown split is a
        :class:`lora_spec.errors.DataError` naming the splits there are."""
        ...


@runtime_checkable
class Teacher(Protocol):
    """``lorasp.teachers``: chain-of-thought samples for prompts. Optional extras lorasp uses when present:
    ``describe() -> dict`` (recorded in the teach run), ``close()``, ``max_samples``, ``stream`` (see
    :class:`StreamingTeacher`) and ``score`` (see :class:`ScoringTeacher`)."""

    def generate(self, requests: list[TeacherRequest]) -> list[list[Sample]]:
        """One list of samples (``request.n`` of them) per request, in the order of ``requests``."""
        ...

    def fingerprint(self) -> str:
        """Identifies the teacher and its sampling settings: a teach run resumes only with the same one."""
        ...


@runtime_checkable
class StreamingTeacher(Protocol):
    """A teacher that returns each request's samples as they arrive (instead of, or besides, ``generate``)."""

    def stream(self, requests: list[TeacherRequest], stop: Any = None) -> Iterable[Any]:
        """One result per request as it finishes, in any order: an object with ``request_id`` and ``samples``
        (:class:`lora_spec.plugins.teachers.openai.TaskResult`); no new request starts once the
        ``threading.Event`` ``stop`` is set."""
        ...

    def fingerprint(self) -> str:
        ...


@runtime_checkable
class ScoringTeacher(Protocol):
    """A teacher that can also read text it did not write (``lorasp score``): its top-k log-probabilities at every
    token of a sample's text after the sample's prompt. Optional: a teacher without it cannot be a scorer."""

    def score(self, requests: list[ScoreRequest], top_k: int, stop: Any = None) -> Iterable[ScoreResult]:
        """One :class:`lora_spec.teacher_forcing.ScoreResult` per request (its ``key``), in any order, each with
        one piece and one top-k dict per token of the request's text (the pieces spell the text; see
        :func:`lora_spec.teacher_forcing.text_tokens`), or ``error``; no new request starts once the
        ``threading.Event`` ``stop`` is set. A scorer that cannot score at all raises ``ModelError``."""
        ...

    def score_fingerprint(self, top_k: int) -> str:
        """Identifies the scores (the model and whatever changes its numbers, and k): a rerun resumes only with
        the same one."""
        ...


@runtime_checkable
class EvalSuite(Protocol):
    """``lorasp.evals``: a named set of tasks, each a dataset split with a prompt mode and a scorer."""

    name: str

    def tasks(self) -> list[EvalTask]:
        ...


CONTRACTS: dict[str, tuple[type, ...]] = {"datasets": (Dataset,), "teachers": (Teacher, StreamingTeacher),
                                          "evals": (EvalSuite,)}
# what a plugin that breaks its contract is told (kept word for word from the checks these replaced)
MISSING: dict[str, str] = {"datasets": "does not implement splits() and load(split, limit=None)",
                           "teachers": "does not implement generate(requests) and fingerprint()",
                           "evals": "does not implement tasks()"}


def satisfies(group: str, obj: object) -> bool:
    """True when ``obj`` has the methods of ``group``'s contract (methods only: a plugin that sets ``name`` in
    ``__init__`` or not at all still passes)."""
    return any(_has_methods(obj, proto) for proto in CONTRACTS[group])


def _has_methods(obj: object, proto: type) -> bool:
    methods = [k for k, v in vars(proto).items() if callable(v) and not k.startswith("_")]
    return all(callable(getattr(obj, m, None)) for m in methods)
