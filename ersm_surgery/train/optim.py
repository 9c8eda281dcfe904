"""Optimizer and learning-rate schedule of a run, made by timm's factories.

Three parameter groups: the backbone's weights (with weight decay), its biases and norms (without, as
``timm.optim.param_groups_weight_decay`` does), and the mask layers (without weight decay, at
``lr * mask_lr_scale`` through timm's ``lr_scale`` group key, which every timm scheduler honours). The
mask heads start from a bias that keeps the mask open; at the backbone's fine-tuning rate they would
need thousands of updates to move it, hence their own scale.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..mask_set import masks
from .config import FinetuneConfig
from .errors import TrainingError

__all__ = ["param_groups", "create_optimizer", "create_scheduler", "base_lr", "updates_per_epoch"]


def param_groups(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """The trainable parameters in up to three groups (empty groups are left out)."""
    mask_ids = {id(p) for p in masks(model).parameters()}
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay, mask_params = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in mask_ids:
            mask_params.append(p)
        elif p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "group": "backbone"},
        {"params": no_decay, "weight_decay": 0.0, "group": "backbone_no_decay"},
        {"params": mask_params, "weight_decay": 0.0, "lr_scale": config.mask_lr_scale, "group": "masks"},
    ]
    return [g for g in groups if g["params"]]


def create_optimizer(model: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` over :func:`param_groups`.

    Raises:
        TrainingError: an optimizer name timm does not know, or nothing to train.
    """
    from timm.optim import create_optimizer_v2, list_optimizers

    if config.opt.lower() not in list_optimizers():
        raise TrainingError(f"unknown optimizer --opt {config.opt!r}",
                            "use a name from timm.optim.list_optimizers(), e.g. adamw, sgd, lamb")
    groups = param_groups(model, config)
    if not groups:
        raise TrainingError("the model has no trainable parameters", "drop --freeze-backbone or check the model")
    return create_optimizer_v2(groups, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                               momentum=config.momentum)


def create_scheduler(optimizer: torch.optim.Optimizer, config: FinetuneConfig, updates_per_epoch: int):
    """``timm.scheduler.create_scheduler_v2``, stepped per optimizer update (None for ``--sched none``).

    The group learning rates (with the masks' ``lr_scale``) are set for update 0 before returning.

    Raises:
        TrainingError: a scheduler name timm does not know.
    """
    from timm.scheduler import create_scheduler_v2

    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=config.sched, num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            warmup_lr=config.warmup_lr, min_lr=config.min_lr, step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    except (ValueError, AssertionError, KeyError, NotImplementedError) as exc:
        raise TrainingError(f"cannot create the lr schedule --sched {config.sched!r} ({exc})",
                            "use cosine, step, multistep, poly, tanh, wsd, constant or none") from exc
    if scheduler is None:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group.get("lr_scale", 1.0)
    else:
        scheduler.step_update(0)
    return scheduler


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate without the masks' scale."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))


def updates_per_epoch(batches: int, accum: int) -> int:
    return max(1, math.ceil(batches / accum))
