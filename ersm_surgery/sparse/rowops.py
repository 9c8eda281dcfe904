"""Row-wise ops: element-wise functions, per-token norms, linear layers and per-image pooling.

An element-wise op gives the same value at a kept token whether it runs on the dense map or on the
token's row, provided every other operand is brought to rows too: a per-channel constant ((1, C, 1, 1),
(C,)) becomes (1, C), a per-image tensor (squeeze-excite's (B, C, 1, 1)) becomes each row's image's
vector. A spatial mean is a per-image segment sum of the rows over h * w: switched-off tokens are zero.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .grid import Rows

__all__ = ["ELEMENTWISE_FUNCTIONS", "ELEMENTWISE_METHODS", "is_elementwise_module", "to_row_operand",
           "segment_mean", "group_norm_rows", "NotRowWise"]


class NotRowWise(Exception):
    """This op, with these operands, cannot run on rows (it runs densely instead)."""


ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.mul, operator.sub, operator.truediv, operator.neg, operator.iadd, operator.imul,
    torch.add, torch.mul, torch.sub, torch.div, torch.sigmoid, torch.tanh, torch.relu, torch.clamp,
    torch.neg, torch.exp, torch.abs, torch.minimum, torch.maximum, torch.where, operator.pow, torch.pow,
    torch.square, torch.sqrt, torch.rsqrt, torch.erf, torch.log, torch.reciprocal,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
    F.mish, F.hardtanh, F.softplus, F.prelu,
}
ELEMENTWISE_METHODS = {
    "add", "mul", "sub", "div", "sigmoid", "tanh", "relu", "clamp", "neg", "exp", "abs", "contiguous",
    "add_", "mul_", "sub_", "div_", "sigmoid_", "relu_", "clamp_", "clamp_min", "clamp_max", "float", "to",
    "pow", "square", "sqrt", "rsqrt", "erf", "log", "reciprocal",  # metaformer's StarReLU squares
}
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
)


def is_elementwise_module(module: nn.Module) -> bool:
    """Activations, identities and (in eval mode) dropout and timm's DropPath / DropBlock."""
    if isinstance(module, _ELEMENTWISE_MODULES):
        return True
    mod = type(module).__module__
    if mod.startswith("timm.layers.activations"):
        return "GLU" not in type(module).__name__  # GLU splits a dimension in two

    return type(module).__name__ in ("DropPath", "DropBlock2d") and not module.training


def to_row_operand(value, like: Rows):
    """An operand of an element-wise op with ``like``'s rows, brought to rows (or a scalar).

    Raises:
        NotRowWise: a tensor that varies over space (it would have to be gathered densely) or has a
            batch size the rows do not have.
    """
    if isinstance(value, Rows):
        if value.grid is not like.grid:
            raise NotRowWise("operands on different grids")
        return value.data
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if value.dim() > 4:
        raise NotRowWise("more than four dimensions")
    t = value.reshape((1,) * (4 - value.dim()) + tuple(value.shape))
    if like.channels_last:  # (b, h, w, c)
        if t.shape[1] != 1 or t.shape[2] != 1:
            raise NotRowWise("a spatial operand")
        t = t[:, 0, 0, :]
    else:  # (b, c, h, w)
        if t.shape[2] != 1 or t.shape[3] != 1:
            raise NotRowWise("a spatial operand")
        t = t[:, :, 0, 0]
    if t.shape[0] == 1:
        return t
    if t.shape[0] != like.grid.batch:
        raise NotRowWise("a batch size that is not the map's")
    return t.index_select(0, like.grid.image)


def segment_mean(rows: Rows, keepdim: bool) -> torch.Tensor:
    """The spatial mean of the dense map (zeros at switched-off tokens): per-image sums over h * w."""
    grid = rows.grid
    if grid.batch == 1:  # one image: a plain sum (index_add_ walks the rows one at a time)
        sums = rows.data.sum(0, keepdim=True)
    else:
        sums = rows.data.new_zeros(grid.batch, rows.data.shape[1]).index_add_(0, grid.image, rows.data)
    mean = sums / float(grid.height * grid.width)
    if not keepdim:
        return mean
    return mean[:, None, None, :] if rows.channels_last else mean[:, :, None, None]


def group_norm_rows(rows: Rows, num_groups: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` of the dense (B, C, h, w) map, at its kept tokens: each image's group statistics over
    every token, the switched-off ones counted as the zeros they are (two passes, as torch's, for the variance)."""
    grid, x = rows.grid, rows.data
    n, c = x.shape
    per, tokens = c // num_groups, grid.height * grid.width
    count = float(per * tokens)
    by_group = x.view(n, num_groups, per)
    mean = x.new_zeros(grid.batch, num_groups).index_add_(0, grid.image, by_group.sum(2)) / count
    centred = by_group - mean.index_select(0, grid.image).unsqueeze(2)
    squares = x.new_zeros(grid.batch, num_groups).index_add_(0, grid.image, centred.square().sum(2))
    switched_off = tokens - torch.bincount(grid.image, minlength=grid.batch).to(x.dtype)
    squares += (switched_off * per).unsqueeze(1) * mean.square()  # each switched-off value is 0: (0 - mean)^2
    rstd = torch.rsqrt(squares / count + eps)
    out = (centred * rstd.index_select(0, grid.image).unsqueeze(2)).view(n, c)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out
