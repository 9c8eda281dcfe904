"""Convolution and average pooling on rows of kept tokens.

A 1x1 stride-1 convolution is one GEMM on the rows. Any other convolution gathers each kept output
token's neighbourhood from the input rows (a zero row for switched-off and outside taps, see
:mod:`.grid`) and multiplies: one GEMM for a dense convolution, a weighted sum over taps for a
depthwise one, a batched GEMM per group for a grouped one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .grid import Grid, GridSet, Rows
from .onednn import DepthwiseKernel

__all__ = ["RowConv", "conv_supported", "conv_padding", "out_size", "avg_pool_rows", "avg_pool_supported",
           "max_pool_rows", "max_pool_supported", "DEPTHWISE_COST_NS", "DEPTHWISE_PATH", "IN_PLACE_ACTIVATIONS",
           "in_place_activation"]

# What a depthwise convolution on rows costs either way, in ns, fitted on benchmarks/bench_sparse_depthwise.py's
# per-op table (2-core Xeon VM, torch 2.14.1, 2026-12-05): gathered taps cost "tap" per kernel tap (a tap is three
# ops whatever their size, which is what decides batch 1) plus "tap_row" per kept output token, tap and channel;
# the dense path (the rows scattered into the zero map, the dense kernel, the kept outputs gathered) costs "dense"
# plus ("position" + "position_tap" * taps) per input position and channel. The rule before it (dense above 6
# gathered taps per input position, from an AMD EPYC VM) left no room for the per-tap cost: at batch 1 it kept
# efficientnet's 3x3 and 5x5 kernels on taps where the dense path took half the time.
DEPTHWISE_COST_NS = {"tap": 18_000.0, "tap_row": 0.4, "dense": 150_000.0, "position": 0.5, "position_tap": 0.017}
DEPTHWISE_PATH: str | None = None  # "taps" or "dense" forces that path (tests, benchmarks); None: the cheaper one


# activations a convolution's step applies to its fresh output, in place: the same values as the module
IN_PLACE_ACTIVATIONS = {
    "relu": torch.relu_,
    "relu6": lambda x: F.hardtanh(x, 0.0, 6.0, inplace=True),
    "silu": lambda x: F.silu(x, inplace=True),
    "hardswish": lambda x: F.hardswish(x, inplace=True),
}
_ACTIVATION_NAMES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish"}


def in_place_activation(module: nn.Module | None) -> str | None:
    """The key in :data:`IN_PLACE_ACTIVATIONS` of a torch activation module (exactly its type: a subclass may
    compute something else), or None."""
    return _ACTIVATION_NAMES.get(type(module))


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _numeric_padding(padding, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int] | None:
    if not isinstance(padding, str):
        return _pair(padding)
    if padding == "valid":
        return (0, 0)
    span = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
    if padding != "same" or any(s % 2 for s in span):
        return None
    return (span[0] // 2, span[1] // 2)


def conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """``conv``'s zero padding as numbers: ``"valid"`` is none, ``"same"`` (stride 1) is half the dilated kernel
    each side; None where "same" pads unevenly (an even dilated kernel: torch puts the extra row at the end)."""
    return _numeric_padding(conv.padding, _pair(conv.kernel_size), _pair(conv.dilation))


def conv_supported(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` with zero padding the same on both sides (timm's Conv2dSame pads at run time)."""
    return type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and conv_padding(conv) is not None


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool = False) -> int:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


