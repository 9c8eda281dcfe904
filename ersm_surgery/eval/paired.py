"""The paired figures behind the claims, computed from per-image arrays so that they can be bootstrapped.

Each figure is defined once here, as (a) how to build one seed's :data:`~.stats.Sample` from a
:class:`~.results_schema.PerImage` and (b) the statistic of such a sample. ``evaluate`` reports their
intervals over its images (one seed); ``reproduce`` combines its seeds (pipeline/claims_v2.py adds the
margins). On all images each statistic equals the aggregate that results.json reports (top-1 delta,
occluded/clean ratio, mean AUC, mean localization score), so the estimate and the tables agree.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .results_schema import PerImage
from .stats import DEFAULT_RESAMPLES, Interval, Sample, bootstrap

__all__ = ["Figure", "FIGURES", "figure_samples", "paired_intervals", "sparsity_figure", "shift_figure",
           "swap_figure"]


@dataclass(frozen=True)
class Figure:
    """A paired figure: ``build`` makes one seed's sample (None when that seed lacks the data)."""

    key: str
    description: str
    build: Callable[[PerImage], Sample | None]
    statistic: Callable[[Sample], float]


def _mean_diff(sample: Sample) -> float:
    g = sample["images"]
    return float(np.mean(g["model"]) - np.mean(g["baseline"]))


def _accuracy(p: PerImage) -> Sample | None:
    if "model" not in p.correct or "baseline" not in p.correct:
        return None
    return {"images": {"model": p.correct["model"], "baseline": p.correct["baseline"]}}


def _occluded(p: PerImage, role: str) -> np.ndarray | None:
    """(N,) per image: mean over occluders and the levels above 0 of being right."""
    curves = p.occlusion.get(role)
    levels = np.asarray(p.occlusion_levels)
    if not curves or not (levels > 0).any():
        return None
    return np.mean([np.asarray(rows)[levels > 0] for rows in curves.values()], axis=(0, 1))


def _occlusion(p: PerImage) -> Sample | None:
    parts = {}
    for role in ("model", "baseline"):
        occluded = _occluded(p, role)
        if occluded is None or role not in p.correct:
            return None
        parts[f"{role}_clean"], parts[f"{role}_occluded"] = p.correct[role], occluded
    return {"images": parts}


def _ratio_diff(sample: Sample) -> float:
    g = sample["images"]
    ratios = []
    for role in ("model", "baseline"):
        clean = float(np.mean(g[f"{role}_clean"]))
        ratios.append(float(np.mean(g[f"{role}_occluded"])) / clean if clean > 0 else np.nan)
    return ratios[0] - ratios[1]


def _localization(score: str) -> Callable[[PerImage], Sample | None]:
    """ERSM's energy map against the baseline's magnitude map at the same place (this model's magnitude when
    there is no baseline), per image the mean over mask layers."""
    def build(p: PerImage) -> Sample | None:
        layers = p.localization
        if not layers:
            return None
        other = "baseline_magnitude" if all("baseline_magnitude" in v for v in layers.values()) else "magnitude"
        if not all(other in v and "energy" in v for v in layers.values()):
            return None
        energy = np.mean([v["energy"][score] for v in layers.values()], axis=0)
        comparison = np.mean([v[other][score] for v in layers.values()], axis=0)
        if energy.size == 0:
            return None
        return {"images": {"model": energy, "baseline": comparison}}
    return build


def _deletion(p: PerImage) -> Sample | None:
    """Per image, mean over layers: (LeRF - MoRF AUC of the energy ranking) and of this model's magnitude."""
    layers = (p.deletion.get("model") or {})
    gaps: dict[str, list[np.ndarray]] = {"energy": [], "magnitude": []}
    for rankings in layers.values():
        for ranking, gap in gaps.items():
            orders = rankings.get(ranking) or {}
            if "lerf" not in orders or "morf" not in orders:
                return None
            gap.append(np.asarray(orders["lerf"]) - np.asarray(orders["morf"]))
    if not gaps["energy"]:
        return None
    return {"images": {"model": np.mean(gaps["energy"], axis=0), "baseline": np.mean(gaps["magnitude"], axis=0)}}


