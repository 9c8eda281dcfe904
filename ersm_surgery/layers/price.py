"""The token price in units of the task: what ``mask.price=relative`` measures and how.

The regularizer's gradient on a token's keep probability is the price of keeping that token; the task
loss's gradient on the same token (through the mask it multiplies) is what the token is worth. With an
absolute price (``alpha`` in units of the loss) the balance moves with everything that scales the task
gradient: the model, the stage, the loss's value, how well the base was trained, a stage gate. On a
trained resnet18, alpha 0.15 kept every token and 0.25 cost five points; on a weaker base 0.2 collapsed
the masks. A relative price is instead quoted as a fraction of the task gradient the masks see:

    price of a token = alpha * mean over the layer's tokens of |dL_task / dm_i|

so ``alpha`` means the same thing on every model, stage and data set: a token survives when what it is
worth to the task exceeds alpha times what a typical token's presence moves the loss by. Scaling the
loss or the feature map scales both sides alike. There is still no target density: how many tokens
clear that bar is decided per input by the task (a calibration that solved for a density would be a
budget; this never looks at the density).

The scale is observed, not computed twice: a gradient hook on the mask each training forward multiplies
onto the features records ``sum |dL/dm|`` (the task's gradient only: the regularizer acts on ``q``, not
on that tensor) into a bias-corrected running mean, which the regularizer reads, detached, at the next
step. The hook sees the gradient of whatever was backpropagated, so a loop that scales its loss before
``backward`` (gradient accumulation's ``1 / steps``, a ``GradScaler``) says by how much with
:meth:`TaskGradientScale.set_multiplier` (the fine-tuning loop does).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import PRICES

__all__ = ["PRICES", "TaskGradientScale", "SCALE_DECAY"]

# PRICES (layers.config): "absolute" (the default, and the meaning of recipe versions 1 and 2) charges alpha in
# units of the loss; "relative" (opt-in) charges it as a fraction of the task gradient's mean magnitude
# running mean of the observed scale over about ten updates: long enough to smooth one batch's noise,
# short enough to follow the task gradient as the fine-tuning moves it
SCALE_DECAY = 0.9


class TaskGradientScale(nn.Module):
    """Running, bias-corrected mean of ``sum |dL_task / dm|`` for one mask layer.

    Its buffers are not persistent: they are training state (saved with the optimizer state for an exact
    resume), never part of a model file.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(()), persistent=False)
        self.register_buffer("seen", torch.zeros(()), persistent=False)
        self.multiplier = 1.0

    def set_multiplier(self, value: float) -> None:
        """What the loop multiplied the loss by before ``backward`` (``scaler.get_scale() / accumulation``)."""
        self.multiplier = float(value)

    def observe(self, mask: torch.Tensor) -> None:
        """Record the task gradient that will reach ``mask`` (a tensor used only to multiply the features)."""
        if mask.requires_grad:
            mask.register_hook(self._record)

    @torch.no_grad()
    def _record(self, grad: torch.Tensor) -> None:
        value = grad.detach().float().abs().sum() / self.multiplier
        if not torch.isfinite(value):  # an overflowing fp16 step the GradScaler will skip anyway
            return
        self.total.mul_(SCALE_DECAY).add_(value.to(self.total.device), alpha=1.0 - SCALE_DECAY)
        self.seen.add_(1.0)

    def value(self) -> torch.Tensor:
        """The scale (0 before the first observation), detached."""
        # no host sync: the loop reads it every step
        debias = (1.0 - SCALE_DECAY ** self.seen).clamp(min=1e-12)
        return torch.where(self.seen > 0, self.total / debias, torch.zeros_like(self.total)).detach()

    def state(self) -> dict[str, float]:
        return {"total": float(self.total), "seen": float(self.seen)}

    def load_state(self, state: dict[str, float]) -> None:
        self.total.fill_(float(state["total"]))
        self.seen.fill_(float(state["seen"]))
