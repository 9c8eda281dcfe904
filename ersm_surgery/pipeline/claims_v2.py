"""Criteria version 2: every claim a paired difference with a 95% interval over seeds and images.

Fixed here and in docs/pipeline.md ("Criteria version 2") before any run of it; kept beside version 1
(:mod:`.claims`), both printed. Each figure is defined in :mod:`ersm_surgery.eval.paired`; how seeds and
images combine is in :mod:`ersm_surgery.eval.stats`. A verdict is HOLDS when the whole interval lies on
the claim's side of its margin, DOES NOT HOLD when it lies wholly on the other side, INCONCLUSIVE when
it straddles the margin, NOT MEASURED when the data do not allow the figure (no boxes, no cue, ...).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..eval.paired import FIGURES, Figure, figure_samples, shift_figure, sparsity_figure, swap_figure
from ..eval.results_schema import PerImage, Results
from ..eval.stats import DEFAULT_RESAMPLES, Margin, bootstrap, verdict

__all__ = ["ClaimV2", "CLAIMS_V2", "judge_claims_v2", "CRITERIA_VERSION"]

CRITERIA_VERSION = 2


@dataclass(frozen=True)
class ClaimV2:
    """A claim, its paired figure and the margin the interval must clear."""

    key: str
    claim: str
    figure: Figure
    margin: Margin
    why: str

    @property
    def criterion(self) -> str:
        return f"{self.figure.description}: 95% interval {self.margin.describe()}"


CLAIMS_V2 = [
    ClaimV2("a", "accuracy preserved", FIGURES["accuracy"], Margin(-0.02),
            "the paper claims no accuracy lost; 2 points is the loss a user would still accept"),
    ClaimV2("b", "emergent, input-adaptive sparsity", sparsity_figure(0.6, 0.05), Margin(0.0),
            "version 1's thresholds (mean density < 0.6, per-image std > 0.05) as one slack that must be > 0"),
    ClaimV2("c", "robustness to structured occlusion", FIGURES["occlusion"], Margin(0.01),
            "one point of occluded/clean ratio: version 1 'held' by 0.0004, which is noise"),
    ClaimV2("d", "localization: importance mass in the box", FIGURES["localization_mass"], Margin(0.05),
            "the pointing game saturates (97-99% for every map); the share of positive mass separates maps"),
    ClaimV2("d'", "localization: pointing game", FIGURES["localization_pointing"], Margin(0.0),
            "kept for continuity with version 1; it saturates, so it is expected to be inconclusive"),
    ClaimV2("e", "energy ranking beats magnitude in deletion", FIGURES["deletion"], Margin(0.02),
            "2 points of top-1 AUC: one image in 50 kept longer under LeRF or lost sooner under MoRF"),
    ClaimV2("f", "less reliance on a spurious background cue", shift_figure(), Margin(0.02),
            "2 points less top-1 lost when the cue stops naming the class (builtin:clutter's spurious cue)"),
    ClaimV2("f'", "predictions kept after a background swap", swap_figure(), Margin(0.02),
            "2 points more predictions kept when the object sits on another class's background (any boxed data)"),
]


def _per_images(results: Sequence[Mapping[str, Any] | Results]) -> list[PerImage | None]:
    return [Results.from_dict(r).per_image for r in results]


def judge_claims_v2(results: Sequence[Mapping[str, Any] | Results], resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> list[dict[str, Any]]:
    """One row per claim from the results of every fine-tuning seed (each evaluated on the same images).

    Args:
        results: one results.json (dict or :class:`Results`) per seed.
        resamples: bootstrap replicates.
        seed: seed of the resampling.

    Returns:
        Rows ``{"claim", "criterion", "margin", "estimate", "low", "high", "seeds", "images", "verdict",
        "why"}``; a base that failed the gate marks every verdict "(untrained base)" as in version 1.
    """
    per_images = _per_images(results)
    untrained = any(bool(Results.from_dict(r).base.get("untrained")) for r in results)
    rows = []
    for c in CLAIMS_V2:
        samples = None if any(p is None for p in per_images) else figure_samples(c.figure, per_images)
        interval = bootstrap(samples, c.figure.statistic, resamples=resamples, seed=seed) if samples else None
        v = verdict(interval, c.margin) + (" (untrained base)" if untrained else "")
        rows.append({"claim": f"({c.key}) {c.claim}", "criterion": c.criterion, "margin": c.margin.value,
                     "estimate": interval.estimate if interval else None, "low": interval.low if interval else None,
                     "high": interval.high if interval else None, "seeds": len(per_images),
                     "images": interval.images if interval else None, "verdict": v, "why": c.why,
                     **({"untrained_base": True} if untrained else {})})
    return rows
