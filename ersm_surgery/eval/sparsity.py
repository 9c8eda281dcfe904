"""How sparse and how coherent the masks are (paper claim (a): emergent, input-adaptive sparsity).

All functions take per-image masks as (B, 1, H, W) or (B, H, W), soft (q in [0, 1]) or hard (0/1).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "as_token_maps",
    "coherence",
    "connected_components",
    "density_stats",
    "histogram",
    "random_mask_like",
]


def as_token_maps(x: torch.Tensor, name: str = "masks") -> torch.Tensor:
    """View a (B, 1, H, W) or (B, H, W) tensor as (B, H, W).

    Raises:
        ValueError: any other shape.
    """
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 3:
        return x
    raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")


def density_stats(masks: torch.Tensor) -> dict:
    """Per-image density (mean mask value over the tokens) and its spread over the batch.

    Args:
        masks: (B, 1, H, W) or (B, H, W).

    Returns:
        ``{"mean", "std", "min", "max"}`` as floats (``std`` is the population std, so it is 0, not
        NaN, for one image) and ``"per_image"``, a (B,) float tensor.
    """
    per_image = as_token_maps(masks).detach().float().flatten(1).mean(dim=1)
    return {
        "mean": float(per_image.mean()),
        "std": float(per_image.std(unbiased=False)),
        "min": float(per_image.min()),
        "max": float(per_image.max()),
        "per_image": per_image,
    }


def histogram(values: torch.Tensor, bins: int = 10, value_range: tuple[float, float] | None = (0.0, 1.0)) -> dict:
    """Histogram of any tensor's values (e.g. per-image densities, or all q values).

    Args:
        values: any shape; flattened.
        bins: number of equal-width bins.
        value_range: (low, high) of the bins; densities live in [0, 1], hence the default. ``None``
            uses the data's min and max. Values outside the range are not counted.

    Returns:
        ``{"counts": (bins,) float tensor, "edges": (bins + 1,) float tensor}``.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    flat = values.detach().float().flatten().cpu()
    if value_range is None:
        counts, edges = torch.histogram(flat, bins=bins)
    else:
        counts, edges = torch.histogram(flat, bins=bins, range=(float(value_range[0]), float(value_range[1])))
    return {"counts": counts, "edges": edges}


def coherence(masks: torch.Tensor) -> dict:
    """Mean ``|m_i - m_j|`` over horizontal and vertical neighbour pairs, per image.

    This is the pairwise term of the ERSM regularizer: 0 for a constant mask (perfectly coherent),
    1 for a 0/1 checkerboard (every neighbour pair disagrees). Lower is more coherent.

    Returns:
        ``{"per_image": (B,) float tensor, "mean": float}``; an image with no neighbour pairs (1 x 1) scores 0.
    """
    m = as_token_maps(masks).detach().float()
    dy = (m[:, 1:, :] - m[:, :-1, :]).abs().flatten(1)
    dx = (m[:, :, 1:] - m[:, :, :-1]).abs().flatten(1)
    pairs = dy.shape[1] + dx.shape[1]
    if pairs == 0:
        per_image = m.new_zeros(m.shape[0])
    else:
        per_image = (dy.sum(dim=1) + dx.sum(dim=1)) / pairs
    return {"per_image": per_image, "mean": float(per_image.mean())}


def connected_components(binary_masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Number of 4-connected components of kept tokens in each image.

    Vectorised label propagation (no scipy, runs on the masks' device): every kept token starts with
    its own flat index as label; each round it takes the smallest label among itself and its 4
    neighbours, the root it pointed to takes the smallest label any of its tokens saw (hooking), and
    pointer jumping makes every label name a root again. Labels only ever name a kept token of the
    same component and only decrease, so at the fixed point each component carries one label.

    Args:
        binary_masks: (B, 1, H, W) or (B, H, W); a token is kept when its value is > ``threshold``.
        threshold: cut for soft masks.

    Returns:
        (B,) long tensor of component counts (0 for an empty mask).
    """
    on = as_token_maps(binary_masks, "binary_masks").detach() > threshold
    b, h, w = on.shape
    n = b * h * w
    big = n  # a label no kept token has; off tokens keep it so they never win a min
    index = torch.arange(n, device=on.device).view(b, h, w)
    labels = torch.where(on, index, torch.full_like(index, big))
    while True:
        padded = torch.nn.functional.pad(labels, (1, 1, 1, 1), value=big)
        best = labels
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            best = torch.minimum(best, padded[:, dy : dy + h, dx : dx + w])
        best = torch.where(on, best, labels).flatten()
        # Hook each token's old root onto the smaller label it just saw, so whole trees merge at once
        # (this makes long winding components take few rounds, not one per token of their length).
        kept = on.flatten()
        roots = labels.flatten().clamp(max=n - 1)  # off tokens point at n - 1 only to keep the gather in range
        hooked = best.clone().scatter_reduce_(0, roots[kept], best[kept], reduce="amin")
        best = torch.where(kept, torch.minimum(best, hooked[roots]), best)
        # Pointer jumping until every label names a root.
        while True:
            jumped = torch.where(kept, best[best.clamp(max=n - 1)], best)
            if torch.equal(jumped, best):
                break
            best = jumped
        best = best.view(b, h, w)
        if torch.equal(best, labels):
            break
        labels = best
    roots = on & (labels == index)
    return roots.flatten(1).sum(dim=1)


def random_mask_like(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random hard masks with each image's density, as the baseline for "better than a random mask".

    Image b gets ``round(density_b * H * W)`` kept tokens (halves round up) at uniformly random
    positions; draws are made image by image on the CPU, so a seed gives the same masks on any device
    and in any batch split.

    Args:
        masks: (B, 1, H, W) or (B, H, W), soft or hard.
        generator: a CPU ``torch.Generator`` for reproducibility.

    Returns:
        A 0/1 float tensor with the shape and device of ``masks``.
    """
    maps = as_token_maps(masks)
    b, h, w = maps.shape
    n = h * w
    # Round the kept mass, not density * n: float32 gives 0.06 * 25 = 1.4999... for a mass of 1.5.
    mass = maps.detach().double().flatten(1).sum(dim=1).cpu()
    out = torch.zeros(b, n)
    for i in range(b):
        k = min(n, math.floor(float(mass[i]) + 0.5))
        keep = torch.randperm(n, generator=generator)[:k]
        out[i, keep] = 1.0
    return out.view(masks.shape).to(device=masks.device)
