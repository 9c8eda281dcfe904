"""An Energy-Mask behind a layout adapter, for stage outputs that are not (B, C, H, W) maps.

Token models (ViT: (B, N, C) with prefix tokens) and channels-last models (Swin, MambaOut:
(B, H, W, C)) hand their stages' outputs on in another layout. :class:`AdaptedMask` maps that output
to a (B, C, H, W) view with its adapter, masks the view with the inner :class:`EnergyMask`, and maps
the result back. The adapters themselves come from the registry in ``ersm_surgery.surgery.adapters``
(plugins add them); this module only composes.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from .energy_mask import EnergyMask

__all__ = ["AdaptedMask", "SpatialAdapter"]


class SpatialAdapter(Protocol):
    """What :class:`AdaptedMask` needs of an adapter (see ``ersm_surgery.surgery.ModelAdapter``)."""

    def to_spatial(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]: ...

    def from_spatial(self, y: torch.Tensor, context: Any) -> torch.Tensor: ...


class AdaptedMask(nn.Module):
    """``from_spatial(mask(to_spatial(x)))``: an Energy-Mask applied through a layout adapter.

    The inner mask is the ``mask`` child, so ``ersm_surgery.masks(model)`` finds it (under this
    module's name) and the state-dict keys stay under ``*.ersm_mask*``.

    Args:
        adapter: maps the stage output to (B, C, H, W) and back (an ``nn.Module``, usually without
            parameters).
        mask: the Energy-Mask layer over the (B, C, H, W) view.
    """

    def __init__(self, adapter: nn.Module, mask: EnergyMask) -> None:
        super().__init__()
        self.adapter = adapter
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial, context = self.adapter.to_spatial(x)
        return self.adapter.from_spatial(self.mask(spatial), context)
