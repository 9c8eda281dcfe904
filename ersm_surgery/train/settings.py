"""The settings of one fine-tuning run, resolved from everywhere they can come from (``ersm-surgery finetune``).

Precedence, lowest first (a later source wins key by key):

1. the defaults of :class:`~ersm_surgery.train.FinetuneConfig`;
2. the source's recorded ``recipe.finetune`` (read from the header of DIR's weights; unknown keys ignored);
3. the run given to ``resume`` (its saved ``finetune`` settings; unknown keys ignored);
4. the ``finetune:`` section of a recipe file;
5. ``key=value`` overrides (``finetune.lr=1e-4``, ``mask.alpha=0.3``; the ``--set`` of the CLI);
6. explicit settings (the flags typed on the command line).

Data options merge one level deeper: explicit ``data_options`` are added to those of 2, 3 and 5. Mask
settings (``alpha``, ``beta``, ...) come from the recipe file's ``mask:`` section, then the overrides, then
the explicit ones; they are checked when the run applies them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, RecipeError
from ..model_source import is_source_name, short_name
from ..recipe import apply_overrides, load_yaml
from .config import FinetuneConfig

__all__ = ["resolve_finetune_settings", "read_settings_file", "recorded_finetune", "default_run_output"]


def resolve_finetune_settings(source: str, *, resume: str | None = None, recipe_file: str | Path | None = None,
                              overrides: list[str] | tuple[str, ...] = (), explicit: dict[str, Any] | None = None,
                              mask: dict[str, Any] | None = None) -> tuple[FinetuneConfig, dict[str, Any]]:
    """The validated settings of a run on ``source`` and its mask settings (see the module for the precedence).

    Args:
        source: what the run starts from (a folder, a ``.safetensors`` file or a timm name).
        resume: a run folder, its ``last/`` or a ``train_state.pt`` to continue.
        recipe_file: a YAML/JSON file with ``finetune:`` and ``mask:`` sections.
        overrides: ``key=value`` settings (``finetune.*``, ``mask.*``, ``num_classes``).
        explicit: :class:`FinetuneConfig` keys set explicitly (``data`` included); they win over everything.
        mask: mask settings set explicitly (``alpha``, ``beta``, ``tau``, ``steps``, ``train_mode``).

    Returns:
        The :class:`FinetuneConfig` and the mask settings to apply to the model.

    Raises:
        RecipeError: an unreadable recipe file, an unknown key or an invalid value (all named in one line), or
            an override that tries to change the model or its input size.
    """
    from .finetune import recorded_settings

    recorded = recorded_finetune(source)
    resumed = recorded_settings(resume) if resume else {}
    file_data = read_settings_file(recipe_file) if recipe_file else {}
    data = apply_overrides({"model": source, "mask": file_data.get("mask") or {},
                            "finetune": file_data.get("finetune") or {}}, list(overrides))
    if data.get("model") != source or data.get("input_size") is not None:
        raise RecipeError("model and input_size cannot change in finetune", "inject a new model instead")
    set_ft = dict(data["finetune"])
    if data.get("num_classes") is not None:
        set_ft["num_classes"] = data["num_classes"]
    flags = dict(explicit or {})
    if "data_options" in flags:
        base = {**recorded.get("data_options", {}), **resumed.get("data_options", {}), **set_ft.get("data_options", {})}
        flags["data_options"] = {**base, **flags["data_options"]}
    config = FinetuneConfig.from_sources(recorded, resumed, set_ft, flags, strict=(False, False, True, True))
    return config, {**data["mask"], **(mask or {})}


def recorded_finetune(source: str) -> dict[str, Any]:
    """``source``'s recorded ``recipe.finetune`` (empty for a timm name or an unreadable folder)."""
    from ..io import read_metadata
    from ..io.artifact import RECIPE_KEY

    if is_source_name(source) and source.lower().startswith("local-dir:"):
        source = source.partition(":")[2]
    if not Path(source).expanduser().exists():
        return {}
    try:
        meta = read_metadata(source)
        return dict((json.loads(meta.get(RECIPE_KEY, "{}")) or {}).get("finetune") or {})
    except (ArtifactError, ValueError):
        return {}  # loading the source reports the problem with the folder


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """A recipe file's mapping, its ``finetune:`` and ``mask:`` sections checked to be mappings.

    Raises:
        RecipeError: missing file, invalid YAML/JSON, or a section that is not a mapping.
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist", "check the path given to --recipe")
    try:
        data = load_yaml(file.read_text(encoding="utf-8"))  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise RecipeError(f"{str(path)!r} is not valid YAML/JSON ({str(exc).splitlines()[0]})", "fix the file") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{str(path)!r} is not a mapping", "give it finetune: and mask: sections")
    for key in ("finetune", "mask"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise RecipeError(f"{key}: in {str(path)!r} is not a mapping", f"write {key}: as key: value lines")
    return data


def default_run_output(source: str, resume: str | None = None) -> str:
    """Where a run writes by default: the resumed run's folder, else ``DIR-ft`` beside DIR (``./<name>-ft``)."""
    if resume:
        path = Path(resume)
        if path.is_file():
            path = path.parent
        return str(path.parent if path.name == "last" else path)
    return f"{short_name(source)}-ft" if is_source_name(source) else f"{source.rstrip('/')}-ft"