@dataclass
class RowConv:
    """A convolution prepared for rows, with an optional BatchNorm folded in (see :mod:`.fold`)."""

    weight: torch.Tensor  # (C_out, C_in / groups, kh, kw)
    bias: torch.Tensor | None
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    # the activation after it, applied in place by this step (the row program fuses it: see
    # executor.StageProgram._fusable_activation)
    activation: str | None = None

    def __post_init__(self) -> None:
        c_out, c_in_g, kh, kw = self.weight.shape
        taps = kh * kw
        self.pointwise = taps == 1 and self.stride == (1, 1) and self.padding == (0, 0) and self.groups == 1
        self.depthwise = self.groups > 1 and c_in_g == 1 and c_out == self.groups
        if self.groups == 1:  # (taps * C_in, C_out), tap-major like the gathered (N, taps, C_in)
            self.matrix = self.weight.permute(2, 3, 1, 0).reshape(taps * c_in_g, c_out).contiguous()
        elif self.depthwise:  # (taps, C)
            self.matrix = self.weight.reshape(c_out, taps).t().contiguous()
            self.dense_kernel = DepthwiseKernel(self.weight, self.bias, self.stride, self.padding, self.dilation,
                                                self.groups)
        else:  # (groups, taps * C_in_g, C_out_g)
            g = self.groups
            self.matrix = (self.weight.reshape(g, c_out // g, c_in_g, taps).permute(0, 3, 2, 1)
                           .reshape(g, taps * c_in_g, c_out // g).contiguous())

    @classmethod
    def from_module(cls, conv: nn.Conv2d) -> RowConv:
        bias = conv.bias.detach() if conv.bias is not None else None
        made = cls.from_tensors(conv.weight.detach(), bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        if made is None:
            raise ValueError(f"{conv} pads unevenly; see conv_supported")
        return made

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, bias: torch.Tensor | None, stride=1, padding=0, dilation=1,
                     groups: int = 1) -> RowConv | None:
        """The convolution ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` computes; None where its
        padding is not the same on both sides."""
        kernel = (int(weight.shape[2]), int(weight.shape[3]))
        numeric = _numeric_padding(padding, kernel, _pair(dilation))
        if numeric is None:
            return None
        return cls(weight, bias, kernel, _pair(stride), numeric, _pair(dilation), int(groups))

    def out_grid(self, grid: Grid, grids: GridSet) -> Grid:
        if self.pointwise:
            return grid
        h = out_size(grid.height, self.kernel[0], self.stride[0], self.padding[0], self.dilation[0])
        w = out_size(grid.width, self.kernel[1], self.stride[1], self.padding[1], self.dilation[1])
        return grids.at(h, w)

    def __call__(self, rows: Rows, grids: GridSet) -> Rows:
        x = rows.data
        if self.pointwise:
            return Rows(self.matmul(x), rows.grid)
        grid = self.out_grid(rows.grid, grids)
        if self.depthwise and self._dense_is_cheaper(grid, rows.grid):
            out = self._depthwise_dense(rows, grid)
            return Rows(self.activate(out), grid)
        taps = grid.taps(rows.grid, self.kernel, self.stride, self.padding, self.dilation)
        table = torch.cat([x, x.new_zeros(1, x.shape[1])])
        n = grid.count
        if self.groups == 1:
            return Rows(self.matmul(table.index_select(0, taps.reshape(-1)).reshape(n, self.matrix.shape[0])), grid)
        if self.depthwise:
            out = _depthwise(table, taps, self.matrix)
        else:
            g = self.groups
            # sizes spelled out: a grid with no kept token (n = 0) leaves -1 undetermined
            per_group = x.shape[1] // g
            gathered = table.index_select(0, taps.reshape(-1)).reshape(n, taps.shape[1], g, per_group)
            out = torch.bmm(gathered.permute(2, 0, 1, 3).reshape(g, n, taps.shape[1] * per_group), self.matrix)
            out = out.permute(1, 0, 2).reshape(n, g * self.matrix.shape[2])
        if self.bias is not None:
            out = out + self.bias
        return Rows(self.activate(out), grid)

    def takes_vectors(self, x) -> bool:
        """``x`` is a dense (B, C, 1, 1) map this pointwise convolution can take as (B, C) vectors."""
        return (self.pointwise and isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[2] == 1
                and x.shape[3] == 1 and x.dtype == self.matrix.dtype and x.device == self.matrix.device)

    def on_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """A pointwise convolution of a (B, C, 1, 1) map as one GEMM on its (B, C) vectors (squeeze-excite: torch's
        convolution of a 1x1 map takes its slow path, several times the GEMM's time at batch 1)."""
        b = x.shape[0]
        return self.matmul(x.reshape(b, x.shape[1])).reshape(b, self.matrix.shape[1], 1, 1)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ matrix + bias`` (then the activation, in place) for a convolution without groups."""
        return self.activate(x @ self.matrix if self.bias is None else torch.addmm(self.bias, x, self.matrix))

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` (a fresh tensor) with this convolution's fused activation applied in place."""
        return out if self.activation is None else IN_PLACE_ACTIVATIONS[self.activation](out)

    def _dense_is_cheaper(self, out: Grid, src: Grid) -> bool:
        if DEPTHWISE_PATH is not None:
            return DEPTHWISE_PATH == "dense"
        cost, taps, channels = DEPTHWISE_COST_NS, self.kernel[0] * self.kernel[1], self.weight.shape[0]
        on_taps = taps * (cost["tap"] + cost["tap_row"] * out.count * channels)
        positions = src.batch * src.height * src.width
        dense = cost["dense"] + positions * channels * (cost["position"] + cost["position_tap"] * taps)
        return dense < on_taps

    def _depthwise_dense(self, rows: Rows, grid: Grid) -> torch.Tensor:
        dense = rows.grid.scatter(rows.data)  # NCHW view of a channels-last zero map
        return grid.gather_channels_last(self.dense_kernel(dense))


def _depthwise(table: torch.Tensor, taps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # one tap at a time: the (N, taps, C) gather of a 7x7 kernel would be 49 copies of the rows
    out = table.index_select(0, taps[:, 0]) * weights[0]
    for k in range(1, taps.shape[1]):
        out.addcmul_(table.index_select(0, taps[:, k]), weights[k])
    return out


def avg_pool_supported(pool: nn.Module) -> bool:
    return type(pool) is nn.AvgPool2d and pool.divisor_override is None


def _pool_grid(src: Grid, grids: GridSet, kernel, stride, padding, dilation, ceil_mode: bool) -> Grid:
    h = out_size(src.height, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    w = out_size(src.width, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    # like torch: a last window that would start in the right padding is dropped
    if ceil_mode and (h - 1) * stride[0] >= src.height + padding[0]:
        h -= 1
    if ceil_mode and (w - 1) * stride[1] >= src.width + padding[1]:
        w -= 1
    return grids.at(h, w)


def max_pool_supported(pool: nn.Module) -> bool:
    return type(pool) is nn.MaxPool2d and not pool.return_indices


def max_pool_rows(pool: nn.MaxPool2d, rows: Rows, grids: GridSet) -> Rows:
    """``nn.MaxPool2d`` on rows: the max over taps, a switched-off token reading the zero row (its value in the
    gated map) and a tap outside the map a row of minus infinity (what max pooling pads with)."""
    kernel, stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    padding, dilation = _pair(pool.padding), _pair(pool.dilation)
    src = rows.grid
    grid = _pool_grid(src, grids, kernel, stride, padding, dilation, pool.ceil_mode)
    taps = grid.taps(src, kernel, stride, padding, dilation, outside_row=src.count + 1)
    x = rows.data
    table = torch.cat([x, x.new_zeros(1, x.shape[1]), x.new_full((1, x.shape[1]), float("-inf"))])
    out = table.index_select(0, taps.reshape(-1)).reshape(grid.count, taps.shape[1], x.shape[1]).amax(1)
    return Rows(out, grid)


def avg_pool_rows(pool: nn.AvgPool2d, rows: Rows, grids: GridSet) -> Rows:
    """``nn.AvgPool2d`` on rows: the sum over taps (zero rows included) over the divisor dense pooling uses."""
    kernel, stride, padding = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
    src = rows.grid
    grid = _pool_grid(src, grids, kernel, stride, padding, (1, 1), pool.ceil_mode)
    taps = grid.taps(src, kernel, stride, padding, (1, 1))
    table = torch.cat([rows.data, rows.data.new_zeros(1, rows.data.shape[1])])
    # the channel count spelled out: a grid with no kept token (count 0) leaves -1 undetermined
    total = table.index_select(0, taps.reshape(-1)).reshape(grid.count, taps.shape[1], table.shape[1]).sum(1)
    divisor = _divisor(grid, src, kernel, stride, padding, pool.count_include_pad).to(total.dtype)
    return Rows(total / divisor.unsqueeze(1), grid)


def _divisor(grid: Grid, src: Grid, kernel, stride, padding, include_pad: bool) -> torch.Tensor:
    oi, oj = torch.div(grid.within, grid.width, rounding_mode="floor"), grid.within % grid.width
    lo_i, lo_j = oi * stride[0] - padding[0], oj * stride[1] - padding[1]
    if include_pad:  # the window clipped to the padded map
        hi_i = (lo_i + kernel[0]).clamp(max=src.height + padding[0])
        hi_j = (lo_j + kernel[1]).clamp(max=src.width + padding[1])
        return ((hi_i - lo_i) * (hi_j - lo_j)).to(torch.get_default_dtype())
    hi_i, hi_j = (lo_i + kernel[0]).clamp(max=src.height), (lo_j + kernel[1]).clamp(max=src.width)
    return ((hi_i - lo_i.clamp(min=0)) * (hi_j - lo_j.clamp(min=0))).to(torch.get_default_dtype())
