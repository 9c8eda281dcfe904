"""Injecting a named model from settings and saving it: what ``ersm-surgery inject`` does, callable from Python.

Settings, lowest priority first: a recipe file (its ``model_kwargs``, ``num_classes``, ``input_size``, ``mask``,
``finetune`` and ``placements``), then the ``num_classes`` argument, then ``key=value`` overrides (the CLI's
``--set``, which wins as it always has). The masks go where ``stages``/``nodes`` say, or, when neither is
given, where the recipe file's placements were (by stage index and node name).

    from ersm_surgery.injection import inject_to_folder
    summary = inject_to_folder("resnet18", "r18-ersm/", stages=[2, 3], overrides=["mask.alpha=0.3"])
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .layers import MaskConfig

__all__ = ["InjectSettings", "resolve_inject_settings", "inject_to_folder", "default_inject_output"]


@dataclass
class InjectSettings:
    """Everything an injection needs besides the weights, resolved and validated.

    Attributes:
        model: the model name as given (timm name, ``hf-hub:`` or ``local-dir:``).
        stages: feature_info indices to mask.
        nodes: node qualnames to mask.
        num_classes: classifier size (None: the model's).
        model_kwargs: more ``timm.create_model`` arguments.
        mask: the mask layers' settings.
        input_size: (C, H, W) to check the model at (None: the model's).
        finetune: fine-tuning settings recorded in the recipe for a later ``finetune``.
    """

    model: str
    stages: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    num_classes: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mask: MaskConfig = field(default_factory=MaskConfig)
    input_size: tuple[int, int, int] | None = None
    finetune: dict[str, Any] = field(default_factory=dict)


def default_inject_output(model: str) -> str:
    """``./<model>-ersm`` (the short name for ``hf-hub:``/``local-dir:`` names)."""
    from .model_source import short_name

    return f"{short_name(model)}-ersm"


def resolve_inject_settings(model: str, *, recipe_file: str | Path | None = None, overrides: Sequence[str] = (),
                            num_classes: int | None = None, stages: Sequence[int] | None = None,
                            nodes: Sequence[str] = ()) -> InjectSettings:
    """The settings of an injection of ``model`` (see the module for the precedence).

    Raises:
        RecipeError: an invalid recipe file or override, or no placement at all; PluginError: the settings
            name a head or pairwise term no installed plugin provides.
    """
    from .plugins import components_of, require_components
    from .recipe import Recipe, apply_overrides, load_recipe

    data = load_recipe(recipe_file).to_dict() if recipe_file else {"model": model}
    data["model"] = model
    if num_classes is not None:
        data["num_classes"] = num_classes
    data = apply_overrides(data, list(overrides))
    recipe = Recipe.from_dict(data)  # validates every setting before the model is built
    require_components(components_of(recipe.mask), recipe.plugins)  # names the plugin a recipe needs
    stage_list, node_list = list(stages or []), list(nodes)
    if stages is None and not node_list and recipe.placements:
        stage_list = [p.stage for p in recipe.placements if p.stage is not None]
        node_list = [p.node for p in recipe.placements if p.node is not None]
    if not stage_list and not node_list:
        raise RecipeError("no placement given", "name stages (--stages 2,3) or nodes (--nodes layer3.2.act3)")
    return InjectSettings(model=model, stages=stage_list, nodes=node_list, num_classes=recipe.num_classes,
                          model_kwargs=dict(recipe.model_kwargs), mask=recipe.mask, input_size=recipe.input_size,
                          finetune=dict(recipe.finetune))


def inject_to_folder(model: str, output: str | Path | None = None, *, recipe_file: str | Path | None = None,
                     overrides: Sequence[str] = (), num_classes: int | None = None,
                     stages: Sequence[int] | None = None, nodes: Sequence[str] = (), pretrained: bool = False,
                     pretrained_path: str | None = None, input_size: tuple[int, int, int] | None = None,
                     force: bool = False) -> dict[str, Any]:
    """Build ``model``, insert masks as the settings say, check the result and save it to ``output``.

    The recipe records the registry architecture and the source's arguments (so ``load()`` rebuilds it
    offline), the base model's source, and the recipe file's ``finetune`` settings.

    Returns:
        :func:`ersm_surgery.injection_summary.describe_injection` of the result, with ``output``.

    Raises:
        OutputExistsError: ``output`` is not empty and ``force`` is off (checked before anything is built);
        the errors of :func:`resolve_inject_settings` and :func:`ersm_surgery.inject`.
    """
    import torch

    from .api import inject
    from .injection_summary import describe_injection
    from .io import check_output_dir, save
    from .models import create_base_model, recorded_name

    out_dir = check_output_dir(output or default_inject_output(model), force)
    settings = resolve_inject_settings(model, recipe_file=recipe_file, overrides=overrides, num_classes=num_classes,
                                       stages=stages, nodes=nodes)
    base = create_base_model(model, pretrained, pretrained_path, settings.num_classes, **settings.model_kwargs)
    original = copy.deepcopy(base)
    name, kwargs, base_model = recorded_name(model, base, pretrained, settings.model_kwargs)
    masked = inject(base, stages=settings.stages, nodes=settings.nodes, config=settings.mask,
                    input_size=input_size or settings.input_size, model_kwargs=kwargs)
    masked.ersm_recipe.model = name
    masked.ersm_recipe.base_model = base_model
    if settings.finetune:
        masked.ersm_recipe.finetune = settings.finetune
    torch.manual_seed(0)  # the check inputs of the summary
    summary = describe_injection(original, masked)
    save(masked, out_dir, force=force)
    summary["output"] = str(out_dir)
    return summary
