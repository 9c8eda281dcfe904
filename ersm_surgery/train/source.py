"""The edits a run may make to its starting model before training: drop path, the classifier, frozen layers.

Loading the model a run starts from (a folder, a ``.safetensors`` file or a timm name) and stripping its
masks live in :mod:`ersm_surgery.io.source`.
"""
from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ..build import build_model
from ..errors import ArtifactError
from ..io.source import recipe_of
from ..mask_set import masks
from ..recipe import Recipe

__all__ = ["set_drop_path", "reset_head", "freeze_backbone", "frozen_norms", "describe_source"]

_log = logging.getLogger(__name__)


def set_drop_path(model: nn.Module, rate: float) -> nn.Module:
    """``model`` rebuilt with timm's ``drop_path_rate=rate`` and the same weights (recorded in ``recipe.model_kwargs``).

    timm builds its DropPath layers when the model is created (a rate of 0 leaves none), so the rate can only
    reach the model by rebuilding it; the weights are copied over strictly. A model already at ``rate`` is
    returned as it is.

    Raises:
        ArtifactError: the model does not take ``drop_path_rate`` or the weights do not fit the rebuilt model.
    """
    recipe = recipe_of(model)
    if float(recipe.model_kwargs.get("drop_path_rate", 0.0)) == float(rate):
        return model
    data = recipe.to_dict()
    data["model_kwargs"] = {**recipe.model_kwargs, "drop_path_rate": float(rate)}
    rebuilt_recipe = Recipe.from_dict(data)
    try:
        rebuilt = build_model(rebuilt_recipe)
        rebuilt.load_state_dict(model.state_dict(), strict=True)
    except (TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"cannot set drop_path_rate={rate} on {recipe.model} ({first})",
                            "drop --drop-path for this model") from exc
    param = next(model.parameters(), None)
    if param is not None:
        rebuilt = rebuilt.to(param.device)
    return rebuilt.train(model.training)


def reset_head(model: nn.Module, num_classes: int) -> None:
    """``model.reset_classifier(num_classes)`` and the recipe's ``num_classes``, so ``load()`` rebuilds it."""
    if not hasattr(model, "reset_classifier"):
        raise ArtifactError(f"{type(model).__name__} has no reset_classifier()", "use a timm model")
    model.reset_classifier(num_classes)
    recipe_of(model).num_classes = num_classes


def freeze_backbone(model: nn.Module) -> list[str]:
    """Leave only the mask layers and the classifier trainable; return the names of the trainable tensors."""
    trainable = {id(p) for p in masks(model).parameters()}
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module):
        trainable |= {id(p) for p in head.parameters()}
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(id(p) in trainable)
        if id(p) in trainable:
            names.append(name)
    if not names:
        raise ArtifactError("--freeze-backbone leaves nothing to train (no masks and no classifier found)",
                            "drop --freeze-backbone")
    return names


def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """Normalisation layers whose parameters are all frozen: kept in eval mode while training."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                out.append(m)
    return out


def describe_source(model: nn.Module) -> dict[str, Any]:
    recipe = recipe_of(model)
    return {"model": recipe.model, "num_classes": getattr(model, "num_classes", recipe.num_classes),
            "masks": masks(model).names(), "placements": [p.label for p in recipe.placements]}
