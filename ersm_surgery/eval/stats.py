"""Intervals and verdicts behind every claim: a paired, two-level bootstrap over seeds and images.

How seeds and images combine (a hierarchical bootstrap, Davison and Hinkley 1997, section 3.8): the
figure of one fine-tuning seed is a statistic of per-image arrays in which both models saw the same
images (paired). One bootstrap replicate draws the seeds with replacement, then, inside every drawn
seed, the images with replacement (the same draw for both models, which keeps the pairing), computes
the statistic per drawn seed and averages it over the drawn seeds. The estimate is the mean over seeds
of the statistic on all images; the interval is the percentile interval of the replicates. With one
seed only the images are resampled, so the interval then says nothing about fine-tuning noise.

A sample can hold several groups of images (e.g. the cued and the decorrelated validation split of
claim (f)); each group is resampled on its own, its arrays together.

Pure numpy, no torch: the functions take plain arrays and are tested against known answers.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Interval", "Margin", "bootstrap", "verdict", "HOLDS", "DOES_NOT_HOLD", "INCONCLUSIVE", "NOT_MEASURED",
           "VERDICTS", "DEFAULT_RESAMPLES"]

HOLDS = "HOLDS"
DOES_NOT_HOLD = "DOES NOT HOLD"
INCONCLUSIVE = "INCONCLUSIVE"
NOT_MEASURED = "NOT MEASURED"
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_MEASURED)
DEFAULT_RESAMPLES = 2000

Group = Mapping[str, np.ndarray]
"""Arrays over the same images, first axis = image (e.g. ``{"ersm": correct, "baseline": correct}``)."""
Sample = Mapping[str, Group]
"""One fine-tuning seed: its groups of paired arrays by name."""
Statistic = Callable[[Sample], float]


@dataclass(frozen=True)
class Interval:
    """An estimate with its percentile interval.

    Attributes:
        estimate: the mean over seeds of the statistic on all images.
        low: lower end of the interval.
        high: upper end.
        level: coverage (0.95).
        seeds: seeds combined.
        images: images per seed (summed over groups; the smallest seed's count).
        resamples: bootstrap replicates.
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    seeds: int = 1
    images: int = 0
    resamples: int = DEFAULT_RESAMPLES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interval:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def fmt(self, digits: int = 3) -> str:
        """``0.012 [-0.004, 0.027]``."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Margin:
    """Which side of ``value`` the claim puts the figure: ``above`` (figure > value) or ``below``."""

    value: float
    side: str = "above"

    def __post_init__(self) -> None:
        if self.side not in ("above", "below"):
            raise ValueError(f"side must be 'above' or 'below', got {self.side!r}")

    def describe(self) -> str:
        return f"{'>' if self.side == 'above' else '<'} {self.value:g}"


def _check(samples: Sequence[Sample]) -> list[dict[str, tuple[int, dict[str, np.ndarray]]]]:
    if not samples:
        raise ValueError("bootstrap needs at least one sample (one seed)")
    checked = []
    for i, sample in enumerate(samples):
        groups = {}
        for name, group in sample.items():
            arrays = {k: np.asarray(v) for k, v in group.items()}
            sizes = {k: a.shape[0] if a.ndim else -1 for k, a in arrays.items()}
            if not arrays or len(set(sizes.values())) != 1 or next(iter(sizes.values())) < 1:
                raise ValueError(f"sample {i}, group {name!r}: arrays must share a non-empty first axis, got {sizes}")
            groups[name] = (next(iter(sizes.values())), arrays)
        checked.append(groups)
    return checked


def _draw(sample: dict[str, tuple[int, dict[str, np.ndarray]]], rng: np.random.Generator) -> dict:
    out = {}
    for name, (n, arrays) in sample.items():
        rows = rng.integers(0, n, size=n)
        out[name] = {k: a[rows] for k, a in arrays.items()}
    return out


def bootstrap(samples: Sequence[Sample], statistic: Statistic, resamples: int = DEFAULT_RESAMPLES,
              level: float = 0.95, seed: int = 0) -> Interval:
    """The estimate and percentile interval of ``statistic`` over seeds and images (see the module doc).

    Args:
        samples: one :data:`Sample` per fine-tuning seed.
        statistic: the figure of one seed, from its (resampled) groups; a paired difference, usually.
        resamples: bootstrap replicates.
        level: coverage of the interval.
        seed: seed of the resampling (the same seed gives the same interval).

    Returns:
        An :class:`Interval`; a statistic that is NaN on every replicate gives NaN ends.

    Raises:
        ValueError: no samples, a group with no images or arrays of different lengths, bad level or resamples.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    checked = _check(samples)
    full = [{name: arrays for name, (_, arrays) in s.items()} for s in checked]
    estimate = float(np.mean([statistic(s) for s in full]))
    rng = np.random.default_rng(seed)
    s_count = len(checked)
    values = np.empty(resamples)
    for b in range(resamples):
        picked = rng.integers(0, s_count, size=s_count) if s_count > 1 else (0,)
        values[b] = np.mean([statistic(_draw(checked[i], rng)) for i in picked])
    finite = values[np.isfinite(values)]
    tail = (1 - level) / 2
    low, high = (float(v) for v in np.quantile(finite, [tail, 1 - tail])) if finite.size else (math.nan, math.nan)
    images = min(sum(n for n, _ in s.values()) for s in checked)
    return Interval(estimate, low, high, level, s_count, images, resamples)


def verdict(interval: Interval | None, margin: Margin) -> str:
    """HOLDS: the whole interval on the claim's side of the margin; DOES NOT HOLD: the whole interval on
    the other side (touching the margin counts as not on the claim's side); INCONCLUSIVE: it straddles
    the margin; NOT MEASURED: no interval (or an undefined one)."""
    if interval is None or not all(math.isfinite(v) for v in (interval.estimate, interval.low, interval.high)):
        return NOT_MEASURED
    if margin.side == "above":
        if interval.low > margin.value:
            return HOLDS
        return DOES_NOT_HOLD if interval.high <= margin.value else INCONCLUSIVE
    if interval.high < margin.value:
        return HOLDS
    return DOES_NOT_HOLD if interval.low >= margin.value else INCONCLUSIVE
