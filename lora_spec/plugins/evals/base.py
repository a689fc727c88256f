"""Shared parts of the built-in eval suites."""

from __future__ import annotations

from ...errors import ConfigError
from ...prompts import check_mode


class Suite:
    """An eval suite: ``name`` and ``tasks() -> list[EvalTask]``."""

    name = "suite"
    description = ""

    def __init__(self, mode: str = "icl_cot", limit: int | None = None, max_new_tokens: int | None = None):
        self.mode = check_mode(mode)
        if limit is not None and int(limit) < 1:
            raise ConfigError(f"{self.name}: limit must be >= 1, got {limit}")
        self.limit = int(limit) if limit is not None else None
        if max_new_tokens is not None and int(max_new_tokens) < 1:
            raise ConfigError(f"{self.name}: max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = int(max_new_tokens) if max_new_tokens else None

    def budget(self, cot: int) -> int:
        """Tokens to generate: the explicit value, else ``cot`` for CoT modes and 32 for answer-only modes."""
        if self.max_new_tokens:
            return self.max_new_tokens
        return cot if self.mode.endswith("_cot") else 32
