"""The library entry points: ``inject`` a timm model; ``build_model`` (from :mod:`.build`) from a recipe."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import nn

from .build import build_model, with_gate
from .errors import PlacementError
from .layers import MaskConfig, auto_hidden
from .models import create_base_model, default_input_size, model_name_of, recorded_name
from .plugins import components_of, provenance, require_components
from .recipe import RECIPE_ATTR, Recipe
from .surgery import apply_placements, resolve_nodes, resolve_stages
from .surgery.placement import Placement
from .surgery.reach import check_masks_reach_output

__all__ = ["inject", "build_model", "default_input_size", "RECIPE_ATTR", "with_gate"]

_log = logging.getLogger(__name__)

# masks may add at most this fraction of the backbone's parameters (DESIGN.md section 2)
PARAM_BUDGET = 0.01


def inject(
    model_or_name: nn.Module | str,
    stages: Sequence[int] | None = None,
    nodes: Sequence[str] | None = None,
    config: MaskConfig | dict[str, Any] | None = None,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    pretrained: bool = False,
    pretrained_path: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Insert Energy-Mask layers into a timm model.

    Args:
        model_or_name: a timm model instance (edited in place) or a name: a timm model name,
            ``hf-hub:ORG/NAME`` or ``local-dir:PATH`` (the recipe then records the registry architecture and
            the source's saved arguments, so that ``load()`` rebuilds it offline; the source goes to
            ``recipe.base_model``).
        stages: timm ``feature_info`` indices; a mask goes after each stage's output.
        nodes: node qualnames (see ``ersm-surgery inspect MODEL --all-nodes``); a mask goes after each.
        config: the layers' settings (a :class:`MaskConfig` or a dict of its fields).
        input_size: (C, H, W) used to check the feature maps; defaults to the model's pretrained_cfg.
        num_classes: classifier size when a name is given.
        pretrained: load the pretrained weights when a name is given (timm's Hub weights, or a
            ``local-dir:`` folder's own).
        pretrained_path: local weights for the base model when a name is given.
        model_kwargs: more ``timm.create_model`` arguments when a name is given; for an instance,
            the arguments it was made with, so that ``load()`` can rebuild it exactly.

    Returns:
        The masked model. It trains in a plain PyTorch loop; ``ersm_surgery.masks(model)`` gives its
        mask layers and regularizer; its recipe is ``model.ersm_recipe``.

    Raises:
        PlacementError, NotSpatialError, UnknownModelError, WeightsError, RecipeError, PluginError
        (``config`` names a head or pairwise term that no installed plugin registers).
    """
    kwargs = dict(model_kwargs or {})
    base_model = None
    if isinstance(model_or_name, str):
        model = create_base_model(model_or_name, pretrained, pretrained_path, num_classes, **kwargs)
        name, kwargs, base_model = recorded_name(model_or_name, model, pretrained, kwargs)
    else:
        model = model_or_name
        name = model_name_of(model)
    if getattr(model, RECIPE_ATTR, None) is not None:
        raise PlacementError("the model already has masks", "inject into the original model, once, with all placements")
    if not stages and not nodes:
        raise PlacementError("no placement given", "name stages (--stages 2,3) or nodes (--nodes layer3.2.act3)")
    config = MaskConfig.from_dict(config) if isinstance(config, dict) else (config or MaskConfig())
    require_components(components_of(config))  # loads plugins: heads, pairwise terms and adapters
    input_size = tuple(input_size) if input_size else default_input_size(model)

    placements: list[Placement] = []
    if stages:
        placements += resolve_stages(model, list(stages), input_size)
    if nodes:
        placements += resolve_nodes(model, list(nodes), input_size)

    budget = int(PARAM_BUDGET * sum(p.numel() for p in model.parameters()) / len(placements))
    for p in placements:
        p.hidden = config.hidden or auto_hidden(p.channels, budget)
    placements = apply_placements(model, placements, config, fallback=True)
    check_masks_reach_output(model, placements, {p.path: model.get_submodule(p.path) for p in placements}, input_size)
    for p in placements:
        _log.info("mask after %s via %s (C=%d, stride %s)", p.label, p.method, p.channels, p.reduction)

    recipe = Recipe(
        model=name,
        model_kwargs=kwargs,
        num_classes=getattr(model, "num_classes", num_classes),
        input_size=input_size,
        placements=placements,
        mask=config,
        plugins=provenance(components_of(config, placements)),
        base_model=base_model,
    )
    setattr(model, RECIPE_ATTR, recipe)
    return model
