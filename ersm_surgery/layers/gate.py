"""The stage gate: a stage mask taken to every grid of the next stage (``mask.gate=stage``).

Under ``mask.gate=stage`` the mask after stage k multiplies every intermediate map of stage k+1, so a
token the mask switches off is exactly zero everywhere in that stage and the stage can be computed on
the kept tokens alone (``ersm_surgery.sparse``). The gated stage reads the mask off its own input (see
:func:`kept_tokens`): that input is the masked output of stage k. A strided block changes the grid; the mask is then
taken to the new grid by **stride sampling**: the token at (i, j) of a grid s times coarser is kept when
the token at (s*i, s*j) of the stage's input grid is kept, the token a strided convolution, a strided
1x1 shortcut or timm's 2x2 average-pool shortcut centres that output on. Max-pooling (keep a coarse token
when any source token is kept) would be as exact; stride sampling keeps the density the same on every
grid, so the coarse grids cost what the fine one does.

In training the gate also carries the mask's gradient. Read off the data alone, the kept tokens are a
comparison, which has none: the mask head would then price a token by what its features are worth to
the maps that read them, never by what the whole gated stage computes at that token, and a price fitted to
the first closes the stage (measured: docs/sparse.md, "Fine-tuning under the gate"). So the mask layer
remembers, for the output tensor of each training pass, the straight-through mask it multiplied onto it
(:func:`remember_mask`), and :func:`kept_tokens` adds that mask's gradient path to the kept tokens it reads
(``keep + (mask - mask.detach())``: the same values, the gradient of every gate the mask feeds).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["StageGate", "pool_mask", "grid_stride", "kept_tokens", "remember_mask"]

# output tensor of a mask layer's training pass -> the mask multiplied onto it. Keyed by the tensor's
# identity and held weakly, so an entry lives exactly as long as the output it describes: no state on a
# module (which a deep copy would share) and nothing left behind after the backward pass.
_TRAINING_MASKS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def remember_mask(output: torch.Tensor, mask: torch.Tensor) -> None:
    """Record that ``output`` is a map times ``mask`` (B, 1, H, W), for the gate of the next stage."""
    _TRAINING_MASKS[output] = mask


def grid_stride(size: int, target: int) -> int:
    """The sampling step from a grid side of ``size`` to one of ``target`` (``round(size / target)``, >= 1)."""
    return max(1, int(round(size / target)))


def pool_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The (B, 1, H, W) mask taken to a (h, w) grid by stride sampling.

    Token (i, j) of the (h, w) grid takes the value at (min(s_h * i, H - 1), min(s_w * j, W - 1)) with
    ``s = round(H / h)``; the same rule decides which tokens the sparse runtime computes.
    """
    height, width = mask.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (h, w) == (height, width):
        return mask
    rows = (torch.arange(h, device=mask.device) * grid_stride(height, h)).clamp_(max=height - 1)
    cols = (torch.arange(w, device=mask.device) * grid_stride(width, w)).clamp_(max=width - 1)
    return mask.index_select(-2, rows).index_select(-1, cols)


def kept_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) 0/1: the tokens of a gated stage's (B, C, H, W) input that carry a value.

    The input of a gated stage is the previous stage's output times its mask, so these are the tokens the
    mask kept (a kept token whose whole feature vector is exactly zero carries nothing and counts as off).
    Reading the mask from the data, not from the mask layer's state, keeps the gate a pure function of
    the graph's values: exports, fx splits and DDP see no side channel.
    """
    keep = (x != 0).any(dim=1, keepdim=True).to(x.dtype)
    mask = _TRAINING_MASKS.get(x) if x.requires_grad else None
    if mask is not None and mask.shape == keep.shape:
        # exactly zero in value; in the backward pass it routes every gate's gradient to the mask
        keep = keep + (mask - mask.detach()).to(x.dtype)
    return keep


class StageGate(nn.Module):
    """Multiplies a map of the gated stage by its input's kept tokens, taken to the map's grid.

    Args:
        source: the mask layer that gates this stage (its path, for reports).
    """

    def __init__(self, source: str = "") -> None:
        super().__init__()
        self.source = source

    def forward(self, x: torch.Tensor, keep: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        keep = keep.to(x.dtype)
        if channels_last:  # (B, H, W, C)
            return x * pool_mask(keep, x.shape[1:3]).permute(0, 2, 3, 1)
        return x * pool_mask(keep, x.shape[-2:])

    def extra_repr(self) -> str:
        return f"source={self.source}"
