"""torch.fx tracing that knows timm: its not-traceable modules and functions stay leaves.

The plain torchvision tracer fails on models such as tf_efficientnet (``Conv2dSame`` pads from the
runtime shape), so timm's own lists of leaves and autowrapped functions are always passed. timm's
stochastic layers (DropPath, DropBlock) are leaves too, so their random draw stays behind
``self.training`` instead of being inlined into the graph.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer

__all__ = ["ErsmTracer", "trace", "trace_through", "training_mode", "register_leaf_module"]

_EXTRA_LEAVES: set[type[nn.Module]] = set()


def register_leaf_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: never trace into modules of this class (they become one graph node)."""
    _EXTRA_LEAVES.add(cls)
    return cls


def _leaf_modules() -> list[type[nn.Module]]:
    from timm.layers import DropBlock2d, DropPath, get_notrace_modules

    from ..layers import EnergyMask, StageGate
    from .graph_module import DualGraphModule

    return list({*get_notrace_modules(), DropPath, DropBlock2d, EnergyMask, StageGate, DualGraphModule,
                 *_EXTRA_LEAVES})


def _autowrap_functions() -> list:
    from timm.layers import get_notrace_functions

    return list(get_notrace_functions())


class ErsmTracer(NodePathTracer):
    """A :class:`NodePathTracer` (node -> dotted qualname map) with timm's leaves and functions."""

    def __init__(self) -> None:
        super().__init__(leaf_modules=_leaf_modules(), autowrap_functions=_autowrap_functions())

    def is_leaf_module(self, m: nn.Module, module_qualname: str) -> bool:
        # a module masked by a forward hook (the module-level fallback) must stay one node, or a
        # later trace would drop its hook
        return getattr(m, "_ersm_hooked", False) or super().is_leaf_module(m, module_qualname)


@contextlib.contextmanager
def training_mode(module: nn.Module, mode: bool) -> Iterator[nn.Module]:
    """Temporarily put ``module`` (and its children) in train or eval mode, restoring every flag."""
    from .graph_module import DualGraphModule

    before = {m: m.training for m in module.modules()}
    module.train(mode)
    try:
        yield module
    finally:
        for m, flag in before.items():
            m.training = flag
        for m in before:
            if isinstance(m, DualGraphModule):
                m.select_graph()


def trace(module: nn.Module, train: bool) -> tuple[fx.Graph, dict[fx.Node, str]]:
    """Trace ``module`` in train or eval mode.

    Returns:
        The graph and a map from each node to its dotted qualname (e.g. ``layer3.2.act3``), the names
        ``timm.layers.get_graph_node_names`` lists.
    """
    tracer = ErsmTracer()
    with training_mode(module, train), torch.no_grad():
        graph = tracer.trace(module, concrete_args=_defaulted_args(module))
    return graph, dict(tracer.node_to_qualname)


def trace_through(model: nn.Module, leaves: set[str]) -> tuple[fx.Graph, dict[fx.Node, str]]:
    """Trace a masked ``model`` whole, in eval mode: *through* the DualGraphModules that surgery made (they are
    plain GraphModules), keeping the ``leaves`` module paths as single nodes (so their outputs are nodes).

    The evaluation's rerun engine (:mod:`ersm_surgery.eval.rerun`) splits this graph at the leaves.
    """
    from .graph_module import DualGraphModule

    class Tracer(ErsmTracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            if qualname in leaves:
                return True
            if isinstance(m, DualGraphModule):
                return False
            return super().is_leaf_module(m, qualname)

    tracer = Tracer()
    with training_mode(model, False), torch.no_grad():
        graph = tracer.trace(model)
    return graph, dict(tracer.node_to_qualname)


def _defaulted_args(module: nn.Module) -> dict | None:
    """Optional forward() arguments, fixed at their defaults.

    A stage or block is called with its input alone (dla's ``Tree.forward(x, skip=None, children=None)``
    is called as ``level3(x)``), so tracing it alone must see the defaults, not placeholders.
    """
    params = list(inspect.signature(module.forward).parameters.values())[1:]
    fixed = {p.name: p.default for p in params
             if p.default is not inspect.Parameter.empty and p.kind is not inspect.Parameter.VAR_KEYWORD}
    return fixed or None
