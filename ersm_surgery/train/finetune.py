"""One fine-tuning run from its inputs: the source model, the settings, the output folder, an optional resume.

This is what ``ersm-surgery finetune`` calls, and what a script calls to run the same thing:

    from ersm_surgery.train import FinetuneConfig, finetune
    result = finetune("r18-ersm/", FinetuneConfig(data="builtin:clutter", epochs=3), "r18-ft/")
    ersm_surgery.load("r18-ft/")          # the best model
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..data.resolve import resolve_preprocessing
from ..errors import DataError, RecipeError
from ..io import check_output_dir, read_metadata
from ..io.artifact import RECIPE_KEY, WEIGHTS
from ..io.source import SourceError, load_source, recipe_of, strip_masks
from ..layers import MaskConfig
from ..recipe import Recipe
from .checkpoint import load_train_state
from .config import FinetuneConfig
from .data import apply_preprocessing, build_datasets
from .distributed import DistInfo, init_distributed, shutdown
from .errors import TrainingError
from .loop import Callbacks, FitResult, fit, seed_everything
from .source import reset_head, set_drop_path

__all__ = ["finetune", "RunInputs", "set_mask_settings", "MUTABLE_MASK_KEYS", "recorded_settings"]

_log = logging.getLogger(__name__)

# mask.* settings a run may change on an injected model; the others shape the layers' weights
MUTABLE_MASK_KEYS = ("alpha", "beta", "tau", "steps", "border", "train_mode", "eval_mode", "price")


@dataclass
class RunInputs:
    """The parts of a run that are not fine-tuning settings.

    Attributes:
        source: an injected model folder, a finetune output folder, or a timm model name.
        output: the run folder.
        mask: ``mask.*`` settings to change on the model (alpha, beta, tau, steps, train_mode, eval_mode).
        resume: a run folder (or its last/ or train_state.pt) to continue exactly.
        stop_after: stop once this many epochs are done.
        force: write into a non-empty output folder.
        pretrained: timm model name only: timm's pretrained weights.
        pretrained_path: timm model name only: local base weights.
        device: ``cuda``/``cpu`` (default: CUDA when available).
        args: recorded in args.yaml.
        log_tensorboard: write TensorBoard event files of every epoch into this folder.
    """

    source: str
    output: str | Path | None
    mask: dict[str, Any] | None = None
    resume: str | Path | None = None
    stop_after: int | None = None
    force: bool = False
    pretrained: bool = False
    pretrained_path: str | None = None
    device: str | None = None
    args: dict[str, Any] | None = None
    log_tensorboard: str | Path | None = None


def set_mask_settings(model: nn.Module, settings: dict[str, Any]) -> None:
    """Change ``mask.*`` settings on every mask layer and in the recipe.

    Raises:
        RecipeError: an invalid value, or a setting that only injection can change.
    """
    if not settings:
        return
    fixed = sorted(set(settings) - set(MUTABLE_MASK_KEYS))
    if fixed:
        raise RecipeError(f"mask.{', mask.'.join(fixed)} cannot change after injection",
                          f"re-inject the model with them, or change only {', '.join(MUTABLE_MASK_KEYS)}")
    recipe = recipe_of(model)
    try:
        recipe.mask = MaskConfig.from_dict({**recipe.mask.to_dict(), **settings})
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"invalid mask setting: {exc}", "see docs/recipe.md") from exc
    from ..mask_set import masks

    for layer in masks(model):
        for key in settings:
            setattr(layer.config, key, getattr(recipe.mask, key))


def recorded_settings(resume: str | Path) -> dict[str, Any]:
    """The ``finetune`` settings a run was saved with (the starting point of ``--resume``)."""
    state, _ = load_train_state(resume)
    # a run saved before the loss brake, the masks' freeze or their pull existed resumes without them, as it started
    return {"loss_brake": None, "mask_freeze": None, "mask_updates": None, "mask_pull": None, **dict(state["config"])}


def _peek_source(source: str) -> Recipe:
    """The recipe of the source, read from a header only (a timm name gets one without placements).

    Raises:
        SourceError: nothing usable at ``source`` (checked before the data is read).
    """
    path = Path(source).expanduser()
    if not path.exists():
        import timm

        if not timm.is_model(source):
            load_source(source)  # raises the one-line error, with close names
        size = timm.models.get_pretrained_cfg_value(source, "input_size")
        return Recipe(model=source, input_size=tuple(size) if size else None)
    if path.is_dir() and not (path / WEIGHTS).is_file():
        load_source(source)  # raises "holds no injected model"
    meta = read_metadata(path)
    if RECIPE_KEY not in meta:
        raise SourceError(f"{source!r} holds a safetensors file without an ersm recipe",
                          "inject masks first with 'ersm-surgery inject', or pass a timm model name")
    return Recipe.from_json(meta[RECIPE_KEY])


def _identity(recipe: Recipe, no_masks: bool) -> tuple[str, tuple]:
    placements = () if no_masks else tuple((p.module, p.stage, p.node) for p in recipe.placements)
    return recipe.model, placements


def _resumed_model(inputs: RunInputs, config: FinetuneConfig, ours: Recipe) -> tuple[nn.Module, dict[str, Any]]:
    from ..io import load

    state, folder = load_train_state(inputs.resume)
    run_recipe = Recipe.from_json(state["recipe"])
    if _identity(ours, config.no_masks) != _identity(run_recipe, False):
        where = ", ".join(p.label for p in run_recipe.placements) or "no masks"
        raise TrainingError(f"--resume {str(inputs.resume)!r} is a run of {run_recipe.model} ({where}), not of "
                            f"{inputs.source!r}",
                            "pass the DIR that run started from, or drop --resume to start a new run")
    return load(folder).train(), state


def _check_classes(model: nn.Module, config: FinetuneConfig, num_data: int) -> None:
    head = getattr(model, "num_classes", None)
    if config.num_classes is not None and config.num_classes != num_data:
        raise DataError(f"--num-classes {config.num_classes} but the data has {num_data} classes",
                        f"pass --num-classes {num_data}, or data with {config.num_classes} classes")
    if config.num_classes is not None and head != config.num_classes:
        reset_head(model, config.num_classes)
    elif head != num_data:
        raise DataError(f"the data has {num_data} classes but the model's classifier has {head}",
                        f"pass --num-classes {num_data} to reset the classifier")


def finetune(inputs: RunInputs, config: FinetuneConfig, callbacks: Callbacks | None = None) -> FitResult:
    """Prepare the model and the data, then :func:`~.loop.fit`; joins the process group under torchrun.

    Args:
        inputs: source, output, resume and the other run inputs.
        config: the fine-tuning settings.
        callbacks: progress hooks (primary process only).

    Returns:
        The :class:`~.loop.FitResult`; its model is the one after the last epoch.

    Raises:
        ErsmError subclasses, each a one-line problem and fix: DataError (data), SourceError (DIR),
        ArtifactError (broken folder or resume), TrainingError, DivergedError, OutputExistsError.
    """
    info = init_distributed(inputs.device)
    started = info.distributed
    try:
        return _finetune(inputs, config, info, callbacks)
    finally:
        shutdown(info, started)


def _finetune(inputs: RunInputs, config: FinetuneConfig, info: DistInfo, callbacks) -> FitResult:
    ours = _peek_source(inputs.source)
    is_folder = Path(inputs.source).expanduser().exists()
    if is_folder and (inputs.pretrained or inputs.pretrained_path):
        raise TrainingError("--pretrained/--pretrained-path apply to a timm model name, not to a saved model",
                            "drop them: the folder holds its weights")
    resume = None
    model = None
    if inputs.resume is not None:
        model, resume = _resumed_model(inputs, config, ours)
        ours = recipe_of(model)
    out = Path(inputs.output) if inputs.output is not None else None
    if out is not None:  # on every rank, so that a refusal does not leave the others waiting for rank 0
        check_output_dir(out, inputs.force or (inputs.resume is not None and _same_run(out, inputs.resume)))
    img_size = config.img_size or (ours.input_size[-1] if ours.input_size else 224)
    train_set, val_set = build_datasets(config, img_size)
    seed_everything(config.seed, 0)  # the same fresh head on every rank
    if model is None:
        fresh = None if is_folder else (config.num_classes or train_set.num_classes)
        model, _ = load_source(inputs.source, inputs.pretrained, inputs.pretrained_path, fresh)
        if config.no_masks:
            model = strip_masks(model)
        settings = dict(inputs.mask or {})
        if ("gate" in settings or "gate_pool" in settings) and not config.no_masks:  # the graph changes: rebuilt
            from ..build import with_gate

            model = with_gate(model, settings.pop("gate", None), settings.pop("gate_pool", None))
        set_mask_settings(model, settings)
        _check_classes(model, config, train_set.num_classes)
    else:
        set_mask_settings(model, {k: v for k, v in (inputs.mask or {}).items() if k != "tau"})
        if getattr(model, "num_classes", None) != train_set.num_classes:
            raise DataError(f"the data has {train_set.num_classes} classes but the resumed model's classifier has "
                            f"{model.num_classes}", "resume with the data the run was started with")
    if config.drop_path is not None:
        model = set_drop_path(model, config.drop_path)
    preprocessing = resolve_preprocessing(model, config.data, img_size=config.img_size, mean=config.mean,
                                          std=config.std, interpolation=config.interpolation, crop_pct=config.crop_pct)
    if not apply_preprocessing((train_set, val_set), preprocessing, config):
        _log.warning("the data set %s prepares its own images: the model's preprocessing is not applied", config.data)
    _log.info("preprocessing: %s", preprocessing.to_dict())
    return fit(model, train_set, val_set, config, out, info=info, resume=resume, stop_after=inputs.stop_after,
               callbacks=callbacks, run_args=inputs.args, tensorboard=inputs.log_tensorboard)


def _same_run(out: Path, resume: str | Path) -> bool:
    resume = Path(resume).resolve()
    out = out.resolve()
    return resume == out or out in resume.parents
