"""User-facing errors: each one names the bad value and says what to do."""

from __future__ import annotations


class LeccrError(Exception):
    """A mistake the user can fix; the CLI prints it as one red line and exits with 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class RecipeError(LeccrError):
    """A recipe file or override is invalid."""


class CorpusError(LeccrError):
    """A corpus folder or its inputs are missing, malformed or inconsistent."""


class ModelError(LeccrError):
    """A model folder, id or checkpoint cannot be used."""


class RunError(LeccrError):
    """A run folder is missing, incomplete or belongs to another run."""


class EvaluationError(LeccrError):
    """A score matrix, its labels or a metrics request cannot be evaluated."""
