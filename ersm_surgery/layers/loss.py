"""The energy regularizer of ERSM: a token price and a coherence term, with no target density.

    R = sum over mask layers of k * [alpha * mean(q) + beta * mean over neighbour pairs w_ij |q_i - q_j|]

k = 1 under ``mask.price=absolute`` (the default); under ``mask.price=relative`` k is the running
``sum |dL_task/dm|`` of that layer (``layers.price``, detached), so a token's price is alpha times the
mean magnitude of the task gradient on the mask, whatever the model, stage or loss scale.

w_ij = 1 for the plain Potts term. A pairwise term with weights (the edge-aware plugin's, say) weights
the pairs of the regularizer with the same w_ij that its mean-field used, detached: the regularizer is
then the relaxed energy of the same model (a pair across a feature edge costs as little here as in the
mask's own inference), and the backbone cannot lower it by inventing edges.

How many tokens survive is decided per input by the balance of the task loss and this price;
there is deliberately no budget or top-k term (that would be DynConv, not ERSM).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .energy import neighbour_differences, pair_weights
from .energy_mask import EnergyMask

__all__ = ["energy_regularizer", "layer_regularizer", "gamma_at", "EnergyLoss"]


def layer_regularizer(
    q: torch.Tensor, alpha: float, beta: float, neighbourhood: int = 4, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """alpha * mean(q) + beta * mean w_ij |q_i - q_j| over neighbour pairs, for one layer's q (B, 1, H, W).

    ``weights`` are the pairwise term's per-direction w (B, K, H, W) (None: w_ij = 1); they are detached.
    """
    price = q.mean()
    diffs = neighbour_differences(q, neighbourhood)
    if weights is not None:
        diffs = [w * d for w, d in zip(pair_weights(weights.detach().to(q.dtype), neighbourhood), diffs, strict=True)]
    pairs = sum(d.numel() for d in diffs)
    coherence = sum(d.sum() for d in diffs) / pairs if pairs else q.new_zeros(())
    return alpha * price + beta * coherence


def energy_regularizer(layers: Iterable[EnergyMask]) -> torch.Tensor:
    """Sum of :func:`layer_regularizer` over the layers, from the q each stored in its last forward.

    Raises:
        RuntimeError: a layer has not run a forward pass since it was built.
    """
    total = None
    for layer in layers:
        if layer.state is None:
            raise RuntimeError("an Energy-Mask layer has no state: run the model's forward pass first")
        c = layer.config
        term = layer_regularizer(layer.state.q, c.alpha, c.beta, c.neighbourhood, layer.state.weights)
        if c.price == "relative":
            term = layer.task_scale.value().to(term.dtype) * term
        total = term if total is None else total + term
    if total is None:
        raise RuntimeError("no Energy-Mask layers: the model has no masks to regularize")
    return total


def gamma_at(step: int, total_steps: int, gamma: float = 1.0, warmup: float = 0.3) -> float:
    """gamma(t): 0 at the first step, linear up to ``gamma`` at ``warmup * total_steps``, then flat."""
    ramp = max(1, int(round(warmup * total_steps)))
    return gamma * min(1.0, step / ramp) if warmup > 0 else gamma


class EnergyLoss(nn.Module):
    """Holds the mask layers and gamma; ``loss(step, total_steps)`` gives gamma(t) * R.

    Args:
        layers: the model's Energy-Mask layers (see :func:`ersm_surgery.masks`).
        gamma: the final weight of the regularizer.
        warmup: fraction of the steps over which gamma ramps up from 0.
    """

    def __init__(self, layers: Iterable[EnergyMask], gamma: float = 1.0, warmup: float = 0.3) -> None:
        super().__init__()
        self.layers = list(layers)
        self.gamma = gamma
        self.warmup = warmup

    def forward(self, step: int = 0, total_steps: int = 1) -> torch.Tensor:
        return gamma_at(step, total_steps, self.gamma, self.warmup) * energy_regularizer(self.layers)
