"""What a run starts from: an injected model folder, a finetune output, or a plain timm model name.

Also the three edits a run may make to it before training: strip the masks (the baseline of
DESIGN.md 2b: same loop, data and budget on the base model with the same non-mask weights), reset the
classifier to the data's class count, and freeze the backbone.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..api import RECIPE_ATTR, default_input_size
from ..errors import ArtifactError, ErsmError
from ..io import load
from ..io.artifact import WEIGHTS, recipe_of
from ..mask_set import masks
from ..models import create_base_model, recorded_name
from ..recipe import Recipe

__all__ = ["load_source", "strip_masks", "set_drop_path", "reset_head", "freeze_backbone", "describe_source",
           "SourceError"]

_log = logging.getLogger(__name__)

_INJECT_HINT = "create one with 'ersm-surgery inject MODEL --stages 2,3 -o DIR', or pass a timm model name"


class SourceError(ErsmError):
    """The DIR argument names neither a saved model nor a timm model."""


def load_source(source: str, pretrained: bool = False, pretrained_path: str | None = None,
                num_classes: int | None = None, model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, str]:
    """The model a run starts from, with its recipe attached.

    Args:
        source: a folder written by ``inject``/``finetune``/``export``, a ``.safetensors`` file written by
            them, ``local-dir:``/``hf-hub:`` naming such an export, or a timm model name, ``hf-hub:ORG/NAME``
            or ``local-dir:PATH`` of a plain timm model (baseline mode: a model without masks).
        pretrained: timm name only: timm's pretrained weights.
        pretrained_path: timm name only: local base weights.
        num_classes: timm name only: classifier size.
        model_kwargs: timm name only: more ``timm.create_model`` arguments.

    Returns:
        The model (train mode) and its kind: ``"folder"`` or ``"timm"``.

    Raises:
        SourceError: nothing usable at ``source``; ArtifactError and the like for a broken folder.
    """
    import timm

    from ..model_source import is_source_name, resolve_model_name

    if is_source_name(source):
        resolved = resolve_model_name(source)
        if resolved.ersm_export:  # an export (local or on the Hub) is a saved masked model
            return load(source).train(), "folder"
        return _timm_source(source, pretrained, pretrained_path, num_classes, model_kwargs), "timm"
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / WEIGHTS).is_file():
            raise SourceError(f"{source!r} holds no injected model (no {WEIGHTS} in it)", _INJECT_HINT)
        return load(path).train(), "folder"
    if path.is_file():
        if path.suffix != ".safetensors":
            raise SourceError(f"{source!r} is not a model folder or a .safetensors file", _INJECT_HINT)
        return load(path).train(), "folder"
    if timm.is_model(source):
        return _timm_source(source, pretrained, pretrained_path, num_classes, model_kwargs), "timm"
    close = difflib.get_close_matches(source, timm.list_models(), n=3, cutoff=0.7)
    hint = f" (did you mean {', '.join(close)}?)" if close and "/" not in source else ""
    raise SourceError(f"{source!r} is neither a folder holding an injected model nor a timm model name{hint}",
                      _INJECT_HINT)


def _timm_source(name: str, pretrained: bool, pretrained_path: str | None, num_classes: int | None,
                 model_kwargs: dict[str, Any] | None) -> nn.Module:
    """A plain timm model (no masks) with a recipe that rebuilds it offline."""
    model = create_base_model(name, pretrained, pretrained_path, num_classes, **dict(model_kwargs or {}))
    arch, kwargs, base_model = recorded_name(name, model, pretrained, dict(model_kwargs or {}))
    recipe = Recipe(model=arch, model_kwargs=kwargs, num_classes=getattr(model, "num_classes", num_classes),
                    input_size=default_input_size(model), placements=[], base_model=base_model)
    setattr(model, RECIPE_ATTR, recipe)
    return model.train()


def strip_masks(model: nn.Module) -> nn.Module:
    """The base model (rebuilt from ``recipe.model``) with the masked model's non-mask weights.

    A model without masks is returned as it is.
    """
    layers = masks(model)
    if not len(layers):
        return model
    recipe = recipe_of(model)
    base = create_base_model(recipe.model, num_classes=recipe.num_classes, **recipe.model_kwargs)
    prefixes = tuple(f"{name}." for name in layers.names())
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    try:
        base.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"the non-mask weights do not fit {recipe.model} ({first})",
                            "the folder was written by another version; re-inject the model") from exc
    stripped = Recipe(model=recipe.model, model_kwargs=dict(recipe.model_kwargs), num_classes=recipe.num_classes,
                      input_size=recipe.input_size, placements=[], mask=dataclasses.replace(recipe.mask),
                      finetune=dict(recipe.finetune), version=recipe.version,
                      data_config=dict(recipe.data_config) if recipe.data_config else None,
                      base_model=recipe.base_model)
    setattr(base, RECIPE_ATTR, stripped)
    return base.train(model.training)


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
    from ..api import build_model

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
