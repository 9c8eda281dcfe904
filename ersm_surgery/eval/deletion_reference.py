"""Deletion tests in feature space (paper claim (e): the energy ranking beats magnitude ranking).

A layer's feature maps are computed once; tokens are removed from them in the order a ranking gives,
and the rest of the network (``head_fn``) is run on what is left. LeRF (least relevant first) should
keep accuracy up for a good ranking; MoRF (most relevant first) should bring it down fast.

Removing a fraction ``f`` removes ``floor(f * H * W)`` tokens per image (with a tiny tolerance so that
``0.3 * 10`` counts as 3): never more than the fraction asked, and all tokens at ``f = 1``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from .curves import auc_trapezoid
from .sparsity import as_token_maps

__all__ = [
    "FILLS",
    "ORDERS",
    "combine_deletion_curves",
    "deletion_curve",
    "curve_from_logits",
    "deleted_features",
    "energy_scores",
    "fill_values",
    "magnitude_scores",
    "random_scores",
    "removal_rank",
    "tokens_removed",
]

ORDERS = ("lerf", "morf")
FILLS = ("zero", "mean")


def tokens_removed(fraction: float, n_tokens: int) -> int:
    """``floor(fraction * n_tokens)``, robust to float error (``0.3 * 10`` gives 3, not 2)."""
    return min(n_tokens, math.floor(fraction * n_tokens + 1e-6))


def energy_scores(energy: torch.Tensor) -> torch.Tensor:
    """Ranking scores from ERSM token energies: ``-energy`` (lower energy = more important), (B, H, W)."""
    return -as_token_maps(energy, "energy")


def magnitude_scores(features: torch.Tensor) -> torch.Tensor:
    """The magnitude baseline: L2 norm of each token's feature vector, (B, C, H, W) -> (B, H, W)."""
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    return torch.linalg.vector_norm(features.float(), dim=1)


