"""Per-image figures of one evaluation, gathered from the passes into a :class:`~.results_schema.PerImage`.

The aggregates of results.json are means over the evaluated images; the paired bootstrap of
:mod:`.paired` needs the values before that mean. Images without a box (an image folder whose box
file leaves some out) are left out of the localization figures only.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .localization import mass_in_box, pointing_game
from .results_schema import PerImage

__all__ = ["per_image_auc", "boxed_rows", "localization_per_image", "collect_per_image", "background_tests"]


def per_image_auc(fractions: Sequence[float], correct: torch.Tensor) -> torch.Tensor:
    """(N,) each image's normalised trapezoid AUC of its (F, N) 0/1 curve; their mean is the curve's AUC.

    One fraction: the value at it (as :func:`~.curves.auc_trapezoid` does).
    """
    y = correct.double()
    x = torch.as_tensor([float(f) for f in fractions], dtype=torch.float64)
    if x.numel() == 1:
        return y[0]
    area = ((y[1:] + y[:-1]) * torch.diff(x)[:, None]).sum(dim=0) / 2
    return area / (x[-1] - x[0])


def boxed_rows(boxes: torch.Tensor | None) -> torch.Tensor | None:
    """Positions of the images that have a box (rows without one are NaN), or None when no image has one."""
    if boxes is None:
        return None
    rows = (~torch.isnan(boxes).any(dim=1)).nonzero()[:, 0]
    return rows if rows.numel() else None


def localization_per_image(maps: dict[str, torch.Tensor | None], boxes: torch.Tensor,
                           tolerance: float) -> dict[str, dict[str, np.ndarray]]:
    """``{kind: {"mass_in_box": (M,), "pointing": (M,)}}`` for each given map (higher = more important)."""
    return {kind: {"mass_in_box": mass_in_box(m, boxes)["per_image"].double().numpy(),
                   "pointing": pointing_game(m, boxes, tolerance)["per_image"].double().numpy()}
            for kind, m in maps.items() if m is not None}


def collect_per_image(passes: dict[str, dict[str, Any]], labels: torch.Tensor, boxes: torch.Tensor | None,
                      mask_names: Sequence[str], occlusion: dict[str, dict[str, torch.Tensor]],
                      deletion: dict[str, Any], levels: Sequence[float], tolerance: float) -> PerImage:
    """The :class:`PerImage` of one evaluation.

    Args:
        passes: role -> the feature pass (``logits``, ``maps``).
        labels: (N,) true classes.
        boxes: (N, 4) normalised boxes (NaN rows: no box), or None.
        mask_names: the model's mask layers.
        occlusion: role -> occluder -> (levels, N) bool, right or not.
        deletion: role -> layer -> ranking -> order -> (N,) AUC.
        levels: the occlusion levels.
        tolerance: pointing-game tolerance in tokens.
    """
    out = PerImage(occlusion_levels=[float(v) for v in levels])
    out.correct = {role: (p["logits"].argmax(dim=1) == labels).double().numpy() for role, p in passes.items()}
    out.occlusion = {role: {k: v.double().numpy() for k, v in curves.items()} for role, curves in occlusion.items()}
    out.deletion = {role: {layer: {rk: {o: np.asarray(v, dtype=np.float64) for o, v in orders.items()}
                                   for rk, orders in rankings.items()} for layer, rankings in layers.items()}
                    for role, layers in deletion.items()}
    maps = passes["model"]["maps"]
    out.density = {n: maps[n]["hard"].float().flatten(1).mean(dim=1).double().numpy() for n in mask_names}
    rows = boxed_rows(boxes)
    if rows is not None and mask_names:
        out.boxed = rows.tolist()
        base_maps = passes.get("baseline", {}).get("maps", {})
        out.localization = {n: localization_per_image({
            "energy": -maps[n]["energy"][rows],
            "magnitude": maps[n]["magnitude"][rows] if "magnitude" in maps[n] else None,
            "baseline_magnitude": base_maps[n]["magnitude"][rows] if "magnitude" in base_maps.get(n, {}) else None,
        }, boxes[rows], tolerance) for n in mask_names}
    return out


def background_tests(results: dict[str, Any], per_image: PerImage, subjects: list, passes: dict[str, dict[str, Any]],
                     images: Any, cued: Any, settings: Any, device: torch.device) -> None:
    """Claim (f)'s two tests (:mod:`.shift`) for every model, into ``results`` and ``per_image``.

    The background swap runs with the localization metric on images with boxes; the spurious-cue test
    when ``cued`` (the same images, the cue naming the class) is given and accuracy is measured.
    """
    from .shift import predictions, swap_backgrounds

    def predict(model: torch.nn.Module) -> Any:
        return lambda x: model(x.to(device))

    if "localization" in settings.metrics and images.boxes is not None:
        swapped, objects, backs = swap_backgrounds(images.images, images.boxes, images.labels, settings.seed)
        if objects.numel():
            section: dict[str, Any] = {"images": int(objects.numel()), "method": "the object's box pasted at its "
                                       "place onto an image of another class whose own box is filled with the mean"}
            for s in subjects:
                kept = predictions(predict(s.model), swapped, settings.batch_size) == \
                    passes[s.role]["logits"].argmax(dim=1)[objects]
                per_image.swap[s.role] = kept.double().numpy()
                section[s.role] = {"kept": float(kept.double().mean())}
            results["background_swap"] = section
    if cued is not None and "accuracy" in settings.metrics:
        if len(cued) != len(images) or not torch.equal(cued.labels, images.labels):
            raise ValueError("the cued images must be the evaluated images with the cue (same indices and labels)")
        section = {"images": len(cued), "cue": cued.description.get("spurious_cue")}
        for s in subjects:
            right = predictions(predict(s.model), cued.images, settings.batch_size) == cued.labels
            decorrelated = per_image.correct[s.role]
            per_image.shift[s.role] = {"cued": right.double().numpy(), "decorrelated": decorrelated}
            section[s.role] = {"cued": float(right.double().mean()), "decorrelated": float(decorrelated.mean()),
                               "drop": float(right.double().mean() - decorrelated.mean())}
        results["spurious_cue"] = section
