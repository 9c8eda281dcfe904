"""A saved masked model: a folder with model.safetensors, recipe.yaml and config.json.

The weights file carries the recipe and the versions in its header metadata, so the file alone is
enough to rebuild the model: base model + recipe + weights, loaded strictly, nothing unpickled.
"""
from __future__ import annotations

import json
import logging


from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ArtifactError, OutputExistsError
from ..recipe import Recipe
from ..version import __version__
from .atomic import atomic_path, atomic_write_text

__all__ = ["save", "load", "read_metadata", "recipe_of", "check_output_dir", "versions", "WEIGHTS", "RECIPE", "CONFIG"]

_log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
RECIPE = "recipe.yaml"
CONFIG = "config.json"
RECIPE_KEY = "ersm_recipe"


def versions() -> dict[str, str]:
    import timm

    return {"ersm_surgery": __version__, "torch": torch.__version__, "timm": timm.__version__}


def recipe_of(model: nn.Module) -> Recipe:
    from ..api import RECIPE_ATTR
    from ..mask_set import unwrap

    recipe = getattr(unwrap(model), RECIPE_ATTR, None)
    if recipe is None:
        raise ArtifactError("the model carries no ersm recipe", "create it with ersm_surgery.inject() or load()")
    return recipe


def check_output_dir(path: str | Path, force: bool) -> Path:
    """Refuse an existing non-empty folder unless ``force``; refuse a path that is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {str(path)!r} is a file", "choose a folder path with -o")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(f"output folder {str(path)!r} exists and is not empty", "pass --force or choose another -o")
    return path


def timm_config(model: nn.Module, recipe: Recipe) -> dict[str, Any]:
    """config.json in timm's hub layout, plus an "ersm" block with the recipe."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg = {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None)))}
    return {
        "architecture": recipe.model,
        "num_classes": getattr(model, "num_classes", recipe.num_classes),
        "num_features": getattr(model, "num_features", None),
        "global_pool": getattr(model, "global_pool", None) if isinstance(getattr(model, "global_pool", None), str) else None,
        "model_args": dict(recipe.model_kwargs),
        "pretrained_cfg": cfg,
        "ersm": {**recipe.to_dict(), "versions": versions()},
    }


def _write_weights(model: nn.Module, path: Path, recipe: Recipe, extra: dict[str, str] | None) -> None:
    from safetensors.torch import save_model

    metadata = {"format": "pt", RECIPE_KEY: recipe.to_json(), "model": recipe.model, **versions(), **(extra or {})}
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)


def save(model: nn.Module, path: str | Path, force: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write a masked model to a folder: model.safetensors, recipe.yaml, config.json.

    Each file is written under a temporary name and renamed into place, so an interrupted save never
    leaves a half-written file, and an existing folder's other files are kept.

    Raises:
        OutputExistsError: the folder exists and is not empty (without ``force``).
        ArtifactError: the model carries no recipe.
    """
    from ..mask_set import unwrap

    model = unwrap(model)
    recipe = recipe_of(model)
    out = check_output_dir(path, force)
    out.mkdir(parents=True, exist_ok=True)
    _write_weights(model, out / WEIGHTS, recipe, metadata)
    atomic_write_text(out / RECIPE, recipe.to_yaml())
    atomic_write_text(out / CONFIG, json.dumps(timm_config(model, recipe), indent=2, default=str) + "\n")
    return out


def _weights_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"no {WEIGHTS} at {str(path)!r}", "pass a folder written by inject/finetune/export or a .safetensors file")
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file (or a folder's model.safetensors), tensor data untouched."""
    from safetensors import safe_open

    weights = _weights_path(path)
    try:
        with safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises SafetensorError / OSError for bad files
        raise ArtifactError(f"{str(weights)!r} is not a readable safetensors file ({exc})",
                            "re-create it with ersm-surgery inject or export") from exc


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a masked model from a folder or a .safetensors file: base model + recipe + weights.

    No network is needed and nothing is unpickled; the weights are loaded strictly.

    Returns:
        The model in eval mode, with its recipe as ``model.ersm_recipe``.

    Raises:
        ArtifactError: missing file, no recipe in the metadata, or weights that do not fit.
    """
    from safetensors.torch import load_model

    from ..api import build_model

    weights = _weights_path(path)
    meta = read_metadata(weights)
    if RECIPE_KEY not in meta:
        raise ArtifactError(f"{str(weights)!r} has no ersm recipe in its metadata (a plain safetensors file?)",
                            "load it with timm, or inject masks first")
    recipe = Recipe.from_json(meta[RECIPE_KEY])
    model = build_model(recipe)
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ArtifactError(f"weights in {str(weights)!r} do not fit the recipe ({' '.join(first[:3])[:300]})",
                            "the file was edited or comes from another model; re-export it") from exc
    model.to(device)
    return model.eval()


