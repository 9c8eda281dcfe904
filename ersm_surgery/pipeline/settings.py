"""The settings of ``run`` and ``reproduce``, resolved from their options: callable from Python.

Precedence, lowest first: :class:`PipelineSettings`' field defaults, the command's protocol defaults
(:func:`protocol_defaults`: epochs, batch, lr and the built-in data's class count), ``key=value`` overrides
(``mask.*``, ``finetune.*``), then explicit arguments.

    from ersm_surgery.pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS, build_settings, protocol_defaults
    defaults = protocol_defaults(None, RUN_EPOCHS, RUN_BASE_IMAGES, "r18-run")
    settings = build_settings("resnet18", "2,3", defaults, dataset="builtin:clutter")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataError
from .run import PipelineSettings

__all__ = ["RUN_EPOCHS", "RUN_BASE_IMAGES", "protocol_defaults", "build_settings"]

# ``run`` on the built-in data: ~5 min on an idle 2-core CPU (benchmarks/README.md); the base's epochs (None)
# are fitted to its time budget (pipeline/base_budget.py)
RUN_EPOCHS: dict[str, int | None] = {"base_epochs": None, "epochs": 2}
RUN_BASE_IMAGES = 4000


def protocol_defaults(dataset: str | None, epochs: dict[str, int | None], base_images: int,
                      output: str) -> dict[str, Any]:
    """The defaults of ``run`` and ``reproduce``: the protocol of benchmarks/bench_finetune.py.

    That benchmark measured the default mask settings: fine-tuning at batch 32 and lr 3e-4 and, on the
    built-in data, 4 classes with a base that sees ``base_images`` unique images (more images rather
    than more epochs: the fine-tuning split alone is too small to train a base from scratch).
    """
    defaults: dict[str, Any] = {**epochs, "batch_size": 32, "lr": 3e-4, "output": output}
    if dataset in (None, "builtin:clutter"):
        defaults.update(data_options={"num_classes": 4}, base_data_options={"train_size": base_images})
    return defaults


def build_settings(model: str, stages: str | list[int], defaults: dict[str, Any], *, data_dir: str | None = None,
                   dataset: str | None = None, epochs: int | None = None, base_epochs: int | None = None,
                   img_size: int = 64, data_size: int | None = None, num_classes: int | None = None,
                   batch_size: int | None = None, pretrained: bool = False, pretrained_path: str | None = None,
                   seed: int = 0, num_images: int = 256, overrides: tuple[str, ...] | list[str] = (),
                   output: str | None = None, force: bool = False, export_rtol: float | None = None,
                   export_atol: float | None = None, force_base: bool = False, device: str | None = None,
                   side_by_side: bool = False,
                   workers: int = 0, boxes: str | None = None) -> PipelineSettings:
    """:class:`PipelineSettings` from the options; ``defaults`` holds the command's epochs (and data options).

    Raises:
        DataError: ``data_dir`` is not a folder; RecipeError: a bad override; PlacementError: bad ``stages``.
    """
    from ..recipe import apply_overrides
    from ..surgery import parse_stages

    if data_dir and not Path(data_dir).is_dir():
        raise DataError(f"data dir {data_dir!r} does not exist", "pass a folder with train/ and validation/")
    data = apply_overrides({"model": model}, list(overrides))
    data_options = {} if data_dir else dict(defaults.get("data_options", {}))
    base_data_options = {} if data_dir or data_size else dict(defaults.get("base_data_options", {}))
    if data_size:
        data_options["size"] = data_size
    if num_classes:
        data_options["num_classes"] = num_classes
    return PipelineSettings(
        model=model, stages=parse_stages(stages) if isinstance(stages, str) else list(stages),
        data=data_dir or dataset or "builtin:clutter",
        output=output or defaults["output"], epochs=epochs or defaults["epochs"],
        base_epochs=base_epochs or defaults["base_epochs"], img_size=img_size,
        batch_size=batch_size or defaults["batch_size"], lr=defaults.get("lr", PipelineSettings.lr),
        pretrained=pretrained, pretrained_path=pretrained_path, seed=seed, num_images=num_images,
        mask=data["mask"], finetune=data["finetune"], force=force, data_options=data_options,
        base_data_options=base_data_options, export_rtol=export_rtol, export_atol=export_atol,
        force_base=force_base, device=device, workers=workers, boxes=boxes, side_by_side=side_by_side,
    )
