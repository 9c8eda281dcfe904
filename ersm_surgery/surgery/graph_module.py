"""A GraphModule with one graph per mode, that keeps its root's children as they were.

Tracing specialises every ``self.training`` branch, so a module traced once keeps the mode it was
traced in. Like torchvision's ``DualGraphModule``, :class:`DualGraphModule` holds a train graph and an
eval graph and switches between them in ``train()``. Unlike it, it keeps the root's own children
(so ``layer2.0`` stays a timm ``Bottleneck`` and the state dict keys stay timm's) and survives
``copy.deepcopy`` (which timm's EMA and the evaluation's model copies rely on).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import fx, nn

__all__ = ["DualGraphModule"]


class DualGraphModule(fx.GraphModule):
    """Runs ``train_graph`` in train mode and ``eval_graph`` in eval mode.

    Args:
        root: the module whose children, parameters and buffers are taken over (by reference).
        train_graph: graph traced (and edited) in train mode.
        eval_graph: graph traced (and edited) in eval mode.
        class_name: name shown by ``repr``.
    """

    def __init__(self, root: nn.Module, train_graph: fx.Graph, eval_graph: fx.Graph, class_name: str = "") -> None:
        nn.Module.__init__(self)
        # GraphModule.__new__ made a class for this instance alone, so renaming it is safe
        self.__class__.__name__ = class_name or f"Masked{type(root).__name__}"
        for name, child in root.named_children():
            self.add_module(name, child)
        for name, param in root.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in root.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=name not in root._non_persistent_buffers_set)
        self._take_constants(root, (train_graph, eval_graph))
        self.train_graph = train_graph
        self.eval_graph = eval_graph
        self.training = root.training
        self.graph = train_graph if root.training else eval_graph
        self._tracer_cls = None

    def _take_constants(self, root: nn.Module, graphs: tuple[fx.Graph, ...]) -> None:
        """Tensors the tracer stored on ``root`` (``_tensor_constantN``: a tensor made inside forward, as
        SwinV2-CR's attention mask) are read by ``get_attr`` nodes: keep them, as non-persistent buffers so
        they follow ``.to(device)`` and stay out of the state dict."""
        for graph in graphs:
            for node in graph.nodes:
                if node.op != "get_attr" or "." in node.target or hasattr(self, node.target):
                    continue
                value = getattr(root, node.target, None)
                if isinstance(value, torch.Tensor):
                    self.register_buffer(node.target, value, persistent=False)

    def train(self, mode: bool = True) -> DualGraphModule:
        super().train(mode)
        self.select_graph()
        return self

    def select_graph(self) -> None:
        """Make the graph that runs match ``self.training`` (recompiling forward only on a change)."""
        wanted = self.train_graph if self.training else self.eval_graph
        if self.graph is not wanted:
            self.graph = wanted

    def __deepcopy__(self, memo: dict[int, Any]) -> DualGraphModule:
        holder = nn.Module()
        for name, child in self.named_children():
            holder.add_module(name, copy.deepcopy(child, memo))
        for name, param in self.named_parameters(recurse=False):
            holder.register_parameter(name, copy.deepcopy(param, memo))
        for name, buf in self.named_buffers(recurse=False):
            persistent = name not in self._non_persistent_buffers_set
            holder.register_buffer(name, copy.deepcopy(buf, memo), persistent=persistent)
        holder.training = self.training
        result = DualGraphModule(
            holder, copy.deepcopy(self.train_graph, memo), copy.deepcopy(self.eval_graph, memo), type(self).__name__
        )
        memo[id(self)] = result
        return result

    def __reduce__(self) -> Any:
        raise TypeError(
            "an ersm-surgery model is not pickled; save it with ersm_surgery.save(...) and rebuild it with load()"
        )
