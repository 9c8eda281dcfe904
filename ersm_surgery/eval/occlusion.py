"""Structured occlusion of images and the accuracy curve it gives (paper claim (b): robustness).

An occluder removes an information loss ``il`` in [0, 1) of the image area and paints it with a
per-channel ``fill`` (the data mean; 0 in normalised space, the default). All randomness comes from a
CPU ``torch.Generator`` and is drawn image by image, so a seed gives the same occlusions on any device
and whatever the batch split: two models evaluated with the same seed see identical pixels.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["Occluder", "cutout", "hide_and_seek", "occlusion_curve", "random_patch_drop"]

Occluder = Callable[..., torch.Tensor]
"""``occluder(images, il, generator=g) -> images``; bind ``grid`` / ``fill`` with functools.partial."""

GridSize = int | tuple[int, int]


def _check(images: torch.Tensor, il: float) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not 0.0 <= il < 1.0:
        raise ValueError(f"il (information loss) must be in [0, 1), got {il}")


def _grid(grid: GridSize, h: int, w: int) -> tuple[int, int]:
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    if not (1 <= gh <= h and 1 <= gw <= w):
        raise ValueError(f"grid must be between 1 and the image size {h}x{w} per side, got {gh}x{gw}")
    return gh, gw


def _cell_index(h: int, w: int, gh: int, gw: int) -> torch.Tensor:
    """(H, W) long map from pixel to grid cell; cell edges are rounded, so sizes differ by at most 1 px."""
    rows = torch.bucketize(torch.arange(h), torch.linspace(0, h, gh + 1).round().long()[1:-1], right=True)
    cols = torch.bucketize(torch.arange(w), torch.linspace(0, w, gw + 1).round().long()[1:-1], right=True)
    return rows[:, None] * gw + cols[None, :]


def _apply(images: torch.Tensor, hidden: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    """Paint the (B, H, W) bool ``hidden`` pixels with ``fill`` (C,), default 0; returns a new tensor."""
    c = images.shape[1]
    if fill is None:
        fill = images.new_zeros(c)
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).flatten()
    if fill.numel() != c:
        raise ValueError(f"fill must have one value per channel ({c}), got {fill.numel()}")
    hidden = hidden.to(images.device)[:, None]
    return torch.where(hidden, fill.view(1, c, 1, 1), images)


def random_patch_drop(images: torch.Tensor, il: float, grid: GridSize = 4, generator: torch.Generator | None = None,
                      fill: torch.Tensor | None = None) -> torch.Tensor:
    """Hide ``round(il * n_patches)`` random cells of a ``grid`` laid over each image.

    Args:
        images: (B, C, H, W).
        il: fraction of the patches to hide, in [0, 1).
        grid: cells per side, an int or (rows, cols); cells are sized to the image.
        generator: CPU generator; the same seed gives the same patches.
        fill: (C,) value painted over hidden pixels; default 0 (the mean after normalisation).

    Returns:
        A new (B, C, H, W) tensor; hidden area is ``round(il * n) / n`` of the image (exact when
        the grid divides the image, within one patch otherwise).
    """
    _check(images, il)
    b, _, h, w = images.shape
    gh, gw = _grid(grid, h, w)
    n = gh * gw
    k = math.floor(il * n + 0.5)
    hidden_cells = torch.zeros(b, n, dtype=torch.bool)
    for i in range(b):
        hidden_cells[i, torch.randperm(n, generator=generator)[:k]] = True
    return _apply(images, hidden_cells[:, _cell_index(h, w, gh, gw)], fill)


def cutout(
    images: torch.Tensor,
    il: float,
    generator: torch.Generator | None = None,
    fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hide one square of area ``il * H * W`` at a uniformly random position inside each image.

    The square is placed so that it lies wholly inside the image (its top-left corner is drawn from
    the valid positions), so the hidden area is the requested one up to rounding of the side. When the
    square would be wider than the short side, it becomes a rectangle spanning the short side.

    Args:
        images: (B, C, H, W).
        il: fraction of the area to hide, in [0, 1).
        generator: CPU generator; the same seed gives the same positions.
        fill: (C,) value painted over the hidden pixels; default 0.

    Returns:
        A new (B, C, H, W) tensor with one rectangle hidden per image.
    """
    _check(images, il)
    b, _, h, w = images.shape
    area = il * h * w
    side = math.floor(math.sqrt(area) + 0.5)
    sh, sw = side, side
    if side > min(h, w):
        if h <= w:
            sh, sw = h, min(w, math.floor(area / h + 0.5))
        else:
            sh, sw = min(h, math.floor(area / w + 0.5)), w
    hidden = torch.zeros(b, h, w, dtype=torch.bool)
    if sh > 0 and sw > 0:
        for i in range(b):
            y0 = int(torch.randint(0, h - sh + 1, (1,), generator=generator))
            x0 = int(torch.randint(0, w - sw + 1, (1,), generator=generator))
            hidden[i, y0 : y0 + sh, x0 : x0 + sw] = True
    return _apply(images, hidden, fill)


