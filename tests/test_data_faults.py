"""Image folders a hostile or unlucky user makes: symlink loops, 16-bit PNGs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ersm_surgery.data.folder import FolderDataset, to_rgb

POSIX = pytest.mark.skipif(os.name == "nt", reason="symlinks need POSIX here")


def _image(path: Path, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (value, 30, 30)).save(path)


def _layout(root: Path) -> None:
    for split in ("train", "validation"):
        for cls in ("a", "b"):
            for i in range(3):
                _image(root / split / cls / f"{i}.png")


@POSIX
def test_symlink_loop_is_not_followed(tmp_path: Path) -> None:
    _layout(tmp_path)
    os.symlink(tmp_path / "train" / "a", tmp_path / "train" / "a" / "loop")  # a folder that contains itself
    os.symlink(tmp_path / "train", tmp_path / "train" / "b" / "up")  # and one back to an ancestor
    ds = FolderDataset(tmp_path, "train", img_size=16)
    # a: its 3 files once; b: its own 3 plus, through "up", a's folder once (b's own is not re-entered)
    assert sum(1 for _, t in ds.samples if t == 0) == 3
    assert len(ds) <= 9


@POSIX
def test_symlinked_class_folder_is_still_read(tmp_path: Path) -> None:
    _layout(tmp_path)
    for i in range(2):
        _image(tmp_path / "elsewhere" / f"{i}.png")
    os.symlink(tmp_path / "elsewhere", tmp_path / "train" / "c")
    ds = FolderDataset(tmp_path, "train", img_size=16)
    assert ds.classes == ["a", "b", "c"] and sum(1 for _, t in ds.samples if t == 2) == 2


def test_16_bit_png_is_scaled_not_saturated(tmp_path: Path) -> None:
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
        rgb = np.asarray(to_rgb(im))
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[..., 0].astype(int) - np.rint(ramp / 257.0)).max() <= 1
    assert rgb.mean() < 200  # Pillow's convert("RGB") makes this ~254 (white)


def test_16_bit_png_through_the_data_set(tmp_path: Path) -> None:
    _layout(tmp_path)
    dark = np.full((16, 16), 1000, dtype=np.uint16)  # about 4/255: dark grey, not white
    for i in range(3):
        Image.fromarray(dark).save(tmp_path / "train" / "a" / f"{i}.png")
    ds = FolderDataset(tmp_path, "train", img_size=16)
    image, _ = ds._load(0)
    assert np.asarray(image).max() <= 5