FIGURES: dict[str, Figure] = {f.key: f for f in (
    Figure("accuracy", "top-1 ERSM - baseline", _accuracy, _mean_diff),
    Figure("occlusion", "occluded/clean top-1 ratio (mean over occluders and levels > 0), ERSM - baseline",
           _occlusion, _ratio_diff),
    Figure("localization_mass", "share of positive importance mass inside the box: ERSM energy - baseline "
           "magnitude (mean over mask layers)", _localization("mass_in_box"), _mean_diff),
    Figure("localization_pointing", "pointing game: ERSM energy - baseline magnitude (mean over mask layers)",
           _localization("pointing"), _mean_diff),
    Figure("deletion", "LeRF - MoRF top-1 AUC: energy ranking - magnitude ranking (mean over mask layers)",
           _deletion, _mean_diff),
)}


def sparsity_figure(max_density: float, min_std: float) -> Figure:
    """Slack of claim (b): min over layers of min(max_density - mean density, std of density - min_std);
    above 0 every layer is sparse and input-adaptive."""
    def build(p: PerImage) -> Sample | None:
        return {"images": dict(p.density)} if p.density else None

    def statistic(sample: Sample) -> float:
        return float(min(min(max_density - np.mean(d), np.std(d) - min_std) for d in sample["images"].values()))

    return Figure("sparsity", f"min over layers of min({max_density:g} - mean density, std - {min_std:g})",
                  build, statistic)


def _shift(p: PerImage) -> Sample | None:
    if not all(role in p.shift for role in ("model", "baseline")):
        return None
    return {"images": {f"{role}_{split}": p.shift[role][split] for role in ("model", "baseline")
                       for split in ("cued", "decorrelated")}}


def _drop_diff(sample: Sample) -> float:
    g = sample["images"]

    def drop(role: str) -> float:
        return float(np.mean(g[f"{role}_cued"]) - np.mean(g[f"{role}_decorrelated"]))
    return drop("baseline") - drop("model")


def shift_figure() -> Figure:
    """Claim (f): the baseline's top-1 drop from cued to decorrelated validation minus ERSM's (> 0: ERSM
    relies less on the spurious cue); the same images both ways, only the tint differs."""
    return Figure("shift", "top-1 drop cued -> decorrelated: baseline - ERSM", _shift, _drop_diff)


def _swap(p: PerImage) -> Sample | None:
    if not all(role in p.swap for role in ("model", "baseline")) or p.swap["model"].size == 0:
        return None
    return {"images": {"model": p.swap["model"], "baseline": p.swap["baseline"]}}


def swap_figure() -> Figure:
    """Claim (f) on any data with boxes: share of predictions kept when the object is pasted onto another
    class's background, ERSM - baseline."""
    return Figure("swap", "predictions kept after a background swap: ERSM - baseline", _swap, _mean_diff)


def figure_samples(figure: Figure, per_images: Sequence[PerImage]) -> list[Sample] | None:
    """One sample per seed, or None when any seed lacks the figure's data."""
    samples = [figure.build(p) for p in per_images]
    return None if not samples or any(s is None for s in samples) else samples


def paired_intervals(per_images: Sequence[PerImage], seed: int = 0,
                     resamples: int = DEFAULT_RESAMPLES) -> dict[str, Interval]:
    """Every paired figure the data allow, with its 95% interval (see :mod:`.stats`)."""
    out = {}
    for key, figure in {**FIGURES, "shift": shift_figure(), "swap": swap_figure()}.items():
        samples = figure_samples(figure, per_images)
        if samples is not None:
            out[key] = bootstrap(samples, figure.statistic, resamples=resamples, seed=seed)
    return out
