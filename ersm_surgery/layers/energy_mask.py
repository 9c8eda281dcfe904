"""The Energy-Mask layer: a thin ``nn.Module`` around the functions in :mod:`.energy`."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import MaskConfig
from .energy import mean_field, straight_through
from .gate import remember_mask
from .heads import create_pairwise, create_unary_head
from .price import TaskGradientScale

__all__ = ["EnergyMask", "MaskState"]


class MaskState(NamedTuple):
    """What one forward pass of an Energy-Mask layer produced, all (B, 1, H, W).

    Attributes:
        q: keep probabilities after the mean-field steps (carry gradients in training).
        energy: token energies e (lower = more important; e < 0 means keep).
        hard: the binary mask 1[e < 0].
        mask: the mask that was multiplied onto the features in this pass.
        weights: the pairwise term's w_ij per direction (B, K, H, W), or None for the plain Potts
            term (w_ij = 1); the regularizer weights its neighbour pairs with them.
    """

    q: torch.Tensor
    energy: torch.Tensor
    hard: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor | None = None


class EnergyMask(nn.Module):
    """Energy-Regularized Spatial Mask over a (B, C, H, W) feature map.

    Every forward pass stores its :class:`MaskState` in ``self.state`` so that the regularizer and
    the metrics read q, e and the hard mask without a second pass. The state lives on the module
    instance, which DDP and ``torch.compile`` both keep, rather than in a global.

    Args:
        channels: C of the feature map.
        config: the layer's hyper-parameters.
        hidden: width of the unary head (resolved by the surgery; see ``heads.auto_hidden``).
    """

    def __init__(self, channels: int, config: MaskConfig | None = None, hidden: int = 16) -> None:
        super().__init__()
        self.config = config or MaskConfig()
        self.channels = channels
        self.hidden = hidden
        self.head = create_unary_head(self.config.head, channels, hidden, self.config)
        self.pairwise = create_pairwise(self.config.pairwise, channels, self.config)
        self.task_scale = TaskGradientScale()  # the unit of a relative price (layers.price); no parameters
        self.state: MaskState | None = None

    @property
    def mode(self) -> str:
        """The mask applied by the next forward pass: the train or the eval mode setting."""
        return self.config.train_mode if self.training else self.config.eval_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        # the mean-field iteration is run in float32: under AMP, sigmoid(-u / tau) saturates early
        unary = cfg.alpha - self.head(x).float()
        weights = self.pairwise(x)
        if weights is not None:
            weights = weights.float()
        q, energy = mean_field(unary, cfg.beta, cfg.tau, cfg.steps, cfg.neighbourhood, weights, cfg.border)
        hard = (energy < 0).to(q.dtype)
        mode = self.mode
        if mode == "straight_through":
            mask = straight_through(q)
        elif mode == "soft":
            mask = q
        else:
            mask = hard
        if self.training and cfg.price == "relative" and torch.is_grad_enabled():
            mask = mask.view_as(mask)  # a tensor of its own: its gradient is the task's alone, never the price's
            self.task_scale.observe(mask)
        self.state = MaskState(q=q, energy=energy, hard=hard, mask=mask, weights=weights)
        out = x * mask.to(x.dtype)
        if cfg.gate == "stage" and out.requires_grad:
            remember_mask(out, mask)
        return out

    def __getstate__(self) -> dict:
        # the last state holds autograd history, which cannot be deep-copied or pickled
        return {**self.__dict__, "state": None}

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"channels={self.channels}, hidden={self.hidden}, alpha={c.alpha}, beta={c.beta}, tau={c.tau}, "
            f"steps={c.steps}, neighbourhood={c.neighbourhood}, border={c.border}, train_mode={c.train_mode}, "
            f"eval_mode={c.eval_mode}"
        )
