"""Image folders in timm's layout: ``DATA/train/<class>/*.jpg`` and ``DATA/validation/<class>/*.png``.

Class indices follow the train split's folder names in timm's natural order, so a model trained with
timm's train.py on the same folder keeps its class indices, and the validation split maps through the
same list even when it lacks a class.

Unreadable images: with ``strict`` every file's header is checked when the data set is built and any
decode failure raises a :class:`~ersm_surgery.errors.DataError` naming the file. Without it, a file
that fails to decode is replaced by the next readable image, so an epoch never crashes; the failures
are flagged in a shared-memory tensor, so :attr:`FolderDataset.skipped` counts distinct bad files
found by any DataLoader worker, however many epochs meet them.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils.misc import natural_key

from ..errors import DataError
from ._base import EVAL_SPLITS, TRAIN_SPLITS, ErsmDataset, canonical_split
from .preprocessing import Preprocessing, legacy_preprocessing

__all__ = ["FolderDataset", "find_split_dir", "to_rgb"]

_logger = logging.getLogger(__name__)

# What Pillow raises for a file it cannot identify, a truncated stream or a broken chunk.
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_LAYOUT = "DATA/train/<class>/*.jpg and DATA/validation/<class>/*.jpg"


def find_split_dir(root: Path, split: str) -> Path | None:
    """The folder of ``split`` under ``root``: the name given first, then its timm synonyms, or None."""
    names = TRAIN_SPLITS if canonical_split(split) == "train" else EVAL_SPLITS
    for name in dict.fromkeys([split, *names]):
        if (root / name).is_dir():
            return root / name
    return None


def _class_dirs(split_dir: Path) -> list[str]:
    names = [e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")]
    return sorted(names, key=natural_key)


def _image_files(class_dir: Path, extensions: set[str]) -> list[str]:
    # Symlinked folders are followed (a class linked from another disk is common), but each real folder
    # is entered once: a link back to an ancestor would otherwise be walked until the path length limit.
    found = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions]
    return sorted(found, key=natural_key)


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB; 16- and 32-bit integer greyscale scaled to 8 bits instead of clipped at 255.

    Pillow's ``convert("RGB")`` clips an ``I;16`` / ``I`` image at 255, so a 16-bit PNG becomes white.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        import numpy as np

        a = np.asarray(im).astype(np.float64)
        # I;16 spans 0..65535; an "I" image (Pillow's reading of some 16-bit files) is scaled the same way
        # when it goes past 8 bits, and kept when it already fits in them
        scale = 257.0 if (im.mode.startswith("I;16") or a.max(initial=0) > 255) else 1.0
        im = Image.fromarray(np.clip(np.rint(a / scale), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")


class FolderDataset(ErsmDataset):
    """A split of an image folder in timm's layout, prepared with timm's transforms of a data config.

    Args:
        root: the data directory holding ``train/`` and ``validation/`` (or their timm synonyms).
        split: any train or validation split name.
        img_size: output side when no ``preprocessing`` is given; evaluation then resizes the shorter side
            and centre-crops the whole image (crop fraction 1.0), normalised with ImageNet statistics.
        strict: check every file when built and raise on any unreadable image instead of skipping it.
        train_augment: timm's training transform (random resized crop, flip, colour jitter or auto-augment).
        preprocessing: the model's data config (mean, std, interpolation, crop_pct, input size).
        auto_augment: timm's auto-augment policy of the training transform (with ``train_augment``).

    Raises:
        DataError: the directory, the split, the class folders or the images are missing or unusable.
    """

    has_boxes = False
    mean = IMAGENET_DEFAULT_MEAN
    std = IMAGENET_DEFAULT_STD

    def __init__(self, root: str | os.PathLike, split: str = "train", img_size: int = 64, strict: bool = False,
                 train_augment: bool = False, preprocessing: Preprocessing | None = None,
                 auto_augment: str | None = None) -> None:
        self.root = Path(root).expanduser()
        self.split = canonical_split(split)
        self.img_size = int(img_size)
        self.strict = bool(strict)
        self.train_augment = bool(train_augment)
        if not self.root.is_dir():
            raise DataError(f"data directory '{self.root}' does not exist or is not a directory",
                            f"pass --data-dir pointing to a folder laid out as {_LAYOUT}")
        self.split_dir = find_split_dir(self.root, split)
        if self.split_dir is None:
            names = TRAIN_SPLITS if self.split == "train" else EVAL_SPLITS
            raise DataError(f"no {self.split} split in '{self.root}' (looked for {', '.join(n + '/' for n in names)})",
                            f"create '{self.root / names[0]}/<class>/' with images, or rename the split folder "
                            "to one of those names")
        self.classes, self.samples = self._scan()
        self._set_preprocessing(preprocessing or legacy_preprocessing(self.img_size), auto_augment)
        # shared memory, so flags set in DataLoader workers are seen by the main process
        self._bad = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()
        self._warned = torch.zeros(1, dtype=torch.uint8).share_memory_()
        if self.strict:
            self._verify_all()

    def _scan(self) -> tuple[list[str], list[tuple[str, int]]]:
        split_dir = self.split_dir
        train_dir = find_split_dir(self.root, "train")
        # class indices come from the train split, so every split maps a class name to the same index
        classes = _class_dirs(train_dir) if train_dir is not None else _class_dirs(split_dir)
        here = _class_dirs(split_dir)
        if not here:
            raise DataError(f"no class folders in '{split_dir}'",
                            f"put the images in one sub-folder per class: {_LAYOUT}")
        unknown = [c for c in here if c not in classes]
        if unknown:
            raise DataError(f"class folder(s) in '{split_dir}' missing from the train split: {', '.join(unknown)}",
                            f"add them to '{train_dir}' or remove them from '{split_dir}'")
        extensions = get_img_extensions(as_set=True)
        files = {c: _image_files(split_dir / c, extensions) for c in here}
        if not any(files.values()):
            raise DataError(f"no image files ({', '.join(sorted(extensions))}) under '{split_dir}'",
                            f"add images to the class folders: {_LAYOUT}")
        empty = [str(split_dir / c) for c in here if not files[c]]
        if empty:
            raise DataError(f"empty class folder(s): {', '.join(empty)}",
                            "add images to them or delete them")
        index = {c: i for i, c in enumerate(classes)}
        return classes, [(f, index[c]) for c in here for f in files[c]]

    def _verify_all(self) -> None:
        bad = []
        for path, _ in self.samples:
            try:
                with Image.open(path) as im:
                    im.verify()  # reads the header and checks what the format allows without decoding
            except _READ_ERRORS as exc:
                bad.append(f"{path} ({exc})")
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise DataError(f"{len(bad)} unreadable image(s): {'; '.join(bad[:3])}{more}",
                            "replace or delete these files, or run without --strict-data to skip them")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> int:
        """Number of distinct unreadable files met so far, in this process or any DataLoader worker."""
        return int(self._bad.sum())

    def _load(self, index: int) -> tuple[Image.Image, int]:
        n = len(self.samples)
        for step in range(n):  # substitute the next readable image rather than crash mid-epoch
            j = (index + step) % n
            if self._bad[j]:
                continue
            path, target = self.samples[j]
            try:
                with Image.open(path) as im:
                    return to_rgb(im), target
            except _READ_ERRORS as exc:
                if self.strict:
                    raise DataError(f"cannot read image '{path}' ({exc})",
                                    "replace or delete the file, or run without --strict-data to skip it") from exc
                self._flag(j, path, exc)
        raise DataError(f"no readable image in '{self.split_dir}'", "replace the image files with readable ones")

    def _flag(self, j: int, path: str, exc: Exception) -> None:
        self._bad[j] = 1
        if not self._warned[0]:
            self._warned[0] = 1
            _logger.warning("skipping unreadable image %s (%s); further skips are counted, not logged", path, exc)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self._load(self._check_index(index))
        return self.transform(image), target

    def description(self) -> dict[str, Any]:
        return {
            "kind": "folder",
            "path": str(self.root.resolve()),
            "split": self.split,
            "split_dir": self.split_dir.name,
            "size": len(self),
            "img_size": self.img_size,
            "num_classes": self.num_classes,
            "classes": list(self.classes),
            "train_augment": self.train_augment,
            "auto_augment": self.auto_augment,
            "preprocessing": self.preprocessing.to_dict(),
            "skipped": self.skipped,
        }
