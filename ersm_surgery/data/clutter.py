"""The built-in offline data set ``builtin:clutter``: shapes on cluttered textures, with boxes.

Every sample is drawn on the fly from ``(seed, split, index)``: nothing is downloaded or shipped, any
index is reproducible, and DataLoader workers need no shared state. Each image holds one class object
(circle, square, triangle, ...; the class is the shape, never the colour) at a random position and scale
over a textured background with distractor strokes and blobs. Its box lets the evaluation measure whether
ERSM masks sit on the object (claim (c) of arXiv 2604.06893).

``spurious_cue`` plants a shortcut: in the train split, with that probability, the background is tinted
with a hue tied to the label; in the validation split the tint is drawn independently of the label, so a
model that learned the tint instead of the shape loses accuracy there. ``validation_cue="correlated"``
gives the cued validation split of claim (f): the same images, tinted as the train split would tint them
(the tint is the only pixel that changes, since every part of a sample has its own random stream).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from . import _render
from ._base import Box, ErsmDataset, canonical_split
from .preprocessing import Preprocessing, legacy_preprocessing

__all__ = ["ClutterDataset", "ClutterSample", "CLUTTER_CLASSES", "CLUTTER_MEAN", "CLUTTER_STD"]

CLUTTER_CLASSES: tuple[str, ...] = _render.SHAPES
# Measured over 2000 train samples at 64 px (seed 0, no cue); see tests/test_data.py for the check.
CLUTTER_MEAN = (0.497, 0.497, 0.493)
CLUTTER_STD = (0.201, 0.211, 0.192)
_DEFAULT_SIZE = {"train": 2000, "validation": 500}
_SCALE = (0.35, 0.6)  # object extent as a fraction of the image side
_TINT_STRENGTH = 0.5
# rendered pictures kept per data set object: drawing one takes ~9x longer than timm's evaluation transform,
# and run's base sees each of its images 4 times (a 64 px picture is 12 KiB: 256 MiB holds ~21,000 of them)
RENDER_CACHE_BYTES = 256 * 2**20
VALIDATION_CUES = ("decorrelated", "correlated")


@dataclass
class ClutterSample:
    """One generated sample before the tensor transform.

    Attributes:
        image: the RGB picture at the render size (``img_size`` unless the crop fraction is below 1).
        target: class index (the shape).
        box: tight object box ``(x0, y0, x1, y1)`` in [0, 1] of ``image`` (before the transform's crop).
        shape: class name.
        cue: class whose tint colours the background, or None when no cue was planted.
    """

    image: Image.Image
    target: int
    box: Box
    shape: str
    cue: int | None


class ClutterDataset(ErsmDataset):
    """Procedural shapes-on-clutter classification with object boxes.

    Args:
        split: any train or validation split name (see :data:`~ersm_surgery.data.TRAIN_SPLITS`).
        img_size: image side in pixels (at least 32).
        seed: base seed; with split and index it fixes every pixel.
        num_classes: how many shapes, 2 to 10, taken in order from :data:`CLUTTER_CLASSES`.
        size: number of samples; default 2000 for train, 500 for validation.
        spurious_cue: probability in [0, 1] of a background tint (label-correlated in train only).
        train_augment: timm's training transform; boxes then only match the un-augmented image.
        preprocessing: the model's data config (default: this data set's own statistics, no crop). Images
            are rendered at the side timm's evaluation transform resizes to (``floor(side / crop_pct)``), so
            that resize is the identity and no pixel is interpolated; with ``crop_pct`` 1.0 (the default for
            generated data, which has no border to crop) the evaluation transform only normalises.
        auto_augment: timm's auto-augment policy of the training transform (with ``train_augment``).
        validation_cue: in a validation split, ``"decorrelated"`` (default: the tint drawn independently of
            the label) or ``"correlated"`` (the tint names the label, as in train).

    Raises:
        DataError: a value is out of range.
    """

    has_boxes = True
    mean = CLUTTER_MEAN
    std = CLUTTER_STD

    def __init__(
        self,
        split: str = "train",
        img_size: int = 64,
        seed: int = 0,
        num_classes: int = 10,
        size: int | None = None,
        spurious_cue: float = 0.0,
        train_augment: bool = False,
        preprocessing: Preprocessing | None = None,
        auto_augment: str | None = None,
        validation_cue: str = "decorrelated",
    ) -> None:
        self.split = canonical_split(split)
        problems = []
        if validation_cue not in VALIDATION_CUES:
            problems.append(f"validation_cue={validation_cue!r} ({' or '.join(VALIDATION_CUES)})")
        if not 2 <= int(num_classes) <= len(CLUTTER_CLASSES):
            problems.append(f"num_classes={num_classes} (2 to {len(CLUTTER_CLASSES)})")
        if size is not None and int(size) < 1:
            problems.append(f"size={size} (at least 1)")
        if not 0.0 <= float(spurious_cue) <= 1.0:
            problems.append(f"spurious_cue={spurious_cue} (0 to 1)")
        if int(img_size) < 32:
            problems.append(f"img_size={img_size} (at least 32)")
        if problems:
            raise DataError(f"invalid builtin:clutter settings: {', '.join(problems)}",
                            "pass values inside the ranges given in brackets")
        self.img_size = int(img_size)
        self.seed = int(seed)
        self.classes = list(CLUTTER_CLASSES[: int(num_classes)])
        self.size = int(size) if size is not None else _DEFAULT_SIZE[self.split]
        self.spurious_cue = float(spurious_cue)
        self.train_augment = bool(train_augment)
        self.validation_cue = validation_cue
        self._split_code = zlib.crc32(self.split.encode())  # stable across runs, unlike hash()
        default = legacy_preprocessing(self.img_size, CLUTTER_MEAN, CLUTTER_STD)
        self._set_preprocessing(preprocessing or default, auto_augment)

    def _set_preprocessing(self, preprocessing: Preprocessing, auto_augment: str | None = None) -> None:
        if preprocessing.img_size < 32:
            raise DataError(f"invalid builtin:clutter settings: input size {preprocessing.img_size} (at least 32)",
                            "pass --img-size 32 or more")
        super()._set_preprocessing(preprocessing, auto_augment)
        # the side timm's eval transform resizes to: rendering there makes that resize the identity
        self.render_size = preprocessing.scale_size

    def __len__(self) -> int:
        return self.size

    def _rngs(self, index: int) -> list[np.random.Generator]:
        # one independent stream per part, so box() can replay the object without drawing the background
        seq = np.random.SeedSequence([self.seed & 0xFFFFFFFF, (self.seed >> 32) & 0xFFFFFFFF, self._split_code, index])
        return [np.random.default_rng(s) for s in seq.spawn(4)]

    def target(self, index: int) -> int:
        """Class of sample ``index``; classes are balanced (index modulo the class count)."""
        return self._check_index(index) % self.num_classes

    def _alpha(self, index: int, obj_rng: np.random.Generator) -> np.ndarray:
        shape = self.classes[self.target(index)]
        size = self.render_size
        return _render.render_alpha(_render.object_polygons(obj_rng, shape, size, _SCALE), size)

    def sample(self, index: int) -> ClutterSample:
        """Generate sample ``index`` with its metadata (box, shape, planted cue)."""
        index = self._check_index(index)
        obj_rng, bg_rng, cue_rng, paint_rng = self._rngs(index)
        target = self.target(index)
        alpha = self._alpha(index, obj_rng)
        img = _render.background(bg_rng, self.render_size)
        cue = None
        if cue_rng.random() < self.spurious_cue:
            # train: the tint names the label; validation: the tint is independent of it
            tied = self.split == "train" or self.validation_cue == "correlated"
            drawn = int(cue_rng.integers(self.num_classes))  # drawn either way: the streams stay aligned
            cue = target if tied else drawn
            img = (1 - _TINT_STRENGTH) * img + _TINT_STRENGTH * _render.cue_tint(cue, self.num_classes)
        img = _render.draw_distractors(bg_rng, img)
        pixels = _render.composite(paint_rng, img, alpha)
        return ClutterSample(Image.fromarray(pixels), target, _render.alpha_box(alpha), self.classes[target], cue)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self._rendered(self._check_index(index))
        return self.transform(image), target

    def _rendered(self, index: int) -> tuple[Image.Image, int]:
        """The picture and label of ``index``, drawn once and kept while the cache has room.

        The transform (random under ``train_augment``) still runs on every access; the picture only depends
        on the settings in the key, so a change of any of them (a new preprocessing changes the render size)
        starts a new cache.
        """
        key = (self.render_size, self.seed, self.num_classes, self.spurious_cue, self.validation_cue, self.split)
        if getattr(self, "_cache_key", None) != key:
            self._cache: dict[int, tuple[Image.Image, int]] = {}
            self._cache_key, self._cache_bytes = key, 0
        hit = self._cache.get(index)
        if hit is None:
            s = self.sample(index)
            hit = (s.image, s.target)
            cost = 3 * s.image.width * s.image.height
            if self._cache_bytes + cost <= RENDER_CACHE_BYTES:
                self._cache[index] = hit
                self._cache_bytes += cost
        return hit

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by spawn get the settings, not the pictures
        state = dict(self.__dict__)
        state.pop("_cache", None)
        state.pop("_cache_key", None)
        return state

    def box(self, index: int) -> Box:
        """Tight object box ``(x0, y0, x1, y1)`` in [0, 1] of the evaluation transform's output (after its crop).

        Exact for the un-augmented image; a part of the object that the crop removes is clipped away.
        """
        index = self._check_index(index)
        rendered = _render.alpha_box(self._alpha(index, self._rngs(index)[0]))
        if self.render_size == self.img_size:
            return rendered
        return self.preprocessing.map_box(rendered, self.render_size, self.render_size)

    def description(self) -> dict[str, Any]:
        return {
            "kind": "builtin:clutter",
            "seed": self.seed,
            "split": self.split,
            "size": len(self),
            "img_size": self.img_size,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "spurious_cue": self.spurious_cue,
            **({"validation_cue": self.validation_cue} if self.split != "train" and self.spurious_cue else {}),
            "train_augment": self.train_augment,
            "auto_augment": self.auto_augment,
            "preprocessing": self.preprocessing.to_dict(),
        }
