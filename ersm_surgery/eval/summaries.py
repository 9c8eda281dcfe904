"""Per-layer summaries of sparsity (claim (a)) and localization (claim (c)) from token maps.

The runner keeps, for every mask layer and every evaluated image, the hard mask, the soft keep
probability q, the token energy and the L2 magnitude of the features the mask received; these
functions turn those (N, H, W) maps into the numbers results.json reports.
"""
from __future__ import annotations

import torch

from .localization import box_to_token_mask, mask_box_iou, mass_in_box, pointing_game, top_tokens_mask
from .sparsity import coherence, connected_components, density_stats, histogram, random_mask_like

__all__ = ["sparsity_summary", "localization_summary", "ranking_localization", "pointing_chance"]


def _quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q))


def sparsity_summary(
    hard: torch.Tensor,
    q: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    bins: int = 10,
    seed: int = 0,
) -> dict:
    """Density, input adaptivity and coherence of one layer's hard masks against random masks.

    Args:
        hard: (N, H, W) 0/1 hard masks.
        q: (N, H, W) keep probabilities.
        labels: (N,) classes of the images (for per-class density).
        classes: class names.
        bins: histogram bins of the per-image density.
        seed: seed of the random masks of equal density.

    Returns:
        ``{"tokens", "grid", "density" {mean, std, min, max}, "soft_density" (mean q), "histogram"
        {counts, edges}, "adaptivity" {std, iqr, p10, p90, cv, per_class}, "coherence" {mask, random},
        "components" {mask, random}, "empty" {images, share, per_class}, "full" {images, share}}``.
        Coherence is the mean |m_i - m_j| over neighbour pairs (lower is more coherent); components counts
        4-connected kept regions (mean per image); "empty" counts the images whose mask keeps no token (the
        layers after it see zeros for them: where nothing bypasses the mask they all get one output;
        ``per_class``: their true classes) and "full" those whose mask keeps every token.
    """
    n, h, w = hard.shape
    stats = density_stats(hard)
    per_image = stats["per_image"]
    hist = histogram(per_image, bins=bins)
    random_masks = random_mask_like(hard, generator=torch.Generator().manual_seed(int(seed)))
    per_class = {}
    for c, name in enumerate(classes):
        chosen = per_image[labels == c]
        if chosen.numel():
            per_class[name] = float(chosen.mean())
    mean = stats["mean"]
    empty, full = per_image == 0, per_image == 1
    empty_classes = {name: int((labels[empty] == c).sum()) for c, name in enumerate(classes)}
    return {
        "tokens": h * w,
        "grid": [h, w],
        "images": n,
        "density": {k: stats[k] for k in ("mean", "std", "min", "max")},
        "soft_density": float(q.float().mean()),
        "histogram": {"counts": [int(v) for v in hist["counts"].tolist()], "edges": hist["edges"].tolist()},
        "adaptivity": {
            "std": stats["std"],
            "iqr": _quantile(per_image, 0.75) - _quantile(per_image, 0.25),
            "p10": _quantile(per_image, 0.10),
            "p90": _quantile(per_image, 0.90),
            "cv": stats["std"] / mean if mean > 0 else float("nan"),
            "per_class": per_class,
        },
        "coherence": {"mask": coherence(hard)["mean"], "random": coherence(random_masks)["mean"]},
        "components": {
            "mask": float(connected_components(hard).float().mean()),
            "random": float(connected_components(random_masks).float().mean()),
        },
        "empty": {"images": int(empty.sum()), "share": float(empty.float().mean()),
                  "per_class": {k: v for k, v in empty_classes.items() if v}},
        "full": {"images": int(full.sum()), "share": float(full.float().mean())},
    }


def pointing_chance(boxes: torch.Tensor, h: int, w: int, tolerance: float = 1.0) -> float:
    """Hit rate of a pointing game whose top token is drawn uniformly: the mean share of token centres
    inside the box grown by ``tolerance`` tokens (the same rule as :func:`pointing_game`)."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    b = boxes.float()
    ty, tx = tolerance / h, tolerance / w
    inside_y = (ys[None] >= b[:, 1:2] - ty) & (ys[None] <= b[:, 3:4] + ty)
    inside_x = (xs[None] >= b[:, 0:1] - tx) & (xs[None] <= b[:, 2:3] + tx)
    return float((inside_y[:, :, None] & inside_x[:, None, :]).flatten(1).float().mean())


def ranking_localization(maps: torch.Tensor, boxes: torch.Tensor, counts: torch.Tensor,
                         tolerance: float = 1.0) -> dict:
    """Pointing game, mass in box, and IoU of the top-``counts`` tokens with the box, for one map kind."""
    return {
        "pointing": pointing_game(maps, boxes, tolerance)["mean"],
        "mass_in_box": mass_in_box(maps, boxes)["mean"],
        "iou": mask_box_iou(top_tokens_mask(maps, counts), boxes)["mean"],
    }


def localization_summary(
    energy: torch.Tensor,
    hard: torch.Tensor,
    magnitude: torch.Tensor | None,
    boxes: torch.Tensor,
    baseline_magnitude: torch.Tensor | None = None,
    tolerance: float = 1.0,
) -> dict:
    """Do the importance maps sit on the object? Energy vs magnitude (vs the baseline's magnitude).

    Args:
        energy: (N, H, W) token energies (lower = more important; the map used is ``-energy``).
        hard: (N, H, W) hard masks.
        magnitude: (N, H, W) L2 norm of the features the mask received (before masking), or None.
        boxes: (N, 4) normalised object boxes.
        baseline_magnitude: (N, H, W) L2 norm of the baseline's features at the same place, or None.
        tolerance: pointing-game tolerance in tokens.

    Returns:
        ``{"energy": {pointing, mass_in_box, iou}, "magnitude": {...}, "baseline_magnitude": {...}
        (each magnitude entry when its map is given), "mask_iou": IoU of the hard mask itself,
        "box_fraction": mean share of tokens inside the box (the chance level of mass_in_box),
        "pointing_chance": the pointing game's hit rate for a uniformly random top token}``.
        The ``iou`` of a ranking keeps, per image, as many top tokens as the hard mask kept, so every
        ranking is compared at the mask's density (the energy ranking's ``iou`` equals ``mask_iou``
        up to ties).
    """
    counts = hard.flatten(1).sum(dim=1).round().long()
    h, w = hard.shape[-2:]
    out = {
        "energy": ranking_localization(-energy, boxes, counts, tolerance),
        "mask_iou": mask_box_iou(hard, boxes)["mean"],
        "box_fraction": float(box_to_token_mask(boxes, h, w).float().mean()),
        "pointing_chance": pointing_chance(boxes, h, w, tolerance),
    }
    if magnitude is not None:
        out["magnitude"] = ranking_localization(magnitude, boxes, counts, tolerance)
    if baseline_magnitude is not None:
        out["baseline_magnitude"] = ranking_localization(baseline_magnitude, boxes, counts, tolerance)
    return out
