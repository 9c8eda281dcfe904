"""The backbone without masks, laid out as a folder timm opens: ``timm.create_model("local-dir:DIR", pretrained=True)``.

The folder holds ``model.safetensors`` (the masked model's state dict without the mask layers: a plain
timm state dict) and ``config.json`` written by timm's own ``save_config_for_hf`` for the base model, so
timm needs no extra argument to rebuild it. Its outputs equal the masked model's with the masks switched
off (:meth:`MaskSet.switched_off`); the export checks this by loading the folder with plain timm.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError
from .artifact import CONFIG, WEIGHTS, state_to_save, versions
from .atomic import atomic_path, atomic_write_text

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..recipe import Recipe

__all__ = ["BACKBONE_DIR", "backbone_state_dict", "plain_model", "write_backbone", "load_with_timm"]

BACKBONE_DIR = "backbone"
# the keys of timm's data config, read back by resolve_model_data_config from the pretrained_cfg
_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict without the mask layers: a plain timm state dict."""
    from ..surgery.placement import is_mask_key

    return {k: v for k, v in state_to_save(model).items() if not is_mask_key(k)}


def plain_model(model: nn.Module, recipe: Recipe) -> nn.Module:
    """The base timm model rebuilt from the recipe, holding the masked model's non-mask weights (eval mode).

    Raises:
        ArtifactError: the weights do not fit the base model.
    """
    from ..models import create_base_model

    plain = create_base_model(recipe.model, num_classes=int(model.num_classes), **recipe.model_kwargs)
    try:
        plain.load_state_dict(backbone_state_dict(model), strict=True)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"the non-mask weights do not fit {recipe.model} ({first})",
                            "re-inject the model with this version") from exc
    return plain.eval()


def write_backbone(model: nn.Module, recipe: Recipe, folder: Path, labels: list[str] | None,
                   data_config: dict[str, Any] | None, source_sha: str | None) -> dict[str, str]:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` for plain timm.

    Args:
        model: the masked model.
        recipe: its recipe (the base model name and arguments).
        folder: the folder to create.
        labels: class names for config.json (``label_names``), when known.
        data_config: the preprocessing the model was used with (timm's data config keys), written to
            config.json's ``pretrained_cfg`` so that ``resolve_model_data_config`` returns it.
        source_sha: the masked weights' sha256, recorded as provenance.

    Returns:
        file name -> what it holds.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    plain = plain_model(model, recipe)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "model": recipe.model, "num_classes": str(int(model.num_classes)), **versions()}
    if source_sha:
        meta["ersm_stripped_from"] = source_sha
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(backbone_state_dict(model), str(tmp), metadata=meta)
    model_config = {"label_names": list(labels)} if labels else None
    with atomic_path(folder / CONFIG) as tmp:
        save_config_for_hf(plain, str(tmp), model_config=model_config)
        if data_config:  # set by hand: save_config_for_hf takes a data_config only from timm 1.0.29 on
            config = json.loads(tmp.read_text(encoding="utf-8"))
            config["pretrained_cfg"].update({k: v for k, v in data_config.items() if k in _DATA_KEYS})
            tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    atomic_write_text(folder / "README.md", _readme(recipe))
    return {f"{BACKBONE_DIR}/{WEIGHTS}": "the backbone's weights without masks (a plain timm state dict)",
            f"{BACKBONE_DIR}/{CONFIG}": "timm's config for it",
            f"{BACKBONE_DIR}/README.md": "how to load it"}


def _readme(recipe: Recipe) -> str:
    return ("---\nlibrary_name: timm\ntags:\n- image-classification\n- timm\n---\n\n"
            f"# {recipe.model} backbone (masks stripped)\n\n"
            "The weights of an ERSM-masked model without its Energy-Mask layers: a plain timm model.\n\n"
            "```python\nimport timm\nmodel = timm.create_model(\"local-dir:<this folder>\", pretrained=True)\n```\n")


def load_with_timm(folder: str | Path) -> nn.Module:
    """``timm.create_model("local-dir:FOLDER", pretrained=True)``: exactly what a timm user types (eval mode)."""
    import timm

    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
