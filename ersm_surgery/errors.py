"""Errors a user can cause. Each carries the problem and the fix; the CLI prints them as one line."""
from __future__ import annotations

__all__ = [
    "ErsmError",
    "UnknownModelError",
    "PlacementError",
    "NotSpatialError",
    "RecipeError",
    "WeightsError",
    "OutputExistsError",
    "DataError",
    "ArtifactError",
    "ExportValidationError",
    "PluginError",
    "SparseError",
]


class ErsmError(Exception):
    """Base class: ``str(err)`` is ``"<problem>; <fix>"`` on one line.

    Args:
        problem: what is wrong, naming the argument and the bad value.
        fix: what the user should do instead.
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class UnknownModelError(ErsmError):
    """The model name is not one timm knows."""


class PlacementError(ErsmError):
    """A stage index or node name cannot take a mask."""


class NotSpatialError(PlacementError):
    """The chosen feature map is not a (B, C, H, W) tensor."""


class RecipeError(ErsmError):
    """A recipe, or a --set override, is invalid."""


class WeightsError(ErsmError):
    """A weights file is missing, corrupt, unsafe or does not fit the model."""


class OutputExistsError(ErsmError):
    """The output location exists and holds files."""


class DataError(ErsmError):
    """The data directory or data set cannot be used."""


class ArtifactError(ErsmError):
    """A saved model folder or file is missing pieces, corrupt or edited."""


class ExportValidationError(ArtifactError):
    """An exported file does not compute what the model computes (outside the validation's tolerance).

    Attributes:
        report: the validation report (what ``validation.json`` holds).
        kept: the files that were written all the same (``export(..., keep_on_failure=True)``), else empty.
    """

    def __init__(self, problem: str, fix: str | None = None, report: dict | None = None,
                 kept: list[str] | None = None) -> None:
        super().__init__(problem, fix)
        self.report = report or {}
        self.kept = kept or []


class PluginError(ErsmError):
    """A component comes from a plugin that is not installed, failed to load, or is turned off."""


class SparseError(ErsmError):
    """A model cannot be run on its kept tokens (no masks, or masks that do not gate a stage)."""
