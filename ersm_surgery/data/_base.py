"""What every ersm-surgery data set provides, split names, and the shared transforms.

The evaluation code (localization, occlusion, deletion curves) reads boxes and normalisation from the
data set itself, so every data set, built-in or folder, exposes the same small surface.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError
from .preprocessing import Preprocessing

Box = tuple[float, float, float, float]

try:  # reuse timm's split names so --data-dir behaves as in timm's train.py
    from timm.data.dataset_factory import _EVAL_SYNONYM, _TRAIN_SYNONYM
except ImportError:  # private names: keep working if a timm release moves them
    _TRAIN_SYNONYM = dict(train=None, training=None)
    _EVAL_SYNONYM = dict(val=None, valid=None, validation=None, eval=None, evaluation=None)

TRAIN_SPLITS: tuple[str, ...] = tuple(dict.fromkeys(["train", *_TRAIN_SYNONYM]))
# "validation" first: it is the folder name DESIGN.md documents; "test" last, as it is often held out.
EVAL_SPLITS: tuple[str, ...] = tuple(dict.fromkeys(["validation", *_EVAL_SYNONYM, "validate", "test"]))


def canonical_split(split: str) -> str:
    """Map any accepted split name to ``"train"`` or ``"validation"``.

    Args:
        split: a train name (``train``, ``training``) or a validation name (``validation``, ``val``, ...).

    Returns:
        ``"train"`` or ``"validation"``.

    Raises:
        DataError: the name is neither.
    """
    name = str(split).lower()
    if name in TRAIN_SPLITS:
        return "train"
    if name in EVAL_SPLITS:
        return "validation"
    raise DataError(
        f"unknown split {split!r}",
        f"use one of {', '.join(TRAIN_SPLITS)} (training) or {', '.join(EVAL_SPLITS)} (validation)",
    )


def build_transform(
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool = False,
    resize: bool = True,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image to a normalised float tensor (C, img_size, img_size) with timm's transforms.

    A shortcut for :class:`~ersm_surgery.data.preprocessing.Preprocessing` with bilinear resizing and crop
    fraction 1.0; data sets build their transforms from a full ``Preprocessing`` instead.

    Args:
        img_size: output side in pixels.
        mean: per-channel mean for Normalize.
        std: per-channel std for Normalize.
        augment: timm's training transform (random resized crop, flip, colour jitter); boxes no longer match.
        resize: ignored, kept for compatibility (timm's evaluation transform always resizes the shorter side
            to ``img_size`` and centre-crops, the identity on an image that already is ``img_size`` square).

    Returns:
        A torchvision transform.
    """
    del resize  # a square image of img_size passes timm's resize and crop unchanged
    pre = Preprocessing(input_size=(len(mean), int(img_size), int(img_size)), mean=tuple(mean), std=tuple(std))
    return pre.transform(train=augment)


class ErsmDataset(Dataset):
    """Base class: a map-style data set of ``(image tensor, target)`` with classes, boxes and normalisation.

    Attributes:
        classes: class names; the target is an index into this list.
        has_boxes: whether :meth:`box` returns object boxes.
        mean: per-channel mean used to normalise the images.
        std: per-channel std used to normalise the images.
        preprocessing: the full timm data config the images go through (see ``data.preprocessing``).
        auto_augment: timm's auto-augment policy of the training transform, or None.
        split: ``"train"`` or ``"validation"``.
        img_size: side of the returned square images.
        train_augment: whether random augmentation is applied (boxes then do not match the pixels).
    """

    classes: list[str]
    has_boxes: bool = False
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    split: str
    img_size: int
    train_augment: bool = False
    auto_augment: str | None = None
    preprocessing: Preprocessing | None = None

    def set_preprocessing(self, preprocessing: Preprocessing, auto_augment: str | None = None) -> None:
        """Prepare the images with ``preprocessing`` from now on: timm's training transform (with
        ``auto_augment``) when ``train_augment``, else its evaluation transform.

        Raises:
            DataError: timm rejects ``auto_augment``, or the data set cannot be prepared at that size.
        """
        self._set_preprocessing(preprocessing, auto_augment)

    def _set_preprocessing(self, preprocessing: Preprocessing, auto_augment: str | None = None) -> None:
        self.preprocessing = preprocessing
        self.mean = tuple(preprocessing.mean)
        self.std = tuple(preprocessing.std)
        self.img_size = preprocessing.img_size
        self.auto_augment = auto_augment if self.train_augment else None
        self.transform = preprocessing.transform(train=self.train_augment, auto_augment=self.auto_augment)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:  # pragma: no cover
        raise NotImplementedError

    def box(self, index: int) -> Box | None:
        """Object box ``(x0, y0, x1, y1)`` in [0, 1] in the un-augmented output frame, or None.

        With ``train_augment`` the returned pixels are randomly cropped and flipped, so the box only
        matches the image of the deterministic (evaluation) transform.
        """
        return None

    def description(self) -> dict[str, Any]:  # pragma: no cover
        """What results.json records about the data: kind, path or seed, split, size, classes."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a data set of {n} samples")
        return index % n
