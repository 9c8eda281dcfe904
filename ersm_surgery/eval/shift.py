"""Reliance on the background (claim (f), the paper's motivation): a spurious cue and a background swap.

Two tests, both paired (the same images for ERSM and the baseline):

- **spurious cue** (builtin:clutter): the validation images once with the background tint that names
  the class in training (cued) and once with a tint drawn independently of it (decorrelated, the usual
  validation split); the figure is each model's top-1 drop from cued to decorrelated.
- **background swap** (any data with boxes, after Xiao et al. 2021, "Noise or Signal: The Role of Image
  Backgrounds"): the object's box is pasted, at its own place, onto the image of another class whose own
  object box was filled with the data mean (0 after normalisation); the figure is the share of images
  whose prediction stays the one on the original image.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .images import EvalImages, load_images

__all__ = ["swap_backgrounds", "predictions", "load_cued_images"]


def _pixels(box: torch.Tensor, h: int, w: int) -> tuple[int, int, int, int]:
    """A normalised box as pixel slices, widened to whole pixels (never empty)."""
    x0, y0 = int(torch.floor(box[0] * w)), int(torch.floor(box[1] * h))
    x1, y1 = max(x0 + 1, int(torch.ceil(box[2] * w))), max(y0 + 1, int(torch.ceil(box[3] * h)))
    return max(0, x0), max(0, y0), min(w, x1), min(h, y1)


def swap_backgrounds(images: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every boxed image's object on the background of a boxed image of another class.

    Args:
        images: (N, C, H, W) normalised images.
        boxes: (N, 4) normalised boxes; NaN rows have none and take part in nothing.
        labels: (N,) classes.
        seed: seed of the choice of backgrounds.

    Returns:
        ``(swapped (M, C, H, W), objects (M,), backgrounds (M,))``: the composites and, for each, the index
        of the image that gave the object and of the one that gave the background. Images whose class is
        the only one with boxes are left out (M can be 0).
    """
    h, w = images.shape[-2:]
    boxed = (~torch.isnan(boxes).any(dim=1)).nonzero()[:, 0]
    generator = torch.Generator().manual_seed(int(seed))
    out, objects, backgrounds = [], [], []
    for i in boxed.tolist():
        others = boxed[labels[boxed] != labels[i]]
        if others.numel() == 0:
            continue
        j = int(others[torch.randint(others.numel(), (1,), generator=generator)])
        canvas = images[j].clone()
        bx0, by0, bx1, by1 = _pixels(boxes[j], h, w)
        canvas[:, by0:by1, bx0:bx1] = 0.0  # the background's own object removed (the data mean)
        x0, y0, x1, y1 = _pixels(boxes[i], h, w)
        canvas[:, y0:y1, x0:x1] = images[i][:, y0:y1, x0:x1]
        out.append(canvas)
        objects.append(i)
        backgrounds.append(j)
    if not out:
        empty = torch.zeros(0, dtype=torch.long)
        return images[:0], empty, empty
    return torch.stack(out), torch.tensor(objects), torch.tensor(backgrounds)


def predictions(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) top-1 class of ``predict`` (images -> logits) over ``images``, ``batch_size`` at a time."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits = predict(images[start : start + batch_size])
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            out.append(logits.argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def load_cued_images(spec: str, split: str, preprocessing: Any, seed: int, num_images: int,
                     options: dict[str, Any]) -> EvalImages | None:
    """The evaluated images of built-in data with a spurious cue, now with the cue naming the class (the same
    indices, shapes and backgrounds; only the tint differs), or None when the data carry no cue."""
    from ..data import create_dataset

    if spec != "builtin:clutter" or not float(options.get("spurious_cue") or 0.0) > 0:
        return None
    data = create_dataset(spec, split=split, seed=seed, preprocessing=preprocessing, validation_cue="correlated",
                          **{k: v for k, v in options.items() if k != "validation_cue"})
    return load_images(data, num_images, seed)
