"""Errors a fine-tuning run can end with; each is one line: the problem and the fix."""
from __future__ import annotations

from ..errors import ErsmError

__all__ = ["TrainingError", "DivergedError"]


class TrainingError(ErsmError):
    """A setting or a combination of inputs that training cannot run with."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
