"""The schema of results.json, versioned, with typed records: the one place that knows its layout.

Writers (:func:`~.runner.evaluate`, the pipeline) build the plain dict; every reader (tables, figures,
the claims, the model card) goes through :meth:`Results.from_dict`, which reads any version this
package has written and upgrades it. docs/evaluate.md ("results.json") documents every section.

Versions:

- 1 (no ``schema`` key): every aggregate section (``summary``, ``accuracy``, ``sparsity``, ``compute``,
  ``occlusion``, ``deletion``, ``localization``) and provenance (``settings``, ``data``, ``models``,
  ``notes``, ``timing``, ``versions``, ``base``, ``figures``, ``report``).
- 2: adds ``schema: {"name": "ersm-surgery/results", "version": 2}``, ``per_image`` (the paired
  per-image figures the intervals need, see :class:`PerImage`), ``intervals`` (estimate and 95%
  interval of every paired difference, see :mod:`.stats`) and claim (f)'s ``spurious_cue`` and
  ``background_swap`` (:class:`BackgroundTests`). A version-1 file reads with
  ``per_image = None`` and no intervals.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ErsmError
from .stats import Interval

__all__ = ["SCHEMA_NAME", "SCHEMA_VERSION", "ResultsSchemaError", "Accuracy", "OcclusionCurve", "DeletionCurve",
           "MapScores", "LayerLocalization", "LayerSparsity", "PerImage", "BackgroundTests", "Results"]

SCHEMA_NAME = "ersm-surgery/results"
SCHEMA_VERSION = 2


class ResultsSchemaError(ErsmError):
    """A results.json this version cannot read."""


def _f(value: Any) -> float:
    """None (how NaN is written) back to NaN."""
    return float("nan") if value is None else float(value)


@dataclass
class Accuracy:
    """One model's accuracy on the evaluated images."""

    top1: float
    top5: float
    top5_k: int
    images: int
    mean_confidence: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Accuracy:
        return cls(_f(d["top1"]), _f(d.get("top5")), int(d.get("top5_k", 5)), int(d.get("images", 0)),
                   _f(d.get("mean_confidence")))

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "top5_k": self.top5_k, "images": self.images,
                "mean_confidence": self.mean_confidence}


@dataclass
class OcclusionCurve:
    """Top-1 per information-loss level of one occluder; ``ratio`` = mean occluded / clean."""

    levels: list[float]
    accuracy: list[float]
    clean_accuracy: float
    mean_accuracy: float
    ratio: float
    relative: list[float]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OcclusionCurve:
        return cls([float(v) for v in d.get("levels", [])], [_f(v) for v in d.get("accuracy", [])],
                   _f(d.get("clean_accuracy")), _f(d.get("mean_accuracy")), _f(d["ratio"]),
                   [_f(v) for v in d.get("relative", [])])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DeletionCurve:
    """One ranking and order at one layer: top-1 and probability per fraction (``Results.deletion_info``
    holds the fractions), and their AUCs."""

    accuracy: list[float]
    probability: list[float]
    accuracy_auc: float
    probability_auc: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeletionCurve:
        return cls([_f(v) for v in d.get("accuracy", [])], [_f(v) for v in d.get("probability", [])],
                   _f(d["accuracy_auc"]), _f(d.get("probability_auc")))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class MapScores:
    """Localization of one importance map: pointing game, share of positive mass in the box, top-token IoU."""

    pointing: float
    mass_in_box: float
    iou: float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MapScores:
        return cls(_f(d["pointing"]), _f(d.get("mass_in_box")), _f(d.get("iou")))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LayerLocalization:
    """The maps of one mask layer: ``maps`` holds ``energy`` and, when measured, ``magnitude`` (this model)
    and ``baseline_magnitude`` (the baseline at the same place)."""

    maps: dict[str, MapScores]
    mask_iou: float
    box_fraction: float
    pointing_chance: float | None

    KINDS = ("energy", "magnitude", "baseline_magnitude")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerLocalization:
        chance = d.get("pointing_chance")
        return cls({k: MapScores.from_dict(d[k]) for k in cls.KINDS if k in d}, _f(d.get("mask_iou")),
                   _f(d.get("box_fraction")), None if chance is None else float(chance))

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v.to_dict() for k, v in self.maps.items()}, "mask_iou": self.mask_iou,
                "box_fraction": self.box_fraction, "pointing_chance": self.pointing_chance}


