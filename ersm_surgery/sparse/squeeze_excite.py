"""Squeeze-excite on rows as one step of a row program.

A squeeze-excite branch is a spatial mean, a short chain of ops on the per-image vectors (pointwise
convolutions, activations, the gate) and the map multiplied by the result. Node by node that is ten or more
steps of a row program, most of them on (B, C, 1, 1) tensors whose cost is the step, not the arithmetic: at
batch 1 efficientnet_b0's squeeze-excites took ~0.26 ms each inside the sparse model, a tenth of its time.
:func:`find_squeeze_excites` finds the branches in a gated graph; :class:`SqueezeExcite` runs one on rows as a
segment mean, one GEMM per convolution on the (B, C) vectors, the activations in place and one multiply. The
same values (to float rounding); where the map is not rows at run time the branch's own nodes run, as planned.
"""
from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..surgery.gating import NCHW
from .conv import RowConv, conv_supported
from .grid import Rows
from .rowops import ELEMENTWISE_FUNCTIONS, ELEMENTWISE_METHODS, is_elementwise_module, segment_mean

__all__ = ["SqueezeExcite", "find_squeeze_excites", "sole_user"]

_MULTIPLY = (operator.mul, torch.mul)


class SqueezeExcite:
    """One squeeze-excite branch of a graph: ``source * chain(mean(source))``.

    Args:
        source: the map's node.
        nodes: the branch's nodes from the mean to the last op of the chain (the multiply not included).
        vector_ops: the chain as functions of a (B, C) tensor.
        dense: the branch's own nodes as functions of the dense values, mean first, then the multiply.
    """

    def __init__(self, source: fx.Node, nodes: list[fx.Node], vector_ops: list[Callable],
                 dense: list[Callable]) -> None:
        self.source, self.nodes, self.vector_ops, self.dense = source, nodes, vector_ops, dense

    def dense_value(self, x: torch.Tensor) -> torch.Tensor:
        """The branch's own nodes on a dense map ``x``."""
        value = x
        for step in self.dense[:-1]:
            value = step(value)
        return self.dense[-1](x, value)

    def on_rows(self, x: Rows) -> Rows:
        """The branch on channels-first rows: segment mean, the chain on (B, C) vectors, one multiply."""
        v = segment_mean(x, keepdim=False)  # (B, C), a fresh tensor the chain may change in place
        for op in self.vector_ops:
            v = op(v)
        gate = v if x.grid.batch == 1 else v.index_select(0, x.grid.image)
        return x.like(x.data * gate)


def sole_user(node: fx.Node) -> fx.Node | None:
    """The one node that reads ``node``, or None."""
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_spatial_mean(node: fx.Node, owner: nn.Module) -> bool:
    if node.op == "call_method" and node.target == "mean" or node.op == "call_function" and node.target is torch.mean:
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else None
        return keepdim is True and dims is not None and {d % 4 for d in dims} == {2, 3} and len(node.args) <= 3 \
            and set(node.kwargs) <= {"dim", "keepdim"}
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if node.op == "call_module":
        module = owner.get_submodule(node.target)
        return type(module) is nn.AdaptiveAvgPool2d and module.output_size in (1, (1, 1)) \
            and len(node.args) == 1 and not node.kwargs
    return False


def _only_value_operand(node: fx.Node, value: fx.Node) -> bool:
    """``node`` reads ``value`` as its first argument and nothing else from the graph."""
    if not node.args or node.args[0] is not value:
        return False
    others = [*node.args[1:], *node.kwargs.values()]
    return not any(isinstance(a, (fx.Node, tuple, list, dict)) for a in others)


def _vector_op(node: fx.Node, owner: nn.Module) -> Callable | None:
    """``node`` as a function of the (B, C) vectors, or None where it is not an op the branch may hold."""
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs:
            return None
        module = owner.get_submodule(node.target)
        if conv_supported(module):
            conv = RowConv.from_module(module)
            return conv.matmul if conv.pointwise else None
        if is_elementwise_module(module):
            return module.forward
        return None
    elementwise = (node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS) or (
        node.op == "call_method" and node.target in ELEMENTWISE_METHODS)
    if not elementwise or node.target in _MULTIPLY or node.target == "mul":
        return None  # a multiply is the branch's end, not its chain
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if node.op == "call_method":
        return lambda v: getattr(v, node.target)(*rest, **kwargs)
    fn = node.target
    return lambda v: fn(v, *rest, **kwargs)


def _dense_step(node: fx.Node, owner: nn.Module) -> Callable:
    """``node``'s own op as a function of its one graph operand."""
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if node.op == "call_module":
        module = owner.get_submodule(node.target)
        return lambda v: module(v, *rest, **kwargs)
    if node.op == "call_method":
        return lambda v: getattr(v, node.target)(*rest, **kwargs)
    fn = node.target
    return lambda v: fn(v, *rest, **kwargs)


def _multiply_of(mul: fx.Node, source: fx.Node, branch_end: fx.Node) -> Callable | None:
    """The multiply ``source * branch_end`` (either order) as ``fn(map, gate)``."""
    is_mul = (mul.op == "call_function" and mul.target in _MULTIPLY) or (mul.op == "call_method"
                                                                         and mul.target == "mul")
    if not is_mul or mul.kwargs or len(mul.args) != 2:
        return None
    if mul.args == (source, branch_end):
        return lambda x, gate: x * gate
    if mul.args == (branch_end, source):
        return lambda x, gate: gate * x
    return None


def find_squeeze_excites(graph: fx.Graph, owner: nn.Module, kinds: dict[fx.Node, str]) -> dict[fx.Node, SqueezeExcite]:
    """The squeeze-excite branches of ``graph``, by their multiply node: a spatial mean of a channels-first map
    whose value goes, each node to the next alone, through pointwise convolutions and element-wise ops (each with
    no other graph operand) to a multiply with the same map."""
    found: dict[fx.Node, SqueezeExcite] = {}
    for mean in graph.nodes:
        if not _is_spatial_mean(mean, owner) or not isinstance(mean.args[0], fx.Node):
            continue
        source = mean.args[0]
        if kinds.get(source) != NCHW:
            continue
        nodes, vector_ops = [mean], []
        node = sole_user(mean)
        while node is not None and _only_value_operand(node, nodes[-1]):
            op = _vector_op(node, owner)
            if op is None:
                break
            nodes.append(node)
            vector_ops.append(op)
            node = sole_user(node)
        if node is None or not vector_ops:
            continue
        multiply = _multiply_of(node, source, nodes[-1])
        if multiply is None:
            continue
        dense = [_dense_step(n, owner) for n in nodes] + [multiply]
        found[node] = SqueezeExcite(source, nodes, vector_ops, dense)
    return found