def random_scores(
    shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The chance baseline: uniform random scores of ``shape`` (B, H, W), drawn on the CPU for reproducibility."""
    return torch.rand(tuple(shape), generator=generator).to(device=device)


def _summarise(correct: torch.Tensor, probability: torch.Tensor, fractions: list[float], removed: list[int]) -> dict:
    accuracy = correct.float().mean(dim=1).tolist()
    prob = probability.float().mean(dim=1).tolist()
    return {
        "fractions": fractions,
        "removed": removed,
        "accuracy": accuracy,
        "probability": prob,
        "accuracy_auc": auc_trapezoid(fractions, accuracy),
        "probability_auc": auc_trapezoid(fractions, prob),
        "per_image_correct": correct,
        "per_image_probability": probability,
    }


def removal_rank(ranking_scores: torch.Tensor, order: str) -> torch.Tensor:
    """Each token's position in the removal order, (B, 1, H, W) long: rank 0 is removed first.

    LeRF removes the lowest scores first, MoRF the highest; ties go in raster order (stable sort).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    scores = as_token_maps(ranking_scores, "ranking_scores").detach()
    b, h, w = scores.shape
    n = h * w
    removal_order = torch.argsort(scores.reshape(b, n), dim=1, descending=(order == "morf"), stable=True)
    rank = torch.empty_like(removal_order)
    rank.scatter_(1, removal_order, torch.arange(n, device=scores.device).expand(b, n))
    return rank.view(b, 1, h, w)


def fill_values(features: torch.Tensor, fill: str) -> torch.Tensor:
    """What a removed token becomes, (B, C, 1, 1): zeros, or each channel's mean over the image's tokens."""
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if fill == "zero":
        return features.new_zeros(features.shape[0], features.shape[1], 1, 1)
    return features.mean(dim=(2, 3), keepdim=True)


def deleted_features(features: torch.Tensor, rank: torch.Tensor, k: int, fill_value: torch.Tensor) -> torch.Tensor:
    """``features`` with the ``k`` first tokens of the removal order (``rank < k``) set to ``fill_value``."""
    return torch.where(rank.to(features.device) < k, fill_value, features)


def curve_from_logits(
    outputs: Sequence[torch.Tensor],
    clean_logits: torch.Tensor,
    labels: torch.Tensor | None,
    fractions: Sequence[float],
    removed: Sequence[int],
    order: str,
    fill: str,
) -> dict:
    """The :func:`deletion_curve` result from the logits at each fraction (computed any way one likes).

    Args:
        outputs: (B, K) logits, one per fraction.
        clean_logits: (B, K) logits on the untouched features.
        labels: (B,) true classes, or None to score agreement with the clean prediction.
        fractions: the fractions, as given to :func:`deletion_curve`.
        removed: tokens removed per image at each fraction.
        order: recorded in the result.
        fill: recorded in the result.
    """
    with torch.no_grad():
        clean_pred = clean_logits.argmax(dim=1)
        target = clean_pred if labels is None else labels.to(clean_pred.device)
        correct = torch.stack([o.argmax(dim=1) == target for o in outputs])
        probability = torch.stack(
            [torch.softmax(o.float(), dim=1).gather(1, clean_pred[:, None])[:, 0] for o in outputs]
        )
    result = _summarise(correct.cpu(), probability.cpu(), [float(f) for f in fractions], list(removed))
    result.update(order=order, fill=fill)
    return result


def deletion_curve(
    features: torch.Tensor,
    ranking_scores: torch.Tensor,
    head_fn: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor | None,
    fractions: Sequence[float],
    order: str = "lerf",
    fill: str = "zero",
) -> dict:
    """Accuracy and confidence of ``head_fn`` as ranked tokens are removed from ``features``.

    One ``head_fn`` call per fraction, plus one on the clean features when 0 is not among the
    fractions. Ties in the scores are broken by raster order (a stable sort), so results are
    deterministic; give scores without ties (e.g. add tiny noise) when that order could matter.

    Args:
        features: (B, C, H, W) feature maps of one layer, computed once.
        ranking_scores: (B, H, W) or (B, 1, H, W), higher = more important.
        head_fn: the rest of the network, (B, C, H, W) -> logits (B, K); called under no_grad.
        labels: (B,) true classes; ``None`` measures agreement with the clean prediction instead.
        fractions: strictly increasing fractions of tokens to remove, in [0, 1].
        order: ``"lerf"`` (least important first) or ``"morf"`` (most important first).
        fill: ``"zero"``, or ``"mean"``: each channel's mean over the image's clean tokens.

    Returns:
        ``{"fractions", "removed" (tokens per image), "accuracy", "probability" (lists, one per
        fraction; probability is the mean softmax probability of the class predicted on the clean
        features), "accuracy_auc", "probability_auc" (floats, see :func:`auc_trapezoid`),
        "per_image_correct" (F, B) bool, "per_image_probability" (F, B) float, "order", "fill"}``.

    Raises:
        ValueError: bad shapes, order, fill or fractions.
    """
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    scores = as_token_maps(ranking_scores, "ranking_scores")
    b, c, h, w = features.shape
    if scores.shape != (b, h, w):
        raise ValueError(f"ranking_scores must have shape ({b}, {h}, {w}) to match features, got {tuple(scores.shape)}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    fractions = [float(f) for f in fractions]
    increasing = all(a < b for a, b in itertools.pairwise(fractions))
    if not fractions or not increasing or any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must be strictly increasing values in [0, 1], got {fractions}")
    if labels is not None and labels.shape[0] != b:
        raise ValueError(f"labels must have {b} entries to match features, got {labels.shape[0]}")

    n = h * w
    rank = removal_rank(scores.to(features.device), order)
    fill_value = fill_values(features, fill)
    removed = [tokens_removed(f, n) for f in fractions]
    with torch.no_grad():
        clean_logits = head_fn(features) if 0 not in removed else None
        outputs: list[torch.Tensor] = []
        for k in removed:
            if k == 0 and clean_logits is not None:
                outputs.append(clean_logits)
                continue
            logits = head_fn(deleted_features(features, rank, k, fill_value))
            if k == 0:
                clean_logits = logits
            outputs.append(logits)
    assert clean_logits is not None  # set above: either computed first or at the k = 0 fraction
    return curve_from_logits(outputs, clean_logits, labels, fractions, removed, order, fill)


def combine_deletion_curves(curves: Sequence[dict]) -> dict:
    """Pool the per-image results of several batches' :func:`deletion_curve` into one curve.

    Raises:
        ValueError: no curves, or curves with different fractions, order or fill.
    """
    if not curves:
        raise ValueError("curves is empty: run deletion_curve on at least one batch")
    first = curves[0]
    for key in ("fractions", "order", "fill"):
        bad = [i for i, cur in enumerate(curves) if cur[key] != first[key]]
        if bad:
            raise ValueError(f"curves {bad} differ from curve 0 in {key!r}; combine only curves of the same setting")
    correct = torch.cat([cur["per_image_correct"] for cur in curves], dim=1)
    probability = torch.cat([cur["per_image_probability"] for cur in curves], dim=1)
    removed = first["removed"] if all(cur["removed"] == first["removed"] for cur in curves) else None
    result = _summarise(correct, probability, list(first["fractions"]), removed)
    result.update(order=first["order"], fill=first["fill"])
    return result
