"""Evaluating what is named on the command line: a model folder (or timm name), its baseline and a data set.

What ``ersm-surgery evaluate`` does between parsing its flags and rendering, callable from Python::

    from ersm_surgery.eval.sources import evaluate_sources
    from ersm_surgery.eval import write_evaluation
    result = evaluate_sources("r18-ft/", "builtin:clutter", baseline="r18-base-ft/")
    write_evaluation(result, "r18-eval/")

The images go through the model's recorded preprocessing (or its own pretrained config), and the baseline
sees the very same tensors. A timm name without weights is evaluated with random weights, and the results
say so in a note.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DataError, ErsmError
from .settings import EvalSettings, Progress, SilentProgress

if TYPE_CHECKING:
    from torch import nn

    from .runner import EvalResult

__all__ = ["evaluate_sources", "load_for_evaluation", "default_eval_output"]


def default_eval_output(source: str) -> Path:
    """``<DIR>-eval`` beside DIR (where ``export`` looks for results.json); ``./<name>-eval`` for a timm name."""
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()
        name = path.stem if path.is_file() else path.name
        return path.parent / f"{name}-eval"
    from ..model_source import short_name

    return Path(f"{short_name(source)}-eval")


def load_for_evaluation(spec: str, weights: str | None = None, num_classes: int | None = None,
                        what: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model named ``spec`` in eval mode, and the provenance the results record.

    Args:
        spec: a folder, a ``.safetensors`` file or a timm name (see :func:`ersm_surgery.io.load_source`).
        weights: timm name only: local base weights (else random ones, recorded as such).
        num_classes: timm name only: classifier size.
        what: the name of the argument, put before the problem of an error (``"--baseline"``).
    """
    from ..io.source import load_source

    try:
        model, kind = load_source(spec, pretrained_path=weights, num_classes=num_classes)
    except ErsmError as exc:
        if what is None:
            raise
        raise type(exc)(f"{what}: {exc.problem}", exc.fix) from exc
    info = {"source": spec, "kind": kind, "name": getattr(getattr(model, "ersm_recipe", None), "model", spec),
            "num_classes": getattr(model, "num_classes", None)}
    if kind == "timm":
        info["weights"] = weights or "random initialisation"
    return model.eval(), info


def evaluate_sources(source: str, data: str, *, baseline: str | None = None, baseline_weights: str | None = None,
                     split: str = "validation", num_images: int = 256, workers: int = 0,
                     num_classes: int | None = None, settings: EvalSettings | None = None,
                     progress: Progress | None = None, boxes: str | None = None,
                     spurious_cue: float | None = None, **preprocessing: Any) -> EvalResult:
    """Load ``source`` (and ``baseline``), prepare ``num_images`` images of ``data`` and evaluate both on them.

    Args:
        source: the masked model: a folder, a ``.safetensors`` file or a timm name.
        data: an ImageFolder directory or a data set spec (``builtin:clutter``, a plugin's ``x:y``).
        baseline: the comparison model, named the same ways; ``baseline_weights`` are its weights for a timm name.
        split: the data split to evaluate on.
        num_images: how many images (the first ones of a seeded draw).
        workers: DataLoader worker processes while the images are read.
        num_classes: built-in data only: its class count.
        settings: what to measure and how (its ``seed`` and ``batch_size`` also draw and read the images).
        progress: progress reporter (tasks: "loading images", then the evaluation's).
        boxes: an image folder's box file (``ersm_surgery.data.boxes``: JSON, COCO or Pascal VOC).
        spurious_cue: builtin:clutter only: plant the background cue with this class correlation (claim (f)).
        **preprocessing: ``img_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct`` over the model's own.

    Returns:
        The :class:`~ersm_surgery.eval.runner.EvalResult`; write it with :func:`write_evaluation`.

    Raises:
        DataError: ``num_classes`` for data that is not built in; the errors of loading and evaluating.
    """
    from ..data import BUILTIN_PREFIX, create_dataset, resolve_preprocessing
    from .images import load_images
    from .runner import evaluate

    settings = settings or EvalSettings()
    progress = progress or SilentProgress()
    model, model_info = load_for_evaluation(source)
    # the model's recorded preprocessing (or its own pretrained config); the baseline sees the same images
    pre = resolve_preprocessing(model, data, **preprocessing)
    options: dict[str, Any] = {"spurious_cue": spurious_cue} if spurious_cue else {}
    if num_classes is not None:
        if not str(data).startswith(BUILTIN_PREFIX):
            raise DataError("num_classes applies to built-in data only", "a folder's classes are its class folders")
        options["num_classes"] = num_classes
    dataset = create_dataset(data, split=split, seed=settings.seed, preprocessing=pre, **options)
    if boxes:
        from ..data.boxes import attach_boxes

        dataset = attach_boxes(dataset, boxes)
    base, base_info = (None, None)
    if baseline:
        base, base_info = load_for_evaluation(baseline, baseline_weights, getattr(model, "num_classes", None),
                                              "--baseline")
    task = "loading images"
    progress.start(task, min(num_images, len(dataset)) if len(dataset) else 1)
    images = load_images(dataset, num_images, settings.seed, settings.batch_size, workers,
                         lambda n: progress.advance(task, n))
    from .shift import load_cued_images

    # claim (f): the same images with the spurious cue naming the class (built-in data with a cue only)
    cued = load_cued_images(data, split, pre, settings.seed, num_images, options)
    result = evaluate(model, images, base, settings, progress, model_info, base_info, cued=cued)
    for role, info in (("the model", model_info), ("the baseline", base_info)):
        if info and info.get("weights") == "random initialisation":
            result.results["notes"].append(f"{role} ({info['source']}) has random weights: its numbers are a "
                                           "chance reference, not a trained comparison")
    return result
