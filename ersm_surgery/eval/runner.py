"""What the masks bought: the orchestration behind ``ersm-surgery evaluate``.

:func:`evaluate` runs a masked model and, optionally, its baseline (the same base fine-tuned without
masks, or the original timm model) over the same :class:`~.images.EvalImages`, with the same
occlusions and seeds, and returns every number (accuracy, sparsity, compute, occlusion robustness,
deletion curves, localization) plus the small arrays the figures need. Passes, in order:

1. *features*: one forward pass per model, keeping logits and, at every mask layer, the hard mask,
   q, energy and the features' magnitude (accuracy, sparsity, localization come from it);
2. *compute*: FLOPs (dense and a theoretical conditional estimate) and measured latency;
3. *occlusion*: accuracy under patch drop, Cutout and Hide-and-Seek at each information loss;
4. *deletion*: feature-space deletion at each mask layer, through :mod:`.rerun` (the network up to the
   mask runs once per batch; only the rest reruns) and :mod:`.deletion_batched`.

The library never prints; it reports progress through an optional :class:`Progress` object.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from ..errors import DataError
from ..mask_set import masks as mask_set
from ..mask_set import unwrap
from ._passes import Subject, accuracy, compute_pass, deletion_pass, feature_pass, occlusion_pass
from .images import EvalImages
from .paired import paired_intervals
from .per_image import background_tests, boxed_rows, collect_per_image
from .rerun import Anchor, SplitError, make_split
from .results_schema import SCHEMA_NAME, SCHEMA_VERSION, PerImage
from .settings import METRICS, OCCLUDERS, RANKINGS, EvalError, EvalSettings, Progress, SilentProgress
from .side_by_side import run_side_by_side
from .summaries import localization_summary, sparsity_summary
from .tables import short_name

__all__ = ["METRICS", "RANKINGS", "OCCLUDERS", "EvalError", "EvalSettings", "EvalResult", "Progress", "evaluate"]

_log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """``results``: every number, JSON-ready; ``samples``: images and maps for the figures."""

    results: dict[str, Any]
    samples: dict[str, Any] = field(default_factory=dict)


def _check_classes(model: nn.Module, images: EvalImages, what: str) -> None:
    k = getattr(unwrap(model), "num_classes", None)
    if k is not None and int(k) == 0:
        raise DataError(f"{what} is headless (num_classes 0): it outputs features, not class scores",
                        f"fine-tune it with --num-classes {images.num_classes} first, which gives it a classifier")
    if k is not None and int(k) != images.num_classes:
        raise DataError(
            f"{what} has a {k}-class head but the data have {images.num_classes} classes",
            f"evaluate on data with {k} classes (for built-in data pass --num-classes {k})",
        )


def _masked_subject(model: nn.Module, info: dict) -> Subject:
    subject = Subject("model", model, info)
    paths = {id(m): name for name, m in unwrap(model).named_modules()}
    for name, layer in mask_set(model).items():
        subject.masks[name] = layer
        subject.mask_paths[name] = paths[id(layer)]
        subject.anchors.append(Anchor(name, module=paths[id(layer)], capture_input=True))
    return subject


def _baseline_anchors(model: nn.Module, baseline: nn.Module, notes: list[str]) -> list[Anchor]:
    """The baseline's feature maps at the places of the model's masks (same module or node path)."""
    recipe = getattr(unwrap(model), "ersm_recipe", None)
    if recipe is None:
        return []
    modules = dict(unwrap(baseline).named_modules())
    anchors = []
    for p in recipe.placements:
        if p.adapter is not None:
            notes.append(f"baseline features at {p.label} are not a (B, C, H, W) map (adapter {p.adapter}); "
                         "its magnitude ranking is skipped there")
        elif p.output:
            notes.append(f"baseline features at {p.label} are element {p.output} of the module's output; "
                         "its magnitude ranking is skipped there")
        elif p.stage is not None or p.method == "module":
            if p.module in modules:
                anchors.append(Anchor(p.path, module=p.module))
            else:
                notes.append(f"the baseline has no module {p.module!r}; its magnitude ranking is skipped there")
        else:
            anchors.append(Anchor(p.path, node=p.node))
    return anchors


def _prepare_split(subject: Subject, example: torch.Tensor, prefer: str, notes: list[str]) -> None:
    if not subject.anchors:
        return
    try:
        subject.split, reason = make_split(subject.model, subject.anchors, example, prefer)
    except SplitError as exc:
        notes.append(f"{subject.role}: cannot take features at the mask places ({exc}); "
                     "its magnitude maps and deletion curves are skipped")
        subject.anchors = []
        return
    if reason is not None:
        subject.split_note = reason
        notes.append(f"{subject.role}: deletion uses full network reruns with a hook substitution ({reason})")


# -- the whole evaluation ---------------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    images: EvalImages,
    baseline: nn.Module | None = None,
    settings: EvalSettings | None = None,
    progress: Progress | None = None,
    model_info: dict | None = None,
    baseline_info: dict | None = None,
    cued: EvalImages | None = None,
) -> EvalResult:
    """Measure a masked model (and its baseline) on the same images, occlusions and seeds.

    Args:
        model: the masked model (a model without masks is evaluated as a baseline only).
        images: the evaluation images (see :func:`~.images.load_images`).
        baseline: the comparison model, or None.
        settings: what to measure and how.
        progress: progress reporter.
        model_info: provenance recorded in the results (path, name, ...).
        baseline_info: the same for the baseline.
        cued: the same images with the spurious cue that names the class (claim (f), builtin:clutter's
            ``validation_cue="correlated"``), or None.

    Returns:
        An :class:`EvalResult`.

    Raises:
        DataError: a model's class count differs from the data's.
        EvalError: invalid settings.
    """
    settings = settings or EvalSettings()
    problems = settings.problems()
    if problems:
        raise EvalError("invalid evaluation settings: " + "; ".join(problems), "see ersm-surgery evaluate --help")
    if len(images) == 0:
        raise DataError("no images to evaluate", "pass --num-images 1 or more and data with images")
    progress = progress or SilentProgress()
    device = torch.device(settings.device)
    _check_classes(model, images, "the model")
    if baseline is not None:
        _check_classes(baseline, images, "the baseline")
    notes: list[str] = []
    metrics = set(settings.metrics)
    subject = _masked_subject(model, dict(model_info or {}))
    subject.info["masks"] = list(subject.masks)
    subjects = [subject]
    if not subject.masks:
        notes.append("the model has no Energy-Mask layers: evaluated as a baseline only "
                     "(no sparsity, deletion or localization)")
    if baseline is not None:
        base = Subject("baseline", baseline, dict(baseline_info or {}))
        if subject.masks:
            base.anchors = _baseline_anchors(model, baseline, notes)
        subjects.append(base)
    boxed = boxed_rows(images.boxes)
    if "localization" in metrics and boxed is None:
        notes.append("the data carry no object boxes: localization skipped")
    elif "localization" in metrics and len(boxed) < len(images):
        notes.append(f"{len(images) - len(boxed)} of {len(images)} images have no box: they are left out of "
                     "localization and the background swap only")
    grid_max = min(images.images.shape[-2:])
    if settings.occlusion_grid > grid_max:
        raise EvalError(f"--occlusion-grid {settings.occlusion_grid} exceeds the image side {grid_max}",
                        f"use a grid of at most {grid_max}")

    from ..io import versions

    results: dict[str, Any] = {"settings": {**asdict(settings), "metrics": list(settings.metrics)},
                               "data": images.description, "notes": notes, "timing": {},
                               "versions": {k: str(v) for k, v in versions().items()}}
    with contextlib.ExitStack() as stack:
        from ..surgery import training_mode

        for s in subjects:
            s.model.to(device)
            stack.enter_context(training_mode(s.model, False))
        example = images.images[: settings.batch_size].to(device)
        for s in subjects:
            if metrics & {"deletion", "localization"}:  # feature maps at the masks are needed
                _prepare_split(s, example, settings.split, notes)
            if s.split is not None:
                stack.callback(s.split.close)
        results["models"] = {s.role: {**s.info, "masked": bool(s.masks), "anchors": [a.name for a in s.anchors]}
                             for s in subjects}
        passes = {s.role: feature_pass(s, images, settings, device, progress) for s in subjects}
        for role, p in passes.items():
            results["timing"][f"features_{role}"] = p["seconds"]
        _summaries(results, subjects, passes, images, settings, metrics)
        if "flops" in metrics:
            density = {n: v["density"]["mean"] for n, v in results.get("sparsity", {}).get("layers", {}).items()}
            if subject.masks and not density:
                maps = passes["model"]["maps"]
                density = {n: float(maps[n]["hard"].float().mean()) for n in subject.masks}
            results["compute"] = {s.role: compute_pass(s, images, settings, device, density) for s in subjects}
        occluded: dict[str, dict[str, torch.Tensor]] = {}
        if "occlusion" in metrics:
            results["occlusion"] = {"levels": list(settings.occlusion_levels), "grid": settings.occlusion_grid,
                                    "fill": "data mean (0 after normalisation)"}
            jobs = [partial(occlusion_pass, s, images, settings, device, progress) for s in subjects]
            for s, curves in zip(subjects, run_side_by_side(jobs, device), strict=True):
                occluded[s.role] = {k: c.pop("per_image_correct") for k, c in curves.items()}
                results["occlusion"][s.role] = curves
        deleted: dict[str, Any] = {}
        if "deletion" in metrics and subject.masks:
            results["deletion"] = _deletion_results(subjects, passes, images, settings, device, progress)
            deleted = {role: {layer: {rk: {o: c.pop("per_image_auc") for o, c in orders.items()}
                                      for rk, orders in rankings.items()} for layer, rankings in part["layers"].items()}
                       for role, part in results["deletion"].items() if role in ("model", "baseline")}
        per_image = _per_image(passes, images, list(subject.masks) if metrics & {"sparsity", "localization"}
                               else [], occluded, deleted, settings)
        background_tests(results, per_image, subjects, passes, images, cued, settings, device)
        results["per_image"] = per_image.to_dict()
        results["intervals"] = {k: v.to_dict() for k, v in paired_intervals([per_image], seed=settings.seed).items()}
    results = {"schema": {"name": SCHEMA_NAME, "version": SCHEMA_VERSION}, "summary": headline(results), **results}
    return EvalResult(results, _samples(subjects, passes, images, settings))


def headline(results: dict[str, Any]) -> dict[str, float]:
    """The numbers a reader looks at first, flat (``"deletion.layer2.energy.lerf_auc"``), from the results.

    results.json puts them first, so that a model card listing the first numbers shows these.
    """
    from .tables import short_name

    out: dict[str, float] = {}
    acc = results.get("accuracy") or {}
    for role in ("model", "baseline"):
        if role in acc:
            out[f"top1.{role}"] = acc[role]["top1"]
    if "delta" in acc:
        out["top1.delta"] = acc["delta"]["top1"]
    for name, s in ((results.get("sparsity") or {}).get("layers") or {}).items():
        out[f"density.{short_name(name)}.mean"] = s["density"]["mean"]
        out[f"density.{short_name(name)}.std"] = s["density"]["std"]
    compute = (results.get("compute") or {}).get("model")
    if compute:
        out["flops.conditional_over_dense"] = compute["conditional_ratio"]
    for role in ("model", "baseline"):
        for occluder, curve in ((results.get("occlusion") or {}).get(role) or {}).items():
            out[f"occlusion.{occluder}.{role}.occluded_over_clean"] = curve["ratio"]
    deletion = results.get("deletion") or {}
    for role in ("model", "baseline"):
        for name, rankings in ((deletion.get(role) or {}).get("layers") or {}).items():
            for ranking in ("energy", "magnitude"):
                for order, curve in (rankings.get(ranking) or {}).items():
                    out[f"deletion.{short_name(name)}.{ranking}{'' if role == 'model' else '_baseline'}.{order}_auc"] \
                        = curve["accuracy_auc"]
    for name, s in ((results.get("localization") or {}).get("layers") or {}).items():
        out[f"localization.{short_name(name)}.energy.pointing"] = s["energy"]["pointing"]
        if "magnitude" in s:
            out[f"localization.{short_name(name)}.magnitude.pointing"] = s["magnitude"]["pointing"]
        out[f"localization.{short_name(name)}.mask_iou"] = s["mask_iou"]
    return out


# at or above this share of images with an empty mask, evaluate says so: their masks locate nothing
EMPTY_MASK_NOTE_SHARE = 0.05


def _empty_mask_notes(layers: dict, maps: dict, logits: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """One note per mask that keeps no token of at least 5% of the images: how many, their main class, top-1."""
    notes = []
    for name, s in layers.items():
        empty = s["empty"]
        if empty["share"] < EMPTY_MASK_NOTE_SHARE:
            continue
        chosen = maps[name]["hard"].flatten(1).sum(1) == 0
        top1 = 100 * float((logits.argmax(1)[chosen] == labels[chosen]).float().mean())
        top_class, count = max(empty["per_class"].items(), key=lambda kv: kv[1], default=("an unknown class", 0))
        share, main = 100 * empty["share"], 100 * count / empty["images"]
        notes.append(f"{short_name(name)} keeps no token of {empty['images']} images ({share:.0f}%; {main:.0f}% of "
                     f"them {top_class}, top-1 on them {top1:.0f}%): the layers after it see an all-zero map for "
                     "each of them (one output for all, where nothing bypasses the mask), so their class comes from "
                     "the mask's emptiness and their masks locate nothing (docs/layer.md)")
    return notes


def _summaries(results: dict, subjects: list[Subject], passes: dict, images: EvalImages,
               settings: EvalSettings, metrics: set[str]) -> None:
    model = subjects[0]
    if "accuracy" in metrics:
        acc = {s.role: accuracy(passes[s.role]["logits"], images.labels) for s in subjects}
        if "baseline" in acc:
            acc["delta"] = {k: acc["model"][k] - acc["baseline"][k] for k in ("top1", "top5")}
        results["accuracy"] = acc
    maps = passes["model"]["maps"]
    if "sparsity" in metrics and model.masks:
        results["sparsity"] = {"layers": {
            name: sparsity_summary(maps[name]["hard"], maps[name]["q"], images.labels, images.classes,
                                   settings.histogram_bins, settings.seed + i)
            for i, name in enumerate(model.masks)}}
        results["notes"].extend(_empty_mask_notes(results["sparsity"]["layers"], maps, passes["model"]["logits"],
                                                  images.labels))
    rows = boxed_rows(images.boxes)
    if "localization" in metrics and model.masks and rows is not None:
        base_maps = passes["baseline"]["maps"] if "baseline" in passes else {}

        def boxed(m: torch.Tensor | None) -> torch.Tensor | None:
            return None if m is None else m[rows]

        results["localization"] = {"tolerance_tokens": settings.pointing_tolerance, "images": int(rows.numel()),
                                   "images_without_box": len(images) - int(rows.numel()), "layers": {
            name: localization_summary(boxed(maps[name]["energy"]), boxed(maps[name]["hard"]),
                                       boxed(maps[name].get("magnitude")), images.boxes[rows],
                                       boxed(base_maps.get(name, {}).get("magnitude")), settings.pointing_tolerance)
            for name in model.masks}}


def _per_image(passes: dict, images: EvalImages, masks: list[str], occluded: dict, deleted: dict,
               settings: EvalSettings) -> PerImage:
    """The paired per-image figures (their intervals over the images: eval/stats.py)."""
    loc = "localization" in settings.metrics
    per_image = collect_per_image(passes, images.labels, images.boxes if loc else None, masks, occluded, deleted,
                                  settings.occlusion_levels, settings.pointing_tolerance)
    if "accuracy" not in settings.metrics:
        per_image.correct = {}
    return per_image


def _deletion_results(subjects: list[Subject], passes: dict, images: EvalImages, settings: EvalSettings,
                      device: torch.device, progress: Progress) -> dict:
    out: dict[str, Any] = {"fractions": list(settings.deletion_fractions), "fill": settings.deletion_fill,
                           "metric": "top-1 against the true label; probability of the clean prediction"}
    for s in subjects:
        if not s.anchors:
            continue
        rankings = RANKINGS if s.role == "model" else ("magnitude",)
        out[s.role] = deletion_pass(s, images, settings, device, rankings, progress)
    model = out.get("model")
    if model is not None:
        plain, plain_cpu = passes["model"]["seconds"], passes["model"]["cpu_seconds"]
        out["cost"] = {"deletion_seconds": model["seconds"], "plain_pass_seconds": plain,
                       "ratio": model["seconds"] / plain if plain > 0 else float("nan"),
                       "deletion_cpu_seconds": model["cpu_seconds"], "plain_pass_cpu_seconds": plain_cpu,
                       "cpu_ratio": model["cpu_seconds"] / plain_cpu if plain_cpu > 0 else float("nan"),
                       "method": model["method"], **model["reruns"]}
    return out


def _samples(subjects: list[Subject], passes: dict, images: EvalImages, settings: EvalSettings) -> dict:
    n = min(settings.figure_images, len(images))
    model = subjects[0]
    out: dict[str, Any] = {
        "images": [images.display(i) for i in range(n)],
        "labels": images.labels[:n].tolist(),
        "classes": list(images.classes),
        "boxes": [None if b != b else row for row in images.boxes[:n].tolist() for b in [sum(row)]]
        if images.boxes is not None else None,  # NaN rows (no box) as None
        "pred": {s.role: passes[s.role]["logits"][:n].argmax(1).tolist() for s in subjects},
        "layers": {},
    }
    for name in model.masks:
        maps = passes["model"]["maps"][name]
        layer = {k: maps[k][:n] for k in ("hard", "energy", "magnitude") if k in maps}
        base = passes.get("baseline", {}).get("maps", {}).get(name)
        if base is not None:
            layer["baseline_magnitude"] = base["magnitude"][:n]
        out["layers"][name] = layer
    return out
