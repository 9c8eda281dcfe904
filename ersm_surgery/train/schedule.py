"""The ERSM schedules of a run: gamma(t) of the regularizer and the mean-field temperature tau(t).

gamma ramps slowly from 0 (DESIGN.md, "collapse"): the regularizer must not win before the task signal
exists. tau may be annealed linearly, which sharpens q towards the hard mask used in evaluation.
Both are functions of the optimizer update index alone, so a resumed run reproduces them.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..layers import gamma_at
from ..mask_set import MaskSet

__all__ = ["MaskSchedule", "mask_phase"]


@dataclass
class MaskSchedule:
    """gamma(t) and tau(t) over ``total_updates`` optimizer updates.

    Args:
        total_updates: optimizer updates of the whole run.
        gamma: final weight of the regularizer.
        gamma_warmup: fraction of the updates over which gamma ramps up from 0.
        tau_start: temperature at the first update (the model's ``mask.tau``).
        tau_end: temperature at the last update (None: constant ``tau_start``).
    """

    total_updates: int
    gamma: float
    gamma_warmup: float
    tau_start: float
    tau_end: float | None = None

    def gamma_at(self, update: int) -> float:
        return gamma_at(update, self.total_updates, self.gamma, self.gamma_warmup)

    def tau_at(self, update: int) -> float:
        if self.tau_end is None:
            return self.tau_start
        frac = min(1.0, update / max(1, self.total_updates - 1))
        return self.tau_start + frac * (self.tau_end - self.tau_start)

    def apply(self, layers: MaskSet, update: int) -> tuple[float, float]:
        """Set every mask layer's tau for ``update``; return (gamma, tau) at that update."""
        tau = self.tau_at(update)
        for layer in layers:
            layer.config.tau = tau
        return self.gamma_at(update), tau


def mask_phase(total_updates: int, gamma_warmup: float, mask_freeze: float | None,
               mask_updates: int | None) -> tuple[float, int | None]:
    """The price's ramp (a fraction of the run) and the update from which the masks stop learning (None: never).

    ``gamma_warmup`` and ``mask_freeze`` are fractions of ``total_updates``; ``mask_updates`` caps both in
    updates (``finetune.mask_updates``): a run with more data or more epochs gives its masks no more updates
    than that, and the rest of it to the backbone.
    """
    freeze = None if mask_freeze is None else round(mask_freeze * total_updates)
    if mask_updates is None:
        return gamma_warmup, freeze
    warmup = min(gamma_warmup, mask_updates / max(1, total_updates))
    return warmup, mask_updates if freeze is None else min(freeze, mask_updates)
