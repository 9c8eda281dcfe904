"""The price's brake: gamma eased off while the task loss sits above where the fine-tuning started.

A price in units of the task gradient (``layers.price``) means the same on every model, but the
straight-through gradient of a switched-off token underestimates what the token was worth, so a price
that is on for long enough keeps closing tokens until the task breaks (measured on resnet18: relative
alpha 0.5 kept 40% of the tokens after 62 updates and 4% after 120). The brake closes that loop on the
quantity the user cares about, the task loss, never on the density: with tolerance ``t``,

    gamma_effective = gamma(t) * clamp((L_ref * (1 + t) - L) / (L_ref * t), 0, 1)

where ``L_ref`` is the mean task loss of the first updates (masks still open: the model is the base) and
``L`` the running mean of the task loss. Below ``L_ref`` the price is fully on; at ``L_ref * (1 + t)`` it
is off, and the task gradient reopens what it needs. How many tokens each image keeps is still decided by
the mask per image; the brake only bounds what the price may cost the task.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LossBrake", "REFERENCE_FRACTION", "LOSS_DECAY"]

REFERENCE_FRACTION = 0.1  # the first 10% of the updates (at least 3): gamma is still near 0 and the masks open
LOSS_DECAY = 0.9  # running mean of the task loss over about ten updates


@dataclass
class LossBrake:
    """Tracks the task loss and gives the factor on gamma (always 1 when ``tolerance`` is None).

    Args:
        tolerance: the tolerated relative rise of the task loss over its reference (None: no brake).
        total_updates: optimizer updates of the whole run (the reference spans the first tenth).
    """

    tolerance: float | None
    total_updates: int
    reference: float | None = None
    running: float | None = None
    _sum: float = 0.0
    _count: int = 0

    def observe(self, task_loss: float, update: int) -> None:
        if self.tolerance is None:
            return
        if self.reference is None:
            self._sum += task_loss
            self._count += 1
            if update + 1 >= max(3, round(REFERENCE_FRACTION * self.total_updates)):
                self.reference = self._sum / self._count
        self.running = task_loss if self.running is None else LOSS_DECAY * self.running + (1 - LOSS_DECAY) * task_loss

    def factor(self) -> float:
        if self.tolerance is None or self.reference is None or self.running is None:
            return 1.0
        room = self.reference * self.tolerance
        if room <= 0:
            return 1.0
        return min(1.0, max(0.0, (self.reference + room - self.running) / room))

    def state(self) -> dict[str, float | int | None]:
        return {"reference": self.reference, "running": self.running, "sum": self._sum, "count": self._count}

    def load_state(self, state: dict) -> None:
        self.reference, self.running = state.get("reference"), state.get("running")
        self._sum, self._count = float(state.get("sum", 0.0)), int(state.get("count", 0))
