"""What ``evaluate`` measures and how: the metric names, :class:`EvalSettings`, the progress protocol."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import ErsmError

__all__ = ["METRICS", "RANKINGS", "OCCLUDERS", "EvalError", "EvalSettings", "Progress", "SilentProgress"]

METRICS = ("accuracy", "sparsity", "flops", "occlusion", "deletion", "localization")
RANKINGS = ("energy", "magnitude", "random")
OCCLUDERS = ("patch_drop", "cutout", "hide_and_seek")


class EvalError(ErsmError):
    """The evaluation cannot run with these models, data or settings."""


@dataclass
class EvalSettings:
    """How to evaluate.

    Attributes:
        metrics: any of :data:`METRICS`.
        batch_size: images per forward pass.
        seed: seed of occlusions, random rankings and random masks (the image subset has its own).
        device: where the models run.
        deletion_fill: ``"zero"`` or ``"mean"`` (per-channel mean of the image's tokens).
        deletion_fractions: fractions of tokens removed.
        rerun_rows: most rows per rerun call of the deletion test (default: 8 x batch_size, fewer when
            that many edited feature maps would exceed about 256 MiB).
        split: ``"fx"`` (the network before the mask runs once) or ``"hook"`` (full reruns).
        occlusion_levels: information-loss levels; 0 gives the clean accuracy.
        occlusion_grid: cells per side for patch drop and Hide-and-Seek.
        pointing_tolerance: pointing-game tolerance in tokens.
        histogram_bins: bins of the per-image density histogram.
        figure_images: how many images the figures show (their maps are kept in the result).
        latency_repeats: timed forward passes per model (the median is reported).
    """

    metrics: tuple[str, ...] = METRICS
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    deletion_fill: str = "zero"
    deletion_fractions: tuple[float, ...] = tuple(i / 10 for i in range(10))
    rerun_rows: int | None = None
    split: str = "fx"
    occlusion_levels: tuple[float, ...] = tuple(i / 10 for i in range(8))
    occlusion_grid: int = 8
    pointing_tolerance: float = 1.0
    histogram_bins: int = 10
    figure_images: int = 8
    latency_repeats: int = 5

    def problems(self) -> list[str]:
        out = []
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            out.append(f"metrics {', '.join(unknown) or '(none)'} unknown; choose from all, {', '.join(METRICS)}")
        if self.batch_size < 1:
            out.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.deletion_fill not in ("zero", "mean"):
            out.append(f"deletion_fill must be zero or mean, got {self.deletion_fill!r}")
        fractions = list(self.deletion_fractions)
        if not fractions or any(not 0.0 <= f <= 1.0 for f in fractions) or fractions != sorted(set(fractions)):
            out.append(f"deletion_fractions must be strictly increasing values in [0, 1], got {fractions}")
        if self.split not in ("fx", "hook"):
            out.append(f"split must be fx or hook, got {self.split!r}")
        if self.occlusion_grid < 1:
            out.append(f"occlusion_grid must be >= 1, got {self.occlusion_grid}")
        if any(not 0.0 <= v < 1.0 for v in self.occlusion_levels):
            out.append(f"occlusion_levels must lie in [0, 1), got {list(self.occlusion_levels)}")
        return out


class Progress(Protocol):
    """Where :func:`evaluate` reports progress (the CLI passes rich bars; the default is silent)."""

    def start(self, task: str, total: int) -> None: ...

    def advance(self, task: str, n: int = 1) -> None: ...


class SilentProgress:
    """The default: reports nothing."""

    def start(self, task: str, total: int) -> None:
        pass

    def advance(self, task: str, n: int = 1) -> None:
        pass
