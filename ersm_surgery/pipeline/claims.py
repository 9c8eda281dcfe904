"""The paper's claims, each with a criterion fixed before any run, judged from evaluation results.

Two versions are kept side by side and both are printed; neither is ever tuned after seeing results:

- version 1 (:data:`CLAIMS`, :func:`judge_claims`): single differences on one seed, no margin;
- version 2 (:mod:`.claims_v2`): paired differences with 95% intervals over seeds and images, a margin
  per claim, the share of importance mass in the box for localization, and claim (f).

A claim that does not hold is a result to report.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..eval.results_schema import Results

__all__ = ["Claim", "CLAIMS", "judge_claims"]


@dataclass(frozen=True)
class Claim:
    """A claim, its criterion in words, and how to read the figures from results.json (version 1)."""

    key: str
    claim: str
    criterion: str
    measure: Callable[[Results], tuple[float | None, float | None, bool | None]]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else None


def _accuracy(r: Results) -> tuple:
    ersm, base = (a.top1 if (a := r.accuracy.get(role)) else None for role in ("model", "baseline"))
    if ersm is None or base is None:
        return ersm, base, None
    return ersm, base, ersm >= base - 0.02


def _sparsity(r: Results) -> tuple:
    if not r.sparsity:
        return None, None, None
    means = [v.density_mean for v in r.sparsity.values()]
    stds = [v.density_std for v in r.sparsity.values()]
    holds = all(m < 0.6 for m in means) and all(s > 0.05 for s in stds)
    return max(means), min(stds), holds


def _occlusion(r: Results) -> tuple:
    ersm = _mean([c.ratio for c in r.occlusion.get("model", {}).values()])
    base = _mean([c.ratio for c in r.occlusion.get("baseline", {}).values()])
    if ersm is None or base is None:
        return ersm, base, None
    return ersm, base, ersm > base


def _localization(r: Results) -> tuple:
    layers = r.localization
    ersm = _mean([v.maps["energy"].pointing for v in layers.values() if "energy" in v.maps])
    # the baseline's own magnitude map at the same module when there is a baseline, else this model's
    key = "baseline_magnitude" if any("baseline_magnitude" in v.maps for v in layers.values()) else "magnitude"
    base = _mean([v.maps[key].pointing for v in layers.values() if key in v.maps])
    if ersm is None or base is None:
        return ersm, base, None
    return ersm, base, ersm > base


def _deletion(r: Results) -> tuple:
    layers = r.deletion.get("model") or {}
    if not layers:
        return None, None, None

    # the gap between keeping the least and the most important tokens: a larger gap = a better ranking
    def gap(ranking: str) -> float | None:
        return _mean([v[ranking]["lerf"].accuracy_auc - v[ranking]["morf"].accuracy_auc
                      for v in layers.values() if ranking in v])
    ersm, mag = gap("energy"), gap("magnitude")
    if ersm is None or mag is None:
        return ersm, mag, None
    return ersm, mag, ersm > mag and ersm > 0


CLAIMS = [
    Claim("a", "accuracy preserved", "ERSM val top-1 >= baseline val top-1 - 2 points", _accuracy),
    Claim("b", "emergent, input-adaptive sparsity",
          "every mask layer: mean density < 0.6 and std of per-image density > 0.05 (no budget given)", _sparsity),
    Claim("c", "robustness to structured occlusion",
          "mean occluded/clean accuracy ratio over patch drop, Cutout, Hide-and-Seek: ERSM > baseline", _occlusion),
    Claim("d", "localization without pixel supervision",
          "pointing game of the energy map (mean over mask layers) > that of the baseline's magnitude map",
          _localization),
    Claim("e", "energy ranking beats magnitude in deletion",
          "LeRF AUC - MoRF AUC (top-1, mean over mask layers): energy > magnitude and > 0", _deletion),
]


def judge_claims(results: Mapping[str, Any] | Results) -> list[dict[str, Any]]:
    """Version 1: one row per claim: claim, criterion, ERSM figure, comparison figure, verdict.

    On a base that failed the gate (``run --force-base``) every verdict carries "(untrained base)" and
    every row ``"untrained_base": true``: the masks of a network that learned nothing test no claim.
    """
    r = Results.from_dict(results)
    rows = []
    untrained = bool(r.base.get("untrained"))
    for c in CLAIMS:
        ersm, other, holds = c.measure(r)
        verdict = "NOT MEASURED" if holds is None else ("HOLDS" if holds else "DOES NOT HOLD")
        if untrained:
            verdict += " (untrained base)"
        rows.append({"claim": f"({c.key}) {c.claim}", "criterion": c.criterion, "ersm": ersm, "comparison": other,
                     "verdict": verdict, **({"untrained_base": True} if untrained else {})})
    return rows