def hide_and_seek(images: torch.Tensor, il: float, grid: GridSize = 4, generator: torch.Generator | None = None,
                  fill: torch.Tensor | None = None) -> torch.Tensor:
    """Hide each cell of a ``grid`` independently with probability ``il`` (Singh and Lee, 2017).

    The hidden area is ``il`` in expectation, not per image.

    Args:
        images: (B, C, H, W).
        il: probability of hiding a cell, in [0, 1).
        grid: cells per side, an int or (rows, cols).
        generator: CPU generator; the same seed gives the same cells.
        fill: (C,) value painted over the hidden pixels; default 0.

    Returns:
        A new (B, C, H, W) tensor with the drawn cells hidden.
    """
    _check(images, il)
    b, _, h, w = images.shape
    gh, gw = _grid(grid, h, w)
    n = gh * gw
    # One uniform draw per cell even at il = 0, so the generator advances the same way at every level.
    draws = torch.stack([torch.rand(n, generator=generator) for _ in range(b)]) if b else torch.zeros(0, n)
    return _apply(images, (draws < il)[:, _cell_index(h, w, gh, gw)], fill)


def _correct(predict_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
    out = predict_fn(images)
    pred = out.argmax(dim=1) if out.dim() == 2 else out
    return (pred.to(labels.device) == labels).cpu()


def occlusion_curve(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    occluder: Occluder,
    levels: Sequence[float],
    seed: int = 0,
    batch_size: int | None = None,
) -> dict:
    """Top-1 accuracy at each occlusion level, on occlusions fixed by ``seed``.

    Every level starts a fresh generator from the same ``seed``, so occlusions are nested across
    levels for the grid occluders (the patches hidden at 0.2 are among those hidden at 0.4), which
    makes the curve less noisy, and two models called with the same seed see the same pixels.

    Args:
        predict_fn: images -> logits (B, K) (argmax taken) or predicted labels (B,); run under no_grad.
        images: (N, C, H, W) evaluation images.
        labels: (N,) true classes.
        occluder: ``occluder(images, il, generator=g)``, e.g. ``partial(random_patch_drop, grid=4)``.
        levels: information-loss levels in [0, 1), e.g. ``[0.1, 0.2, 0.3, 0.4, 0.5]``.
        seed: seed of the occlusions.
        batch_size: images per ``predict_fn`` call; default all at once. Does not change the occlusions.

    Returns:
        ``{"levels": list, "accuracy": list (one per level), "clean_accuracy": float,
        "mean_accuracy": float (mean over the levels > 0, the occluded ones; clean accuracy if there
        are none), "ratio": mean_accuracy / clean_accuracy (occluded over clean; NaN if clean is 0),
        "relative": list, accuracy / clean_accuracy per level, "per_image_correct": (levels, N) bool tensor,
        right or not per image at each level (the paired figures' bootstrap needs it)}``.
    """
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images and labels differ in length: {images.shape[0]} and {labels.shape[0]}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("images is empty")
    step = batch_size or n
    levels = [float(level) for level in levels]

    def run(il: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        correct = []
        for start in range(0, n, step):
            batch = images[start : start + step]
            seen = occluder(batch, il, generator=generator)
            correct.append(_correct(predict_fn, seen, labels[start : start + step]))
        return torch.cat(correct)

    with torch.no_grad():
        per_image = torch.stack([run(il) for il in levels])
        accuracy = [int(row.sum()) / n for row in per_image]
        clean = accuracy[levels.index(0.0)] if 0.0 in levels else int(run(0.0).sum()) / n
    occluded = [a for a, il in zip(accuracy, levels, strict=True) if il > 0.0]
    mean_accuracy = sum(occluded) / len(occluded) if occluded else clean
    return {
        "levels": levels,
        "accuracy": accuracy,
        "clean_accuracy": clean,
        "mean_accuracy": mean_accuracy,
        "ratio": mean_accuracy / clean if clean > 0 else float("nan"),
        "relative": [a / clean if clean > 0 else float("nan") for a in accuracy],
        "per_image_correct": per_image,
    }
