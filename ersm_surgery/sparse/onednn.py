"""Depthwise convolutions with their weights laid out for oneDNN once, not at every call.

``F.conv2d`` on the CPU hands oneDNN the weight in torch's layout and oneDNN reorders it into its own at each
call. For a depthwise kernel on a small map that reorder is a large share of the call: on a 14 x 14 map with 160
channels and a 7 x 7 kernel it took 107 us against 64 us with the weight reordered beforehand
(benchmarks/bench_onednn_depthwise.py, 2-core Xeon VM, torch 2.14.1). The sparse runtime runs the depthwise
convolutions of its dense path (the rows scattered into a zero map, see ``conv.RowConv``) through
``torch.ops.mkldnn._convolution_pointwise`` with such a weight, the operator torch's own compiler uses for CPU
convolutions. It is not public API, so every step is guarded: where the operator is missing or refuses the
arguments, the convolution runs through ``F.conv2d`` as before, with the same result to float rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ENABLED", "DepthwiseKernel"]

ENABLED = True  # False: every convolution through F.conv2d (tests compare both)


class DepthwiseKernel:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` on float32 CPU maps, with the weight
    reordered for oneDNN on first use (per input channel count and dtype) where the operator is there."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> None:
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = list(stride), list(padding), list(dilation), groups
        self._packed: torch.Tensor | None = None
        self._failed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if ENABLED and not self._failed and x.device.type == "cpu" and x.dtype == torch.float32 \
                and self.weight.dtype == torch.float32 and not x.requires_grad:
            try:
                if self._packed is None:
                    self._packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                        self.weight.contiguous().to_mkldnn(), self.padding, self.stride, self.dilation, self.groups,
                        list(x.shape))
                return torch.ops.mkldnn._convolution_pointwise(x, self._packed, self.bias, self.padding, self.stride,
                                                               self.dilation, self.groups, "none", [], "")
            except (RuntimeError, NotImplementedError, AttributeError):
                # an older or differently built torch: the public path from now on
                self._failed = True
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
