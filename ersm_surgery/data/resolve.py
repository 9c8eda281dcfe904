"""Which preprocessing a model gets: the one its recipe recorded, else its own timm pretrained config.

Order, first match wins, then the caller's overrides (``--img-size``, ``--mean``, ``--std``,
``--interpolation``, ``--crop-pct``) on top:

1. ``recipe.data_config``: what the model was fine-tuned with (written by ``finetune``).
2. A recipe of version 1 without it: the preprocessing ersm-surgery used then (ImageNet statistics, or the
   built-in data's own, crop fraction 1.0), so old models keep being evaluated the way they were trained.
3. The model's pretrained config (``timm.data.resolve_model_data_config``) at the size the masks were
   placed at (``recipe.input_size``). For built-in generated data the crop fraction is 1.0 instead of the
   model's: a generated image has no border to crop, and cropping would only discard part of the scene.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .preprocessing import Preprocessing, legacy_preprocessing

__all__ = ["resolve_preprocessing", "base_preprocessing", "recorded_data_config"]

_BUILTIN = "builtin:"


def _legacy_stats(data_spec: str | None) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if data_spec and str(data_spec).startswith(_BUILTIN + "clutter"):
        from .clutter import CLUTTER_MEAN, CLUTTER_STD

        return CLUTTER_MEAN, CLUTTER_STD
    return None, None


def base_preprocessing(model: nn.Module, data_spec: str | None = None) -> tuple[Preprocessing, str]:
    """The preprocessing before any override, and where it came from: ``recipe``, ``legacy`` or ``model``.

    Args:
        model: a model carrying its recipe (``ersm_recipe``), or a plain timm model.
        data_spec: the data it will see (``builtin:clutter`` changes the legacy statistics and the crop).
    """
    from timm.data import resolve_model_data_config

    recipe = getattr(model, "ersm_recipe", None)
    if recipe is not None and recipe.data_config:
        return Preprocessing.from_dict(recipe.data_config), "recipe"
    cfg = resolve_model_data_config(model)
    channels = int(cfg["input_size"][0])
    size = int(recipe.input_size[-1]) if recipe is not None and recipe.input_size else int(cfg["input_size"][-1])
    if recipe is not None and recipe.version < 2:
        mean, std = _legacy_stats(data_spec)
        return legacy_preprocessing(size, mean, std, channels), "legacy"
    pre = Preprocessing.from_dict({**cfg, "input_size": (channels, size, size)})
    if data_spec and str(data_spec).startswith(_BUILTIN):
        pre = pre.with_overrides(crop_pct=1.0)
    return pre, "model"


def resolve_preprocessing(
    model: nn.Module,
    data_spec: str | None = None,
    *,
    img_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
    crop_pct: float | None = None,
) -> Preprocessing:
    """The preprocessing of ``model`` on ``data_spec`` with the given overrides (None keeps a value).

    Raises:
        DataError: an override is invalid (wrong channel count, crop_pct outside (0, 1], ...).
    """
    base, _ = base_preprocessing(model, data_spec)
    return base.with_overrides(img_size=img_size, mean=mean, std=std, interpolation=interpolation, crop_pct=crop_pct)


def recorded_data_config(model: nn.Module) -> dict[str, Any]:
    """The data config to publish with ``model`` (config.json, model card): recorded, legacy or its own."""
    recipe = getattr(model, "ersm_recipe", None)
    data = (recipe.finetune or {}).get("data") if recipe is not None else None
    return base_preprocessing(model, data if isinstance(data, str) else None)[0].to_dict()
