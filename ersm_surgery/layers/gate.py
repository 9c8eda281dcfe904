"""The stage gate: a stage mask taken to every grid of the next stage (``mask.gate=stage``).

Under ``mask.gate=stage`` the mask after stage k multiplies every intermediate map of stage k+1, so a
token the mask switches off is exactly zero everywhere in that stage and the stage can be computed on
the kept tokens alone (``ersm_surgery.sparse``). The gated stage reads the mask off its own input (see
:func:`kept_tokens`): that input is the masked output of stage k. A strided block changes the grid; the mask
is then taken to the new grid by one of two rules (``mask.gate_pool``), both exact for the sparse runtime,
which computes the coarse tokens the same rule keeps:

- ``"sample"`` (the default, and the only rule before recipe version 4): the token at (i, j) of a grid s
  times coarser is kept when the token at (s*i, s*j) of the stage's input grid is, the token a strided
  convolution, a strided 1x1 shortcut or timm's 2x2 average-pool shortcut centres that output on. The density
  is the same on every grid, so the coarse grids save what the fine one does; but a kept token at an odd
  position whose sampled neighbours are off reaches nothing after the stride.
- ``"any"``: the token is kept when any token of its s x s block, rows s*i .. s*i+s-1 and columns
  s*j .. s*j+s-1, is kept. Every kept token reaches the coarse grid, which then keeps more than the fine one.
  Measured (docs/sparse.md): fine-tuned at the same price it kept 7.0 points [+0.4, +13.6] more accuracy than
  ``"sample"``; at the same mask density resnet50's gated stages ran 1.51x faster than timm's instead of 2.24x.

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

from .config import GATE_POOLS

__all__ = ["StageGate", "pool_mask", "grid_stride", "kept_tokens", "remember_mask", "pass_mask_on", "check_pool_rule",
           "GATE_POOLS"]

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


def check_pool_rule(rule: str) -> None:
    """Raise ValueError unless ``rule`` is a ``mask.gate_pool`` setting."""
    if rule not in GATE_POOLS:
        raise ValueError(f"mask.gate_pool must be one of {', '.join(GATE_POOLS)}, got {rule!r}")


def pool_mask(mask: torch.Tensor, size: tuple[int, int], rule: str = "sample") -> torch.Tensor:
    """The (B, 1, H, W) mask taken to a (h, w) grid by ``rule`` ("any" or "sample", see the module docstring).

    With ``s = round(H / h)``, token (i, j) of the (h, w) grid reads the s x s block of rows
    ``min(s * i + di, H - 1)`` and columns ``min(s * j + dj, W - 1)``: "sample" takes its first token
    (di = dj = 0), "any" its maximum; the same rule decides which tokens the sparse runtime computes. In
    training the maximum's gradient is shared evenly by the block's kept tokens (by all its tokens when none
    is kept), as ``torch.amax`` shares it between equal values. (Routing it to every token of the block, as
    the block's mean would, kept resnet18's masks open: 0.85 / 1.00 against 0.32 / 0.93, one cell of the
    price matrix, docs/sparse.md.)
    """
    check_pool_rule(rule)
    height, width = mask.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (h, w) == (height, width):
        return mask
    step_h, step_w = grid_stride(height, h), grid_stride(width, w)
    if rule == "sample" and (h - 1) * step_h < height and (w - 1) * step_w < width:
        # no sampled token past the edge: the first token of each block is a strided view (one op, not eight)
        return mask[..., : (h - 1) * step_h + 1 : step_h, : (w - 1) * step_w + 1 : step_w]
    rows = torch.arange(h, device=mask.device) * step_h
    cols = torch.arange(w, device=mask.device) * step_w

    def tap(di: int, dj: int) -> torch.Tensor:
        return mask.index_select(-2, (rows + di).clamp(max=height - 1)).index_select(
            -1, (cols + dj).clamp(max=width - 1))

    if rule == "sample":
        return tap(0, 0)
    return torch.stack([tap(di, dj) for di in range(step_h) for dj in range(step_w)]).amax(dim=0)


def kept_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) 0/1: the tokens of a gated stage's (B, C, H, W) input that carry a value.

    The input of a gated stage is the previous stage's output times its mask, so these are the tokens the
    mask kept (a kept token whose whole feature vector is exactly zero carries nothing and counts as off).
    Reading the mask from the data, not from the mask layer's state, keeps the gate a pure function of
    the graph's values: exports, fx splits and DDP see no side channel.
    """
    # the same test as (x != 0).any(1) (a sum of magnitudes is zero only when every one is; NaN and inf count
    # as kept either way), 3-5x faster on CPU: any() over the channels of an NCHW map is a strided reduction
    keep = (x.abs().sum(dim=1, keepdim=True) != 0).to(x.dtype)
    mask = _TRAINING_MASKS.get(x) if x.requires_grad else None
    if mask is not None and mask.shape == keep.shape:
        # exactly zero in value; in the backward pass it routes every gate's gradient to the mask
        keep = keep + (mask - mask.detach()).to(x.dtype)
    return keep


def pass_mask_on(output: torch.Tensor, keep: torch.Tensor, rule: str) -> torch.Tensor:
    """``output`` unchanged; in training, remembers ``keep`` taken to its grid for the module gated after it.

    A stage mask may gate several modules in turn (efficientnet_b0's blocks.3 and blocks.4): the second reads
    its kept tokens off the first one's output, and finds the mask's gradient path here. Only the training
    graph of a gated module calls it.
    """
    if output.requires_grad and keep.requires_grad and output.dim() == 4:
        remember_mask(output, pool_mask(keep, output.shape[-2:], rule))
    return output


class StageGate(nn.Module):
    """Multiplies a map of the gated stage by its input's kept tokens, taken to the map's grid.

    Args:
        source: the mask layer that gates this stage (its path, for reports).
        pool: how the mask is taken to a coarser grid (``mask.gate_pool``: "any" or "sample").
    """

    def __init__(self, source: str = "", pool: str = "sample") -> None:
        super().__init__()
        check_pool_rule(pool)
        self.source = source
        self.pool = pool

    def forward(self, x: torch.Tensor, keep: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        keep = keep.to(x.dtype)
        if channels_last:  # (B, H, W, C)
            return x * pool_mask(keep, x.shape[1:3], self.pool).permute(0, 2, 3, 1)
        return x * pool_mask(keep, x.shape[-2:], self.pool)

    def extra_repr(self) -> str:
        return f"source={self.source}, pool={self.pool}"
