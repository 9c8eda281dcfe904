"""Rebuilding a masked model from its recipe (DESIGN.md 3: base model + recipe + weights, never unpickled).

Below both ``api`` (which injects) and ``io`` (which loads): ``load()`` rebuilds the architecture here
and only then reads the weights.
"""
from __future__ import annotations

from torch import nn

from .models import create_base_model
from .plugins import components_of, require_components
from .recipe import RECIPE_ATTR, Recipe
from .surgery import apply_placements
from .surgery.placement import Placement

__all__ = ["build_model", "with_gate"]


def build_model(recipe: Recipe) -> nn.Module:
    """Rebuild a masked model (without weights) from its recipe: base model + recorded placements.

    Raises:
        PluginError: the recipe uses a component of a plugin that is missing, failed or turned off.
    """
    require_components(components_of(recipe.mask, recipe.placements), recipe.plugins)
    model = create_base_model(recipe.model, num_classes=recipe.num_classes, **recipe.model_kwargs)
    placements = [Placement.from_dict(p.to_dict()) for p in recipe.placements]
    apply_placements(model, placements, recipe.mask, fallback=False)
    setattr(model, RECIPE_ATTR, recipe)
    return model


def with_gate(model: nn.Module, gate: str | None = None, gate_pool: str | None = None) -> nn.Module:
    """The same masked model (weights, mode) with ``mask.gate`` and/or ``mask.gate_pool`` changed, rebuilt
    from its recipe (None keeps the recipe's value).

    The stage gates hold no weights, so the state dict carries over unchanged.

    Raises:
        RecipeError: an invalid setting; PlacementError: the model's stages cannot be gated.
    """
    recipe = getattr(model, RECIPE_ATTR)
    wanted = {"gate": gate or recipe.mask.gate, "gate_pool": gate_pool or recipe.mask.gate_pool}
    if all(getattr(recipe.mask, key) == value for key, value in wanted.items()) or not recipe.placements:
        return model
    data = recipe.to_dict()
    data["mask"] = {**data["mask"], **wanted}
    new = build_model(Recipe.from_dict(data))
    new.load_state_dict(model.state_dict())
    getattr(new, RECIPE_ATTR).finetune = dict(recipe.finetune)
    return new.train(model.training)
