"""The paper's five claims, each with a criterion fixed before any run, judged from evaluation results.

The criteria are written here, in code, and printed with the verdicts; they are never tuned to pass.
A claim that does not hold is a result to report.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "CLAIMS", "judge_claims"]


@dataclass(frozen=True)
class Claim:
    """A claim, its criterion in words, and how to read the figures from results.json."""

    key: str
    claim: str
    criterion: str
    measure: Callable[[dict[str, Any]], tuple[float | None, float | None, bool | None]]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _accuracy(r: dict) -> tuple:
    acc = r.get("accuracy") or {}
    ersm, base = (acc.get("model") or {}).get("top1"), (acc.get("baseline") or {}).get("top1")
    if ersm is None or base is None:
        return ersm, base, None
    return ersm, base, ersm >= base - 0.02


def _sparsity(r: dict) -> tuple:
    layers = (r.get("sparsity") or {}).get("layers") or {}
    if not layers:
        return None, None, None
    means = [v["density"]["mean"] for v in layers.values()]
    stds = [v["density"]["std"] for v in layers.values()]
    holds = all(m < 0.6 for m in means) and all(s > 0.05 for s in stds)
    return max(means), min(stds), holds


def _occlusion(r: dict) -> tuple:
    occ = r.get("occlusion") or {}
    ersm = _mean([c["ratio"] for c in (occ.get("model") or {}).values() if isinstance(c, dict) and "ratio" in c])
    base = _mean([c["ratio"] for c in (occ.get("baseline") or {}).values() if isinstance(c, dict) and "ratio" in c])
    if ersm is None or base is None:
        return ersm, base, None
    return ersm, base, ersm > base


def _localization(r: dict) -> tuple:
    layers = (r.get("localization") or {}).get("layers") or {}
    ersm = _mean([v["energy"]["pointing"] for v in layers.values()])
    # the baseline's own magnitude map at the same module when there is a baseline, else this model's
    key = "baseline_magnitude" if any("baseline_magnitude" in v for v in layers.values()) else "magnitude"
    base = _mean([v[key]["pointing"] for v in layers.values() if key in v])
    if ersm is None or base is None:
        return ersm, base, None
    return ersm, base, ersm > base


def _deletion(r: dict) -> tuple:
    layers = ((r.get("deletion") or {}).get("model") or {}).get("layers") or {}
    if not layers:
        return None, None, None
    # the gap between keeping the least and the most important tokens: a larger gap = a better ranking
    def gap(ranking: str) -> float | None:
        return _mean([v[ranking]["lerf"]["accuracy_auc"] - v[ranking]["morf"]["accuracy_auc"]
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


def judge_claims(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per claim: claim, criterion, ERSM figure, comparison figure, verdict.

    On a base that failed the gate (``run --force-base``) every verdict carries "(untrained base)" and
    every row ``"untrained_base": true``: the masks of a network that learned nothing test no claim.
    """
    rows = []
    untrained = bool((results.get("base") or {}).get("untrained"))
    for c in CLAIMS:
        ersm, other, holds = c.measure(results)
        verdict = "NOT MEASURED" if holds is None else ("HOLDS" if holds else "DOES NOT HOLD")
        if untrained:
            verdict += " (untrained base)"
        rows.append({"claim": f"({c.key}) {c.claim}", "criterion": c.criterion, "ersm": ersm, "comparison": other,
                     "verdict": verdict, **({"untrained_base": True} if untrained else {})})
    return rows
