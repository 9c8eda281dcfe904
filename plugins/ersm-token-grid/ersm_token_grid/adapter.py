"""The token-grid adapter: a (B, C, H, W) view of ViT-style tokens and of channels-last maps."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ersm_surgery.surgery import ModelAdapter

__all__ = ["TokenGridAdapter", "LAYOUTS"]

LAYOUTS = ("tokens", "nhwc")


def _grid_at(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int] | None:
    """The patch grid of ``model`` for an input of ``input_size`` (None without a patch embedding)."""
    embed = getattr(model, "patch_embed", None)
    if embed is None:
        return None
    if hasattr(embed, "dynamic_feat_size"):
        grid = embed.dynamic_feat_size(tuple(input_size[1:]))
    else:
        grid = getattr(embed, "grid_size", None)
    return (int(grid[0]), int(grid[1])) if grid is not None else None


class TokenGridAdapter(ModelAdapter):
    """Lays tokens (B, N, C) out on their patch grid, or permutes (B, H, W, C), for an Energy-Mask.

    Args:
        layout: "tokens" (B, N, C) with ``prefix_tokens`` leading non-patch tokens, or "nhwc".
        prefix_tokens: class and register tokens before the patch tokens; they pass unmasked.
        grid: (H, W) of the patch grid at the size the model was masked at. An input of another size
            is handled when its patch tokens form a square grid.
    """

    def __init__(self, layout: str, prefix_tokens: int = 0, grid: list[int] | None = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"token_grid layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "tokens" and (grid is None or len(grid) != 2):
            raise ValueError(f"token_grid needs grid=[H, W] for the tokens layout, got {grid!r}")
        args: dict[str, Any] = {"layout": layout}
        if layout == "tokens":
            args.update(prefix_tokens=int(prefix_tokens), grid=[int(grid[0]), int(grid[1])])
        super().__init__(**args)
        self.layout = layout
        self.prefix_tokens = int(prefix_tokens)
        self.grid = tuple(args.get("grid", ()))

    @classmethod
    def match(cls, model: nn.Module, module: str, shape: tuple[int, ...], layout: str | None,
              input_size: tuple[int, int, int]) -> dict[str, Any] | None:
        if len(shape) == 4 and (layout or "").startswith("channels-last"):
            return {"layout": "nhwc"}
        if len(shape) != 3:
            return None
        grid = _grid_at(model, input_size)
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        if grid is None or shape[1] <= prefix:
            return None
        # the stage may have been probed at a smaller input than input_size when the model takes any size
        dynamic = bool(getattr(model, "dynamic_img_size", False))
        if not dynamic and shape[1] != prefix + grid[0] * grid[1]:
            return None  # tokens pooled or merged inside the model: not the patch grid
        return {"layout": "tokens", "prefix_tokens": prefix, "grid": list(grid)}

    def _grid_for(self, n: int) -> tuple[int, int]:
        h, w = self.grid
        if n == h * w:
            return h, w
        side = math.isqrt(n)
        if side * side == n:
            return side, side
        raise ValueError(f"{n} patch tokens do not fit the {h}x{w} grid recorded at injection; the token_grid "
                         "adapter handles inputs of the recorded size, or square inputs of other sizes")

    def to_spatial(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self.layout == "nhwc":
            return x.permute(0, 3, 1, 2), None
        prefix, patches = x[:, : self.prefix_tokens], x[:, self.prefix_tokens :]
        h, w = self._grid_for(patches.shape[1])
        return patches.transpose(1, 2).reshape(-1, patches.shape[2], h, w), prefix

    def from_spatial(self, y: torch.Tensor, context: Any) -> torch.Tensor:
        if self.layout == "nhwc":
            return y.permute(0, 2, 3, 1).contiguous()
        tokens = y.flatten(2).transpose(1, 2)
        return torch.cat([context, tokens], dim=1) if self.prefix_tokens else tokens
