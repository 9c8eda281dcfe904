"""ersm-surgery: Energy-Regularized Spatial Masking (arXiv 2604.06893) for any timm model.

    import ersm_surgery
    model = ersm_surgery.inject("resnet50", stages=[2, 3])
    loss = task_loss + gamma * ersm_surgery.masks(model).regularizer()
    ersm_surgery.save(model, "r50-ersm/")
    same = ersm_surgery.load("r50-ersm/")

Names are imported lazily so that ``ersm-surgery --help`` does not pay for torch and timm.
"""
from __future__ import annotations

import importlib
from typing import Any

from .version import __version__

_LAZY = {
    "inject": "api",
    "build_model": "api",
    "masks": "mask_set",
    "MaskSet": "mask_set",
    "save": "io",
    "load": "io",
    "Recipe": "recipe",
    "load_recipe": "recipe",
    "MaskConfig": "layers",
    "EnergyMask": "layers",
    "EnergyLoss": "layers",
    "energy_regularizer": "layers",
    "analyse": "surgery",
    "Placement": "surgery",
    "sparse": "sparse",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
