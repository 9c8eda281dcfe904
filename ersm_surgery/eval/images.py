"""The evaluation images: one fixed, seeded subset of a data set, held in memory for every metric.

Every metric and both models (the masked model and its baseline) see exactly these tensors, so the
comparison never depends on data order or augmentation. Memory is ``N x C x H x W x 4`` bytes
(256 images at 224 px: about 150 MB).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DataError

__all__ = ["EvalImages", "load_images"]


@dataclass
class EvalImages:
    """Normalised images with their labels, boxes and provenance.

    Attributes:
        images: (N, C, H, W) normalised float tensor on the CPU.
        labels: (N,) long tensor.
        boxes: (N, 4) normalised (x0, y0, x1, y1), or None when the data carry no boxes; NaN rows for the
            images without one.
        indices: the data set indices, in order.
        classes: class names.
        mean: per-channel normalisation mean (to show the images).
        std: per-channel normalisation std.
        description: what results.json records about the data.
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor | None
    indices: list[int]
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def batches(self, batch_size: int):
        """``(start, images, labels)`` in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield start, self.images[start : start + batch_size], self.labels[start : start + batch_size]

    def display(self, index: int) -> torch.Tensor:
        """Image ``index`` as (H, W, C) floats in [0, 1] (un-normalised)."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (self.images[index] * std + mean).clamp(0, 1).permute(1, 2, 0)


def load_images(
    dataset,
    num_images: int,
    seed: int = 0,
    batch_size: int = 32,
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> EvalImages:
    """Draw ``num_images`` indices with ``seed`` (all when there are fewer) and load them once.

    The subset is a seeded random choice, kept in index order, so class-sorted folders are sampled
    across classes and the same seed gives the same images.

    Args:
        dataset: an :class:`~ersm_surgery.data.ErsmDataset`.
        num_images: how many images (at most the data set's size).
        seed: seed of the subset.
        batch_size: images per loader batch.
        workers: loader worker processes.
        progress: called with the number of images loaded after each batch.

    Raises:
        DataError: the split is empty or ``num_images`` < 1.
    """
    from torch.utils.data import DataLoader, Subset

    size = len(dataset)
    if size == 0:
        split = getattr(dataset, "split", "the")
        raise DataError(f"the {split} split holds no images", "point --data-dir at a folder with images in it")
    if num_images < 1:
        raise DataError(f"--num-images {num_images} is not a positive count", "pass --num-images 1 or more")
    if num_images >= size:
        indices = list(range(size))
    else:
        generator = torch.Generator().manual_seed(int(seed))
        indices = sorted(torch.randperm(size, generator=generator)[:num_images].tolist())
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=workers)
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(torch.as_tensor(y))
        if progress is not None:
            progress(int(x.shape[0]))
    boxes = None
    if getattr(dataset, "has_boxes", False) and not getattr(dataset, "train_augment", False):
        # an image without a box (a folder's box file may leave some out) is a NaN row
        boxes = torch.tensor([list(b) if (b := dataset.box(i)) is not None else [float("nan")] * 4
                              for i in indices], dtype=torch.float32)
    description = dict(dataset.description()) if hasattr(dataset, "description") else {}
    description["evaluated_images"] = len(indices)
    description["subset_seed"] = int(seed)
    return EvalImages(
        images=torch.cat(images),
        labels=torch.cat(labels).long(),
        boxes=boxes,
        indices=indices,
        classes=list(dataset.classes),
        mean=tuple(float(v) for v in dataset.mean),
        std=tuple(float(v) for v in dataset.std),
        description=description,
    )
