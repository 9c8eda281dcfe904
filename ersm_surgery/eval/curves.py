"""Area under a metric curve (deletion fraction or occlusion level against accuracy or probability).

The area is normalised by the x range, so it is the curve's mean height: a constant curve ``y = c``
has AUC ``c`` whatever the fractions are. This keeps AUCs from curves sampled on different ranges
(``f = 0 .. 0.9`` or ``0 .. 1``) on the same 0-1 scale as the metric itself.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["auc_trapezoid"]

ArrayLike = Sequence[float] | np.ndarray | torch.Tensor


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def auc_trapezoid(xs: ArrayLike, ys: ArrayLike) -> float:
    """Trapezoid-rule area under ``ys`` over ``xs``, divided by ``xs[-1] - xs[0]``.

    Args:
        xs: strictly increasing x values, e.g. deletion fractions ``0, 0.1, ..., 0.9``.
        ys: the metric at each x.

    Returns:
        The normalised area, i.e. the mean height of the piecewise-linear curve. A single point
        has no range to normalise by; its AUC is its y value.

    Raises:
        ValueError: the inputs are empty, differ in length, are not 1-D, or ``xs`` is not strictly increasing.
    """
    x = _as_1d(xs, "xs")
    y = _as_1d(ys, "ys")
    if x.size == 0 or x.size != y.size:
        raise ValueError(f"xs and ys must be non-empty and of equal length, got {x.size} and {y.size}")
    if x.size == 1:
        return float(y[0])
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"xs must be strictly increasing, got {x.tolist()}")
    area = float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)
    return area / float(x[-1] - x[0])
