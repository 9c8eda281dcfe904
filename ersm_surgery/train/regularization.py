"""timm's training pieces behind the timm-named settings: loss, mixup/cutmix, weight EMA, AMP dtype, channels-last.

Each is timm's own class, configured the way timm's train.py configures it:

- ``smoothing`` -> ``timm.loss.LabelSmoothingCrossEntropy``; with mixup or cutmix the targets are soft
  (``timm.data.Mixup`` smooths them) and the loss is ``timm.loss.SoftTargetCrossEntropy``.
- ``mixup`` / ``cutmix`` -> ``timm.data.Mixup`` (alphas; 0 is off), applied per batch after loading.
- ``model_ema`` -> ``timm.utils.ModelEmaV3`` updated after every optimizer update with the update index.
- ``amp_dtype`` -> the autocast dtype; float16 on CUDA gets a gradient scaler, as in timm.
The energy regularizer is added to whichever task loss this gives.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import FinetuneConfig

__all__ = ["task_criterion", "create_mixup", "create_ema", "amp_dtype", "autocast_factory", "to_channels_last"]

_log = logging.getLogger(__name__)


def task_criterion(config: FinetuneConfig) -> nn.Module:
    """The task loss of training: soft-target CE with mixup/cutmix, label smoothing CE, or plain CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixes:
        return SoftTargetCrossEntropy()
    if config.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    return nn.CrossEntropyLoss()


def create_mixup(config: FinetuneConfig, num_classes: int) -> Callable[[torch.Tensor, torch.Tensor], Any] | None:
    """timm's ``Mixup`` for the config (None when mixup and cutmix are off); it also smooths the targets."""
    if not config.mixes:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                 num_classes=int(num_classes))


def create_ema(model: nn.Module, config: FinetuneConfig) -> Any | None:
    """timm's ``ModelEmaV3`` of ``model`` (None when off); the copy shares the model's recipe object.

    The copy is what is validated and saved, so it must carry the same recipe that the run records into.
    """
    if not config.model_ema:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=config.model_ema_decay)
    if hasattr(model, "ersm_recipe"):
        ema.module.ersm_recipe = model.ersm_recipe
    return ema


def amp_dtype(config: FinetuneConfig, device: torch.device) -> torch.dtype:
    """The autocast dtype: ``amp_dtype`` when given, else float16 on CUDA and bfloat16 elsewhere."""
    if config.amp_dtype is not None and not config.amp:
        _log.warning("amp_dtype=%s has no effect without amp (pass --amp)", config.amp_dtype)
    if config.amp_dtype is not None:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16}[config.amp_dtype]
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast_factory(config: FinetuneConfig, device: torch.device, dtype: torch.dtype) -> Callable[[], Any]:
    """A no-argument factory of the run's autocast context in ``dtype`` (a null context without amp)."""

    def autocast():
        if not config.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    return autocast


def to_channels_last(model: nn.Module, config: FinetuneConfig) -> nn.Module:
    """``model`` in channels-last memory format when ``config.channels_last`` (parameters keep their identity)."""
    return model.to(memory_format=torch.channels_last) if config.channels_last else model
