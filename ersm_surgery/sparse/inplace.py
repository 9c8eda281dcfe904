"""Residual adds written in place in the dense eval graphs of a sparse model.

Tracing loses timm's in-place residual add: ``x += shortcut`` becomes an out-of-place ``add`` node, so
every block of a traced stage allocates one more feature map than timm's own forward. At batch 16 that
map is tens of MB, which the allocator hands back to the system and pages in again on the next call:
resnet50's masked layer2 ran 9 ms slower than timm's (210 vs 198 ms, 2026-12-05; docs/sparse.md). The
add is written into its first operand when nothing else can see that operand: a map made by the op
before it (a convolution, a norm, an arithmetic op), possibly passed on by modules that return their
input (identity, dropout and drop-path in eval mode, an in-place activation), each used once.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .fold import AfterFold, FoldedConv

__all__ = ["add_into_first", "adds_in_place", "is_timm_drop_path"]

# ops whose output is a new tensor, never a view or one of their inputs
_FRESH_MODULES = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, FoldedConv)
_FRESH_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                    torch.div, F.conv2d, F.linear}
_FRESH_METHODS = {"add", "sub", "mul", "div"}
_ADDS = {operator.add, torch.add}


def add_into_first(a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """``a + b``, written into ``a`` when that gives the same tensor: ``a`` holds the broadcast result's shape
    and dtype in a layout without overlap, and autograd does not record the op (an in-place add would change
    what a backward pass reads)."""
    if (torch.is_grad_enabled() and (a.requires_grad or (isinstance(b, torch.Tensor) and b.requires_grad))) \
            or torch.result_type(a, b) != a.dtype:
        return a + b
    shape = torch.broadcast_shapes(a.shape, b.shape) if isinstance(b, torch.Tensor) else a.shape
    dense = a.is_contiguous() or a.is_contiguous(memory_format=torch.channels_last)
    if shape != a.shape or not dense:
        return a + b
    return a.add_(b)


def is_timm_drop_path(module: nn.Module) -> bool:
    """timm's DropPath (matched by name: timm is not imported for it)."""
    return type(module).__name__ == "DropPath" and type(module).__module__.startswith("timm.")


def _passes_input_on(module: nn.Module) -> bool:
    """A module whose eval-mode output may be its input itself."""
    if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout2d, AfterFold)) or is_timm_drop_path(module):
        return True
    return getattr(module, "inplace", False) is True


def _owned(node: fx.Node, owner: nn.Module, user: fx.Node) -> bool:
    """Whether ``user`` is the only reader of ``node``'s value and of every tensor that value aliases."""
    if len(node.users) != 1 or next(iter(node.users)) is not user:
        return False
    if node.op == "call_function":
        return node.target in _FRESH_FUNCTIONS
    if node.op == "call_method":
        return node.target in _FRESH_METHODS
    if node.op != "call_module":
        return False  # a placeholder, a parameter, an output of an op we do not know
    module = owner.get_submodule(node.target)
    if isinstance(module, _FRESH_MODULES):
        return True
    if _passes_input_on(module) and len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
        return _owned(node.args[0], owner, node)
    return False


def adds_in_place(owner: nn.Module, graph: fx.Graph) -> int:
    """Turn every ``a + b`` of ``graph`` (the eval graph ``owner`` runs) whose ``a`` nothing else reads into
    :func:`add_into_first`, in place; return how many. Call ``owner.recompile()`` if ``graph`` is running."""
    count = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _ADDS or len(node.args) != 2 or node.kwargs:
            continue
        first = node.args[0]
        if isinstance(first, fx.Node) and _owned(first, owner, node):
            node.target = add_into_first
            count += 1
    return count
