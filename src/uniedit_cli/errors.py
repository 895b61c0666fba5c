"""Errors a user can act on.

Commands raise these for bad input or a missing resource; the CLI prints the message on one
line and exits with the code, never with a traceback. Exit 2 is a usage error (wrong input,
unknown name, missing capability), exit 1 a failure while doing the work.
"""

from __future__ import annotations


class UniEditError(Exception):
    """An error whose message tells the user what was wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class UsageError(UniEditError):
    """Bad input from the user: exit code 2."""

    exit_code = 2


class InputError(UsageError):
    """A bad input file (missing, not an image, truncated, too large)."""


class ModelNotFoundError(UsageError):
    """An unknown model name, or a model whose weights are not present offline."""


class CapabilityError(UsageError):
    """The model cannot do what was asked (asking an editor a question)."""
