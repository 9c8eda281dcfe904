"""A model with its recipe: load one (a folder, a ``.safetensors`` file or a timm name), read its recipe, strip it.

Every model this package hands out carries its :class:`~ersm_surgery.recipe.Recipe` as the attribute
``RECIPE_ATTR``, so that it can be rebuilt as base model + recipe + weights (DESIGN.md 3). The module-returning
:func:`strip_masks` gives the baseline of DESIGN.md 2b (the base model with the masked model's non-mask
weights); the state dict written to an export's ``backbone/`` is :func:`ersm_surgery.io.backbone.backbone_state_dict`.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, ErsmError

if TYPE_CHECKING:  # the recipe module imports torch (through surgery): io stays light for ``info``
    from torch import nn

    from ..recipe import Recipe

__all__ = ["recipe_of", "load_source", "strip_masks", "SourceError"]

_INJECT_HINT = "create one with 'ersm-surgery inject MODEL --stages 2,3 -o DIR', or pass a timm model name"


def recipe_of(model: nn.Module) -> Recipe:
    """The recipe ``model`` carries (through DDP and ``torch.compile`` wrappers).

    Raises:
        ArtifactError: the model carries none (it was not made by ``inject`` or ``load``).
    """
    from ..mask_set import unwrap
    from ..recipe import RECIPE_ATTR

    recipe = getattr(unwrap(model), RECIPE_ATTR, None)
    if recipe is None:
        raise ArtifactError("the model carries no ersm recipe", "create it with ersm_surgery.inject() or load()")
    return recipe


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
    from .artifact import WEIGHTS, load

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
    from ..models import create_base_model, default_input_size, recorded_name
    from ..recipe import RECIPE_ATTR, Recipe

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
    from ..mask_set import masks
    from ..models import create_base_model
    from ..recipe import RECIPE_ATTR, Recipe

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
