"""Do the masks sit on the object? (paper claim (c): interpretable masks without pixel supervision).

Importance maps are (B, H, W) or (B, 1, H, W) on a layer's token grid, higher = more important
(e.g. :func:`ersm_surgery.eval.energy_scores`). Boxes are (B, 4) as normalised ``(x0, y0, x1, y1)``
in [0, 1]. Token (r, c) covers ``[c / W, (c + 1) / W] x [r / H, (r + 1) / H]`` and its centre is
``((c + 0.5) / W, (r + 0.5) / H)``.

Each metric returns ``{"per_image": (B,) tensor, "mean": float}``.
"""
from __future__ import annotations

import torch

from .sparsity import as_token_maps

__all__ = ["box_to_token_mask", "mask_box_iou", "mass_in_box", "pointing_game", "top_tokens_mask"]


def _check_boxes(boxes: torch.Tensor, batch: int | None) -> torch.Tensor:
    rows = "B" if batch is None else batch
    if boxes.dim() != 2 or boxes.shape[1] != 4 or (batch is not None and boxes.shape[0] != batch):
        raise ValueError(f"boxes must have shape ({rows}, 4) as normalised (x0, y0, x1, y1), got {tuple(boxes.shape)}")
    boxes = boxes.detach().float()
    if bool(((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any()):
        raise ValueError("boxes must have x1 >= x0 and y1 >= y0 (format (x0, y0, x1, y1), normalised)")
    return boxes


def _centres(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token centre coordinates: ys (H,) and xs (W,) in [0, 1]."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return ys, xs


def _result(per_image: torch.Tensor) -> dict:
    return {"per_image": per_image, "mean": float(per_image.float().mean())}


def box_to_token_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Rasterise boxes on an h x w token grid: a token is inside when its centre is (edges included).

    A box too small to contain any token centre is rasterised as the one token that holds its centre,
    so small objects are never empty.

    Args:
        boxes: (B, 4) normalised (x0, y0, x1, y1).
        h: token rows.
        w: token columns.

    Returns:
        (B, h, w) bool tensor on the boxes' device.
    """
    boxes = _check_boxes(boxes, None)
    ys, xs = _centres(h, w, boxes.device)
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    inside_y = (ys[None] >= y0) & (ys[None] <= y1)
    inside_x = (xs[None] >= x0) & (xs[None] <= x1)
    mask = inside_y[:, :, None] & inside_x[:, None, :]
    empty = ~mask.flatten(1).any(dim=1)
    if bool(empty.any()):
        cy = ((y0 + y1)[:, 0] / 2 * h).long().clamp(0, h - 1)
        cx = ((x0 + x1)[:, 0] / 2 * w).long().clamp(0, w - 1)
        idx = empty.nonzero()[:, 0]
        mask[idx, cy[idx], cx[idx]] = True
    return mask


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance_tokens: float = 1) -> dict:
    """Hit when the map's maximum token lies within the box enlarged by ``tolerance_tokens`` on each side.

    "Lies within" uses the token's centre and the box grown by ``tolerance_tokens / W`` horizontally and
    ``tolerance_tokens / H`` vertically (the token-grid analogue of the usual 15-pixel tolerance), so
    with tolerance 1 the tokens next to the box also count. Ties go to the first maximum in raster
    order (``torch.argmax``).

    Args:
        maps: (B, H, W) or (B, 1, H, W) importance, higher = more important.
        boxes: (B, 4) normalised (x0, y0, x1, y1).
        tolerance_tokens: how far outside the box, in tokens, still counts; 0 for none.

    Returns:
        ``{"per_image": (B,) float tensor of 1.0 (hit) / 0.0 (miss), "mean": float}``.
    """
    m = as_token_maps(maps, "maps").detach()
    b, h, w = m.shape
    boxes = _check_boxes(boxes, b).to(m.device)
    if tolerance_tokens < 0:
        raise ValueError(f"tolerance_tokens must be >= 0, got {tolerance_tokens}")
    top = m.reshape(b, -1).argmax(dim=1)
    cy = ((top // w).float() + 0.5) / h
    cx = ((top % w).float() + 0.5) / w
    ty, tx = tolerance_tokens / h, tolerance_tokens / w
    hit = (cx >= boxes[:, 0] - tx) & (cx <= boxes[:, 2] + tx) & (cy >= boxes[:, 1] - ty) & (cy <= boxes[:, 3] + ty)
    return _result(hit.float())


def mass_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> dict:
    """Share of the map's positive importance that falls on tokens inside the box.

    Negative values are clamped to 0 (no shift): they are evidence against keeping a token, not
    small importance. For ERSM scores (``-energy``) the positive tokens are exactly those the mask
    keeps. A map with no positive mass carries no information and is treated as uniform, so its
    share is the fraction of tokens inside the box (the chance level).

    Args:
        maps: (B, H, W) or (B, 1, H, W) importance.
        boxes: (B, 4) normalised (x0, y0, x1, y1).

    Returns:
        ``{"per_image": (B,) float tensor in [0, 1], "mean": float}``.
    """
    m = as_token_maps(maps, "maps").detach().float().clamp(min=0)
    b, h, w = m.shape
    inside = box_to_token_mask(_check_boxes(boxes, b).to(m.device), h, w)
    total = m.flatten(1).sum(dim=1)
    in_box = (m * inside).flatten(1).sum(dim=1)
    chance = inside.flatten(1).float().mean(dim=1)
    share = torch.where(total > 0, in_box / total.clamp(min=torch.finfo(m.dtype).tiny), chance)
    return _result(share)


def mask_box_iou(hard_masks: torch.Tensor, boxes: torch.Tensor, threshold: float = 0.5) -> dict:
    """IoU of the kept tokens with the box rasterised by :func:`box_to_token_mask`.

    Args:
        hard_masks: (B, H, W) or (B, 1, H, W); a token is kept when its value is > ``threshold``.
        boxes: (B, 4) normalised (x0, y0, x1, y1).
        threshold: cut for soft masks.

    Returns:
        ``{"per_image": (B,) float tensor in [0, 1], "mean": float}``.
    """
    kept = as_token_maps(hard_masks, "hard_masks").detach() > threshold
    b, h, w = kept.shape
    inside = box_to_token_mask(_check_boxes(boxes, b).to(kept.device), h, w)
    inter = (kept & inside).flatten(1).sum(dim=1).float()
    union = (kept | inside).flatten(1).sum(dim=1).float()
    # The box mask is never empty, so the union is at least 1.
    return _result(inter / union)


def top_tokens_mask(maps: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Binary masks keeping the ``counts[b]`` highest tokens of each map (ties in raster order).

    Used to compare a ranking's localization with a hard mask at the same density: the magnitude
    map's top tokens, as many as the Energy-Mask kept on the same image.

    Args:
        maps: (B, H, W) or (B, 1, H, W) importance, higher = more important.
        counts: (B,) tokens to keep per image (clamped to [0, H*W]).

    Returns:
        (B, H, W) float 0/1 tensor.
    """
    m = as_token_maps(maps, "maps").detach()
    b, h, w = m.shape
    n = h * w
    order = torch.argsort(m.reshape(b, n), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=m.device).expand(b, n))
    k = counts.to(m.device).long().clamp(0, n)[:, None]
    return (rank < k).float().view(b, h, w)
