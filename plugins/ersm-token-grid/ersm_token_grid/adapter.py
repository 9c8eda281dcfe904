"""The token-grid adapter: a (B, C, H, W) view of ViT-style tokens and of channels-last maps."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ersm_surgery.surgery import ModelAdapter

__all__ = ["TokenGridAdapter", "LAYOUTS"]

LAYOUTS = ("tokens", "nhwc")


def _grids_at(model: nn.Module, module: str, input_size: tuple[int, int, int]) -> list[tuple[int, int]]:
    """The token grids a stage of ``model`` may lay its tokens on, for an input of ``input_size``.

    From the stage's own ``feature_info`` reduction (so token stages that pool, as LeViT's, get their own
    grid) and from every patch embedding of the model (its ``grid_size``, or ``dynamic_feat_size`` for the
    input size); a stem without stride padding floors, a padded one ceils: both are candidates.
    """
    from ersm_surgery.surgery.analysis import feature_info

    h, w = input_size[1:]
    grids: list[tuple[int, int]] = []
    for d in feature_info(model):
        r = d.get("reduction")
        if d.get("module") == module and r:
            grids += [(h // r, w // r), (math.ceil(h / r), math.ceil(w / r))]
    for m in model.modules():
        if not hasattr(m, "patch_size"):
            continue  # only patch embeddings name a grid
        if hasattr(m, "dynamic_feat_size"):
            grid = m.dynamic_feat_size(tuple(input_size[1:]))
        else:
            grid = getattr(m, "grid_size", None)
        if grid is not None and len(grid) == 2:
            grids.append((int(grid[0]), int(grid[1])))
    return list(dict.fromkeys(g for g in grids if g[0] > 0 and g[1] > 0))


def _raster_order(unroll: list[list[int]], grid: tuple[int, int]) -> torch.Tensor:
    """For each raster position of ``grid``, the position of its token in Hiera's unrolled order."""
    from timm.models.hiera import Reroll

    reroll = Reroll((1, 1), (1, 1), [], [0], 0)  # then given this block's schedule: a pure permutation
    reroll.schedule = {0: ([tuple(s) for s in unroll], list(grid))}
    n = grid[0] * grid[1]
    return reroll(torch.arange(n, dtype=torch.float64).view(1, n, 1), 0).reshape(-1).long()


def _unroll_at(model: nn.Module, module: str, tokens: int) -> tuple[list[list[int]], list[int]] | None:
    """(strides still unrolled, grid) of Hiera's block ``module``; None for a model in raster order."""
    schedules = getattr(getattr(model, "reroll", None), "schedule", None)
    head, _, index = module.rpartition(".")
    if not isinstance(schedules, dict) or not index.isdigit() or int(index) not in schedules:
        return None
    strides, size = schedules[int(index)]
    if not strides or len(size) != 2 or size[0] * size[1] != tokens:
        return None
    return [list(s) for s in strides], [int(v) for v in size]


def _has_class_token(model: nn.Module) -> bool:
    return any(name.split(".")[-1].startswith("cls_token") for name, _ in model.named_parameters())


class TokenGridAdapter(ModelAdapter):
    """Lays tokens (B, N, C) out on their patch grid, or permutes (B, H, W, C), for an Energy-Mask.

    Args:
        layout: "tokens" (B, N, C) with ``prefix_tokens`` leading non-patch tokens, or "nhwc".
        prefix_tokens: class and register tokens before the patch tokens; they pass unmasked.
        grid: (H, W) of the patch grid at the size the model was masked at. An input of another size
            is handled when its patch tokens form a square grid.
        unroll: Hiera's token order: the (Sy, Sx) strides its ``Unroll`` still applies at this block. Its
            tokens are then laid out on the grid by timm's own ``Reroll`` (and put back in unrolled order),
            so a mask's neighbours are the image's neighbours; inputs of the recorded size only.
    """

    def __init__(self, layout: str, prefix_tokens: int = 0, grid: list[int] | None = None,
                 unroll: list[list[int]] | None = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"token_grid layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout == "tokens" and (grid is None or len(grid) != 2):
            raise ValueError(f"token_grid needs grid=[H, W] for the tokens layout, got {grid!r}")
        args: dict[str, Any] = {"layout": layout}
        if layout == "tokens":
            args.update(prefix_tokens=int(prefix_tokens), grid=[int(grid[0]), int(grid[1])])
            if unroll:
                args["unroll"] = [[int(v) for v in s] for s in unroll]
        super().__init__(**args)
        self.layout = layout
        self.prefix_tokens = int(prefix_tokens)
        self.grid = tuple(args.get("grid", ()))
        # raster position -> unrolled position; a buffer so it follows .to(device), kept out of the state dict
        order = _raster_order(args["unroll"], self.grid) if "unroll" in args else None
        self.register_buffer("order", order, persistent=False)

    @classmethod
    def match(cls, model: nn.Module, module: str, shape: tuple[int, ...], layout: str | None,
              input_size: tuple[int, int, int]) -> dict[str, Any] | None:
        if len(shape) == 4 and (layout or "").startswith("channels-last"):
            return {"layout": "nhwc"}
        if len(shape) != 3:
            return None
        unrolled = _unroll_at(model, module, shape[1])
        if unrolled is not None:
            return {"layout": "tokens", "prefix_tokens": 0, "grid": unrolled[1], "unroll": unrolled[0]}
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        # class tokens join late in some models (CaiT's class attention, ConViT's last blocks): a stage holds
        # the model's prefix tokens, or none yet; models that do not count theirs (CrossViT, CoaT) have one
        # class token per branch or scale
        known = {0, prefix} | ({1} if _has_class_token(model) else set())
        grids = _grids_at(model, module, input_size)
        for grid in grids:
            extra = shape[1] - grid[0] * grid[1]
            if extra in known:
                return {"layout": "tokens", "prefix_tokens": extra, "grid": list(grid)}
        # the stage may have been probed at a smaller input than input_size when the model takes any size
        if bool(getattr(model, "dynamic_img_size", False)) and grids and shape[1] > prefix:
            return {"layout": "tokens", "prefix_tokens": prefix, "grid": list(grids[-1])}
        return None  # tokens pooled or merged inside the model: not a grid this adapter knows

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
        if self.order is not None:
            if patches.shape[1] != self.order.numel():
                raise ValueError(f"{patches.shape[1]} tokens, but this Hiera block was masked with "
                                 f"{self.order.numel()}: use the input size the model was injected at")
            patches = patches[:, self.order]
        h, w = self._grid_for(patches.shape[1])
        return patches.transpose(1, 2).reshape(-1, patches.shape[2], h, w), prefix

    def from_spatial(self, y: torch.Tensor, context: Any) -> torch.Tensor:
        if self.layout == "nhwc":
            return y.permute(0, 2, 3, 1).contiguous()
        tokens = y.flatten(2).transpose(1, 2)
        if self.order is not None:
            tokens = tokens[:, torch.argsort(self.order)]
        return torch.cat([context, tokens], dim=1) if self.prefix_tokens else tokens