@dataclass
class LayerSparsity:
    """Density of one mask layer's hard masks; ``detail`` keeps the histogram, adaptivity, coherence."""

    density_mean: float
    density_std: float
    detail: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerSparsity:
        return cls(_f(d["density"]["mean"]), _f(d["density"]["std"]), dict(d))

    def to_dict(self) -> dict[str, Any]:
        return self.detail


@dataclass
class BackgroundTests:
    """Claim (f)'s aggregates (:mod:`.shift`); either part may be absent.

    Attributes:
        cue: role -> ``{"cued", "decorrelated", "drop"}`` top-1 on the same images with the tint that names
            the class and with an independent one (``spurious_cue`` in the file).
        cue_images: images of the cue test.
        cue_strength: the planted cue's probability.
        swap: role -> share of predictions kept after the background swap (``background_swap``).
        swap_images: composites of the swap test.
        swap_method: how the composites were made.
    """

    cue: dict[str, dict[str, float]] = field(default_factory=dict)
    cue_images: int = 0
    cue_strength: float | None = None
    swap: dict[str, float] = field(default_factory=dict)
    swap_images: int = 0
    swap_method: str = ""

    ROLES = ("model", "baseline")

    @classmethod
    def from_dict(cls, cue: Mapping[str, Any] | None, swap: Mapping[str, Any] | None) -> BackgroundTests | None:
        if not cue and not swap:
            return None
        cue, swap = cue or {}, swap or {}
        return cls({r: {k: _f(cue[r][k]) for k in ("cued", "decorrelated", "drop")} for r in cls.ROLES if r in cue},
                   int(cue.get("images", 0)), cue.get("cue"),
                   {r: _f(swap[r]["kept"]) for r in cls.ROLES if r in swap}, int(swap.get("images", 0)),
                   str(swap.get("method", "")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cue:
            out["spurious_cue"] = {"images": self.cue_images, "cue": self.cue_strength, **self.cue}
        if self.swap:
            out["background_swap"] = {"images": self.swap_images, "method": self.swap_method,
                                      **{r: {"kept": v} for r, v in self.swap.items()}}
        return out


_NONE_TO_NAN = np.vectorize(lambda x: np.nan if x is None else x, otypes=[np.float64])


def _arrays(d: Mapping[str, Any] | None) -> dict[str, Any]:
    """Nested dict of lists -> the same with float arrays at the leaves (None, how NaN is written, is NaN)."""
    return {k: _arrays(v) if isinstance(v, Mapping) else _NONE_TO_NAN(np.array(v, dtype=object))
            for k, v in (d or {}).items()}


def _lists(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _lists(v) if isinstance(v, Mapping) else np.asarray(v).tolist() for k, v in d.items()}


@dataclass
class PerImage:
    """The paired per-image figures behind the intervals (both models saw the same images).

    Attributes:
        correct: role -> (N,) 1.0 where the top-1 prediction is right.
        occlusion: role -> occluder -> (levels, N) 1.0 where right under that occlusion.
        deletion: role -> layer -> ranking -> order -> (N,) the image's top-1 deletion AUC.
        localization: layer -> map kind -> ``{"mass_in_box", "pointing"}`` -> (M,) over the M images
            that have a box (``boxed`` holds their positions among the N).
        density: layer -> (N,) kept fraction of the hard mask.
        boxed: positions (0..N-1) of the images with a box, in order.
        occlusion_levels: the levels of the occlusion rows.
        shift: claim (f), role -> ``{"cued", "decorrelated"}`` -> (N,) 1.0 where right on the same images
            with the background tint that names the class and with an independent one (empty without a cue).
        swap: claim (f), role -> (M,) 1.0 where the prediction on the object pasted onto another class's
            background is the prediction on its own image (:mod:`.shift`).
    """

    correct: dict[str, np.ndarray] = field(default_factory=dict)
    occlusion: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    deletion: dict[str, Any] = field(default_factory=dict)
    localization: dict[str, Any] = field(default_factory=dict)
    density: dict[str, np.ndarray] = field(default_factory=dict)
    boxed: list[int] = field(default_factory=list)
    occlusion_levels: list[float] = field(default_factory=list)
    shift: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    swap: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PerImage:
        return cls(_arrays(d.get("correct")), _arrays(d.get("occlusion")), _arrays(d.get("deletion")),
                   _arrays(d.get("localization")), _arrays(d.get("density")), [int(i) for i in d.get("boxed", [])],
                   [float(v) for v in d.get("occlusion_levels", [])], _arrays(d.get("shift")),
                   _arrays(d.get("swap")))

    def to_dict(self) -> dict[str, Any]:
        return {"correct": _lists(self.correct), "occlusion": _lists(self.occlusion),
                "deletion": _lists(self.deletion), "localization": _lists(self.localization),
                "density": _lists(self.density), "boxed": list(self.boxed),
                "occlusion_levels": list(self.occlusion_levels), "shift": _lists(self.shift),
                "swap": _lists(self.swap)}


# sections read into typed records; every other key is kept as it is in ``other``
_TYPED = ("schema", "summary", "accuracy", "occlusion", "deletion", "localization", "sparsity", "per_image",
          "intervals", "spurious_cue", "background_swap")


@dataclass
class Results:
    """A whole results.json.

    Attributes:
        version: the schema version the file was written with (upgraded on reading).
        summary: the headline numbers, flat.
        accuracy: role (``model``, ``baseline``) -> :class:`Accuracy`.
        occlusion: role -> occluder -> :class:`OcclusionCurve`.
        occlusion_info: the occlusion levels, grid and fill.
        deletion: role -> layer -> ranking -> order -> :class:`DeletionCurve`.
        deletion_info: fractions, fill, metric, cost; under each role its timing and rerun counts.
        localization: layer -> :class:`LayerLocalization`.
        pointing_tolerance: the pointing game's tolerance in tokens.
        sparsity: layer -> :class:`LayerSparsity`.
        per_image: the paired per-image figures (None in a version-1 file).
        intervals: name -> :class:`~.stats.Interval` of the paired differences.
        background: claim (f)'s :class:`BackgroundTests`, or None.
        other: settings, data, models, notes, timing, versions, base, compute, figures, report, ...
    """

    version: int = SCHEMA_VERSION
    summary: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Accuracy] = field(default_factory=dict)
    occlusion: dict[str, dict[str, OcclusionCurve]] = field(default_factory=dict)
    occlusion_info: dict[str, Any] = field(default_factory=dict)
    deletion: dict[str, dict[str, dict[str, dict[str, DeletionCurve]]]] = field(default_factory=dict)
    deletion_info: dict[str, Any] = field(default_factory=dict)
    localization: dict[str, LayerLocalization] = field(default_factory=dict)
    pointing_tolerance: float = 1.0
    sparsity: dict[str, LayerSparsity] = field(default_factory=dict)
    per_image: PerImage | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)
    background: BackgroundTests | None = None
    other: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> dict[str, Any]:
        return self.other.get("base") or {}

    @property
    def data(self) -> dict[str, Any]:
        return self.other.get("data") or {}

    @property
    def notes(self) -> list[str]:
        return self.other.get("notes") or []

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Results) -> Results:
        """Read any version this package wrote (a :class:`Results` passes through).

        Raises:
            ResultsSchemaError: a newer or foreign schema, or a section that does not have its documented shape.
        """
        if isinstance(d, Results):
            return d
        schema = d.get("schema") or {"name": SCHEMA_NAME, "version": 1}
        version = schema.get("version") if isinstance(schema, Mapping) else None
        if not isinstance(schema, Mapping) or schema.get("name") != SCHEMA_NAME or not isinstance(version, int):
            raise ResultsSchemaError(f"results.json has an unknown schema {schema!r}",
                                     f"expected {{'name': '{SCHEMA_NAME}', 'version': 1..{SCHEMA_VERSION}}}")
        if version > SCHEMA_VERSION:
            raise ResultsSchemaError(f"results.json has schema version {version}, newer than this ersm-surgery reads "
                                     f"({SCHEMA_VERSION})", "upgrade ersm-surgery (pip install -U ersm-surgery)")
        try:
            return cls._read(d, version)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ResultsSchemaError(f"results.json (schema version {version}) is malformed: {exc!r}",
                                     "write it again with `ersm-surgery evaluate`") from exc

    @classmethod
    def _read(cls, d: Mapping[str, Any], version: int) -> Results:
        acc = d.get("accuracy") or {}
        occ = dict(d.get("occlusion") or {})
        dl = dict(d.get("deletion") or {})
        loc = d.get("localization") or {}
        roles = ("model", "baseline")
        return cls(
            version=version,
            summary=dict(d.get("summary") or {}),
            accuracy={r: Accuracy.from_dict(acc[r]) for r in roles if r in acc},
            occlusion={r: {k: OcclusionCurve.from_dict(c) for k, c in occ.pop(r).items()} for r in roles if r in occ},
            occlusion_info=occ,
            deletion={r: {layer: {rk: {o: DeletionCurve.from_dict(c) for o, c in orders.items()}
                                  for rk, orders in rankings.items()}
                          for layer, rankings in (dl[r].get("layers") or {}).items()} for r in roles if r in dl},
            deletion_info={k: ({kk: vv for kk, vv in v.items() if kk != "layers"} if k in roles else v)
                           for k, v in dl.items()},
            localization={n: LayerLocalization.from_dict(v) for n, v in (loc.get("layers") or {}).items()},
            pointing_tolerance=float(loc.get("tolerance_tokens", 1.0)),
            sparsity={n: LayerSparsity.from_dict(v)
                      for n, v in ((d.get("sparsity") or {}).get("layers") or {}).items()},
            per_image=PerImage.from_dict(d["per_image"]) if d.get("per_image") else None,
            intervals={k: Interval.from_dict(v) for k, v in (d.get("intervals") or {}).items()},
            background=BackgroundTests.from_dict(d.get("spurious_cue"), d.get("background_swap")),
            other={k: v for k, v in d.items() if k not in _TYPED},
        )

    def to_dict(self) -> dict[str, Any]:
        """The current version's layout (a version-1 file comes out as version 2)."""
        out: dict[str, Any] = {"schema": {"name": SCHEMA_NAME, "version": SCHEMA_VERSION}, "summary": self.summary}
        out.update(self.other)
        if self.accuracy:
            out["accuracy"] = {r: a.to_dict() for r, a in self.accuracy.items()}
            if "model" in self.accuracy and "baseline" in self.accuracy:
                m, b = self.accuracy["model"], self.accuracy["baseline"]
                out["accuracy"]["delta"] = {"top1": m.top1 - b.top1, "top5": m.top5 - b.top5}
        if self.sparsity:
            out["sparsity"] = {"layers": {n: s.to_dict() for n, s in self.sparsity.items()}}
        if self.occlusion:
            out["occlusion"] = {**self.occlusion_info, **{r: {k: c.to_dict() for k, c in curves.items()}
                                                          for r, curves in self.occlusion.items()}}
        if self.deletion:
            out["deletion"] = {**self.deletion_info, **{r: {**self.deletion_info.get(r, {}), "layers": {
                layer: {rk: {o: c.to_dict() for o, c in orders.items()} for rk, orders in rankings.items()}
                for layer, rankings in layers.items()}} for r, layers in self.deletion.items()}}
        if self.localization:
            out["localization"] = {"tolerance_tokens": self.pointing_tolerance,
                                   "layers": {n: v.to_dict() for n, v in self.localization.items()}}
        if self.per_image is not None:
            out["per_image"] = self.per_image.to_dict()
        if self.background is not None:
            out.update(self.background.to_dict())
        if self.intervals:
            out["intervals"] = {k: v.to_dict() for k, v in self.intervals.items()}
        return out
