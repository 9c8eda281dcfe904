"""BatchNorm in evaluation mode as a per-channel affine map, folded into the convolution before it."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .conv import RowConv

__all__ = ["bn_affine", "fold_bn", "is_batchnorm"]


def is_batchnorm(module: nn.Module) -> bool:
    """``nn.BatchNorm2d`` or timm's ``BatchNormAct2d`` (a subclass) with running statistics."""
    return isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.running_var is not None


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``bn(x) == x * scale + shift`` per channel in eval mode."""
    scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean.detach() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale, shift


def fold_bn(conv: RowConv, bn: nn.BatchNorm2d) -> RowConv:
    """``bn(conv(x))`` as one convolution: weights scaled per output channel, the shift as the bias."""
    scale, shift = bn_affine(bn)
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return dataclasses.replace(conv, weight=conv.weight * scale.reshape(-1, 1, 1, 1), bias=bias)
