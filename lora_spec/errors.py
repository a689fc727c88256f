"""Errors that the CLI turns into one-line messages with a non-zero exit code."""

from __future__ import annotations


class LoraspError(Exception):
    """A user-facing error: the message is one line that says what was wrong and where.

    ``exit_code`` is what the CLI exits with (2 for usage/config errors, 1 otherwise).
    """

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(LoraspError):
    """Bad configuration: unknown key, wrong type, out-of-range value."""

    exit_code = 2


class DataError(LoraspError):
    """A malformed or missing input file; the message names file:line and field."""


class PluginError(LoraspError):
    """Unknown, duplicated or broken plugin."""


class ModelError(LoraspError):
    """A student/teacher model that cannot be found or loaded."""


def one_line(text: object) -> str:
    """Collapse whitespace so that an error is printed on exactly one line."""
    return " ".join(str(text).split())
