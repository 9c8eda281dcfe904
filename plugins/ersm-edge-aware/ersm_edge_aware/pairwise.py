"""The edge-aware pairwise term: Gaussian affinities of normalised features between neighbours.

The weights are a fixed function of the features: they are computed without gradient. They steer
the mask's mean-field inference (and, through ``MaskState.weights``, the coherence term of the
energy regularizer), but the backbone is not trained through them, so it cannot make a boundary
cheap by inventing an edge.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ersm_surgery.errors import RecipeError
from ersm_surgery.layers import MaskConfig, neighbour_offsets

__all__ = ["EdgeAwarePairwise", "create_edge_aware", "edge_weights", "NORMS", "DEFAULT_SIGMA"]

NORMS = ("l2", "layernorm")
DEFAULT_SIGMA = 0.5


def _normalise(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit-length token vectors: plain (``l2``) or centred first (``layernorm``), so sigma is scale-free."""
    if norm == "layernorm":
        x = x - x.mean(dim=1, keepdim=True)
    return F.normalize(x, dim=1, eps=1e-6)


@torch.no_grad()
def edge_weights(x: torch.Tensor, sigma: float, neighbourhood: int = 4, norm: str = "l2") -> torch.Tensor:
    """w_ij = exp(-||f_i - f_j||^2 / (2 sigma^2)) per neighbour direction.

    Args:
        x: features (B, C, H, W).
        sigma: width of the Gaussian on distances between unit vectors (which lie in [0, 2]).
        neighbourhood: 4 or 8; the channel order is ``ersm_surgery.layers.neighbour_offsets``.
        norm: "l2" or "layernorm" (see :func:`_normalise`).

    Returns:
        (B, K, H, W) float32 weights; a direction that points past the border gets an arbitrary value,
        which the mean-field ignores (tokens past the border count as 0).
    """
    f = _normalise(x.float(), norm)
    h, w = f.shape[-2:]
    padded = F.pad(f, (1, 1, 1, 1))
    out = []
    for dy, dx in neighbour_offsets(neighbourhood):
        neighbour = padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        out.append((f - neighbour).square().sum(dim=1, keepdim=True))
    return torch.exp(-torch.cat(out, dim=1) / (2.0 * sigma * sigma))


class EdgeAwarePairwise(nn.Module):
    """Maps features X (B, C, H, W) to edge-aware weights w (B, K, H, W) for the mean-field steps.

    Args:
        neighbourhood: 4 or 8 (from the mask config).
        sigma: Gaussian width on distances of normalised features; smaller means more edges.
        norm: "l2" (per-token L2 normalisation) or "layernorm" (centre, then L2).
    """

    def __init__(self, neighbourhood: int = 4, sigma: float = DEFAULT_SIGMA, norm: str = "l2") -> None:
        super().__init__()
        self.neighbourhood = neighbourhood
        self.sigma = float(sigma)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return edge_weights(x, self.sigma, self.neighbourhood, self.norm)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, norm={self.norm}, neighbourhood={self.neighbourhood}"


def create_edge_aware(channels: int, config: MaskConfig) -> EdgeAwarePairwise:
    """The registered factory: reads ``sigma`` and ``norm`` from ``config.pairwise_args``.

    Raises:
        RecipeError: unknown settings, sigma <= 0, or an unknown norm (all named at once).
    """
    args: dict[str, Any] = dict(config.pairwise_args or {})
    problems = []
    unknown = sorted(set(args) - {"sigma", "norm"})
    if unknown:
        problems.append(f"unknown setting(s) {', '.join(unknown)}")
    sigma = args.get("sigma", DEFAULT_SIGMA)
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not sigma > 0:
        problems.append(f"sigma must be a number > 0, got {sigma!r}")
    norm = args.get("norm", "l2")
    if norm not in NORMS:
        problems.append(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if problems:
        raise RecipeError("mask.pairwise_args for edge_aware: " + "; ".join(problems),
                          "use e.g. --set 'mask.pairwise_args={sigma: 0.5, norm: l2}'")
    return EdgeAwarePairwise(config.neighbourhood, float(sigma), norm)
