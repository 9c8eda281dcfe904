"""BatchNorm in evaluation mode as a per-channel affine map, folded into the convolution before it: on rows
(:func:`fold_bn`, the gated stages) and in the dense modules around them (:func:`fold_batchnorms`)."""
from __future__ import annotations

import dataclasses
from collections import Counter

import torch
from torch import fx, nn

from .conv import RowConv

__all__ = ["bn_affine", "norm_affine", "folded_weights", "fold_bn", "is_batchnorm", "fold_batchnorms", "FoldedConv",
           "AfterFold"]


def is_batchnorm(module: nn.Module) -> bool:
    """``nn.BatchNorm2d`` or timm's ``BatchNormAct2d`` (a subclass) with running statistics."""
    return isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.running_var is not None


def norm_affine(running_mean: torch.Tensor, running_var: torch.Tensor, weight: torch.Tensor | None,
                bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of a batch norm with these statistics and affine terms, in eval mode."""
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``bn(x) == x * scale + shift`` per channel in eval mode."""
    weight = bn.weight.detach() if bn.weight is not None else None
    bias = bn.bias.detach() if bn.bias is not None else None
    return norm_affine(bn.running_mean.detach(), bn.running_var.detach(), weight, bias, bn.eps)


def folded_weights(weight: torch.Tensor, bias: torch.Tensor | None,
                   bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one convolution computing ``bn(conv(x))``: weights scaled per output channel, the
    shift as the bias."""
    scale, shift = bn_affine(bn)
    return weight * scale.reshape(-1, 1, 1, 1), shift if bias is None else bias * scale + shift


def fold_bn(conv: RowConv, bn: nn.BatchNorm2d) -> RowConv:
    """``bn(conv(x))`` as one convolution on rows."""
    weight, bias = folded_weights(conv.weight, conv.bias, bn)
    return dataclasses.replace(conv, weight=weight, bias=bias)


class FoldedConv(nn.Module):
    """A convolution and the BatchNorm after it: in eval mode one convolution with the norm folded in (weights
    and bias a snapshot taken at construction); in train mode the convolution, then the norm's own
    normalisation (batch statistics, running-stat updates), as before the fold."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        weight, bias = folded_weights(conv.weight.detach(), conv.bias.detach() if conv.bias is not None else None, bn)
        self.register_buffer("folded_weight", weight, persistent=False)
        self.register_buffer("folded_bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            # the plain BatchNorm2d forward: timm's BatchNormAct2d applies its activation at its own node
            return nn.BatchNorm2d.forward(self.bn, self.conv(x))
        return self.conv._conv_forward(x, self.folded_weight, self.folded_bias)


class AfterFold(nn.Module):
    """What a BatchNorm does after its affine map, which is folded elsewhere: timm's BatchNormAct2d drop and
    activation (nothing for a plain ``BatchNorm2d``). Used where a folded norm's node was, and by the row
    programs after the affine map on rows."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
        self.drop = None if drop is None or isinstance(drop, nn.Identity) else drop
        self.act = None if act is None or isinstance(act, nn.Identity) else act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop is not None:
            x = self.drop(x)
        return x if self.act is None else self.act(x)


def _foldable_pairs(owner: nn.Module, graphs: list[fx.Graph]) -> list[tuple[str, str]]:
    """(conv path, norm path) in ``owner`` where, in every graph, the convolution's only user is the norm, each
    of the two modules is called exactly once and neither has a tensor read by the forward itself."""
    found: set[tuple[str, str]] | None = None
    for graph in graphs:
        calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        # a forward that reads a module's tensors itself (``self.conv.weight``) needs the module where it was
        read = {n.target.rpartition(".")[0] for n in graph.nodes if n.op == "get_attr"}
        pairs = set()
        for node in graph.nodes:
            if node.op != "call_module" or calls[node.target] != 1:
                continue
            conv = owner.get_submodule(node.target)
            if type(conv) is not nn.Conv2d or len(node.users) != 1:
                continue
            user = next(iter(node.users))
            if user.op != "call_module" or calls[user.target] != 1 or user.args[:1] != (node,) or len(user.args) > 1 \
                    or user.kwargs:
                continue
            if is_batchnorm(owner.get_submodule(user.target)) and not read & {node.target, user.target}:
                pairs.add((node.target, user.target))
        found = pairs if found is None else found & pairs
    return sorted(found or ())


def fold_batchnorms(owner: nn.Module, graphs: list[fx.Graph]) -> int:
    """Fold every BatchNorm that follows a convolution in ``graphs`` (``owner``'s forward in each mode) into
    it, in place: the convolution becomes a :class:`FoldedConv`, the norm an :class:`AfterFold`. Returns the
    number of pairs folded. Exact up to float rounding in eval mode; train mode computes as before."""
    from ..surgery.insert import set_submodule

    pairs = _foldable_pairs(owner, graphs)
    for conv_path, bn_path in pairs:
        conv, bn = owner.get_submodule(conv_path), owner.get_submodule(bn_path)
        set_submodule(owner, conv_path, FoldedConv(conv, bn).train(conv.training))
        set_submodule(owner, bn_path, AfterFold(bn).train(bn.training))
    return len(pairs)
