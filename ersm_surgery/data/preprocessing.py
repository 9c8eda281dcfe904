"""Preprocessing as timm defines it: a data config (input size, interpolation, mean, std, crop) and its transforms.

A model's own pretrained config says how its images must be prepared (``timm.data.resolve_model_data_config``);
:class:`Preprocessing` holds one such config and builds timm's training and evaluation transforms from it
(``timm.data.create_transform``), so a data set prepares its images exactly as timm would for that model.
It also maps an object box through the evaluation transform's resize and crop, so boxes keep matching pixels.

``legacy_preprocessing`` is what ersm-surgery did before models' configs were used (recipe version 1):
ImageNet statistics for folders (the built-in data's own statistics for ``builtin:clutter``), bilinear
resize of the shorter side and a centre crop of the whole image (crop fraction 1.0).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from PIL import Image

from ..errors import DataError

__all__ = ["Preprocessing", "legacy_preprocessing", "INTERPOLATIONS", "CROP_MODES", "DATA_CONFIG_KEYS"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """A timm data config: what every image goes through before the model sees it.

    Attributes:
        input_size: (C, H, W) of the model's input; ersm-surgery data are square (H == W).
        interpolation: resize filter (``bilinear``, ``bicubic``, ...).
        mean: per-channel mean for normalisation.
        std: per-channel std for normalisation.
        crop_pct: evaluation resizes the shorter side to ``side / crop_pct`` and crops ``side`` from the centre.
        crop_mode: timm's ``center``, ``squash`` or ``border``.
    """

    input_size: tuple[int, int, int]
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise DataError("invalid preprocessing: " + "; ".join(problems),
                            "fix --img-size/--mean/--std/--interpolation/--crop-pct (or the recipe's data_config)")

    def problems(self) -> list[str]:
        out = []
        size = self.input_size
        if len(size) != 3 or any(not isinstance(v, int) or v < 1 for v in size):
            out.append(f"input_size must be three positive integers C,H,W, got {size!r}")
        channels = size[0] if len(size) == 3 else None
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) != channels:
                out.append(f"{key} needs {channels} value(s), one per input channel, got {list(value)}")
        if any(v <= 0 for v in self.std):
            out.append(f"std must be > 0, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            out.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not 0 < self.crop_pct <= 1:
            out.append(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.crop_mode not in CROP_MODES:
            out.append(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {self.crop_mode!r}")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """From a timm data config (extra keys are ignored; missing ones take timm's defaults)."""
        try:
            size = tuple(int(v) for v in data["input_size"])
            kwargs: dict[str, Any] = {"input_size": size}
            if data.get("interpolation") is not None:
                kwargs["interpolation"] = str(data["interpolation"])
            for key in ("mean", "std"):
                if data.get(key) is not None:
                    kwargs[key] = tuple(float(v) for v in data[key])
            if data.get("crop_pct") is not None:
                kwargs["crop_pct"] = float(data["crop_pct"])
            if data.get("crop_mode") is not None:
                kwargs["crop_mode"] = str(data["crop_mode"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"invalid data config {dict(data)!r} ({exc})",
                            "give input_size, interpolation, mean, std, crop_pct and crop_mode") from exc
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """timm's data-config dict (lists instead of tuples, as JSON and YAML write them)."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @property
    def img_size(self) -> int:
        """Side of the square output."""
        return int(self.input_size[-1])

    @property
    def scale_size(self) -> int:
        """The side timm's evaluation transform resizes to before cropping (``floor(side / crop_pct)``)."""
        return math.floor(self.img_size / self.crop_pct)

    def with_overrides(self, **overrides: Any) -> Preprocessing:
        """A copy with the given (non-None) fields replaced; ``img_size`` sets a square ``input_size``."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        size = changes.pop("img_size", None)
        if size is not None:
            changes["input_size"] = (self.input_size[0], int(size), int(size))
        for key in ("mean", "std"):
            if key in changes:
                changes[key] = tuple(float(v) for v in changes[key])
        return replace(self, **changes)

    def transform(self, train: bool = False, auto_augment: str | None = None) -> Callable[[Image.Image], torch.Tensor]:
        """timm's ``create_transform`` for this config: the random training transform or the evaluation one.

        Args:
            train: timm's training transform (random resized crop, flip, colour jitter or ``auto_augment``);
                otherwise the deterministic evaluation transform (resize, crop, normalise).
            auto_augment: timm's auto-augment policy string (``rand-m9-mstd0.5``, ``augmix-m5``, ...);
                training only.

        Raises:
            DataError: timm rejects the auto-augment policy.
        """
        from timm.data import create_transform

        try:
            return create_transform(
                input_size=tuple(self.input_size), is_training=train, interpolation=self.interpolation,
                mean=tuple(self.mean), std=tuple(self.std), crop_pct=self.crop_pct, crop_mode=self.crop_mode,
                auto_augment=auto_augment if train else None,
            )
        except (AssertionError, KeyError, ValueError, IndexError) as exc:
            raise DataError(f"timm cannot build the transform for auto-augment {auto_augment!r} ({exc})",
                            "use one of timm's policies, e.g. rand-m9-mstd0.5, augmix-m5, original") from exc

    def map_box(self, box: Box, width: int, height: int) -> Box:
        """Move a box in [0, 1] of a ``width`` x ``height`` source image into the evaluation transform's output.

        The same resize and crop that :meth:`transform` applies (timm's ``transforms_imagenet_eval``), so the
        box still covers the object; parts cropped away are clipped.
        """
        side = self.img_size
        scale = self.scale_size
        if self.crop_mode == "squash":
            new_w = new_h = scale
        else:
            ratio = scale / (max(width, height) if self.crop_mode == "border" else min(width, height))
            new_w, new_h = width * ratio, height * ratio
            if self.crop_mode == "center":  # torchvision's Resize: the shorter side exactly, the longer truncated
                new_w, new_h = (scale, int(scale * height / width)) if width <= height else \
                    (int(scale * width / height), scale)
        left = int(round((new_w - side) / 2.0))
        top = int(round((new_h - side) / 2.0))
        x0, y0, x1, y1 = box

        def clip(v: float) -> float:
            return float(min(1.0, max(0.0, v)))

        return (clip((float(x0) * new_w - left) / side), clip((y0 * new_h - top) / side),
                clip((x1 * new_w - left) / side), clip((y1 * new_h - top) / side))


def legacy_preprocessing(img_size: int, mean: tuple[float, ...] | None = None,
                         std: tuple[float, ...] | None = None, channels: int = 3) -> Preprocessing:
    """The preprocessing of recipe version 1: bilinear, crop fraction 1.0, ImageNet (or the given) statistics."""
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return Preprocessing(input_size=(channels, int(img_size), int(img_size)), interpolation="bilinear",
                         mean=tuple(mean or IMAGENET_DEFAULT_MEAN), std=tuple(std or IMAGENET_DEFAULT_STD),
                         crop_pct=1.0, crop_mode="center")
