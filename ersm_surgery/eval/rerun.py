"""Running a network from one feature map onward: the front once per batch, the rest as often as needed.

The deletion test (paper claim (e)) edits the feature map at a mask layer and asks what the rest of
the network makes of it, ten fractions times three rankings times two orders per batch. Running the
whole network for each would spend most of the time recomputing the unchanged front.

:class:`FxSplit` traces the whole model once with torch.fx (:func:`ersm_surgery.surgery.trace_through`:
surgery owns the tracing), through the ``DualGraphModule`` owners that surgery made and with Energy-Masks
and timm's untraceable layers kept as leaves. For every anchor (the node whose output is the feature map)
it builds two graph modules:

- a *clean* one: the whole network, which also returns the anchors' values and every value computed
  before an anchor that a later node reads (the *frontier*, e.g. the identity branch of a residual
  block that straddles the anchor);
- a *tail* per anchor: only the anchor's transitive users, with the anchor and its frontier as inputs.

``tail(z, frontier)`` is exactly what the full network computes when the anchor's output is replaced
by ``z`` (the tests check this bit for bit against a forward hook). Tail calls may mix rows of
different images: frontier tensors are gathered by row. Frontier values that are not tensors
(``x.shape[0]`` and the like) are recomputed in the tail rather than frozen, so a tail call may have
any number of rows.

:class:`HookSplit` is the fallback for models fx cannot trace, or anchors that are not nodes of the
trace: it keeps the input batch and reruns the *whole* network with a forward hook that substitutes
the anchor module's output. It gives the same numbers, at the cost of full reruns.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from ..surgery import trace_through
from ._rerun_base import Anchor, RerunError, Rerunner, SplitError, _first_tensor, _InputCapture

__all__ = ["Anchor", "Rerunner", "FxSplit", "HookSplit", "RerunError", "SplitError", "make_split"]

_log = logging.getLogger(__name__)


class FxSplit:
    """Split a model at anchors with torch.fx (see the module docstring).

    Args:
        model: the network (in eval mode while used; the split does not change its mode).
        anchors: where to split.

    Raises:
        RerunError: fx cannot trace the model, or an anchor is not a node of the trace, or the
            output does not depend on an anchor.
    """

    method = "fx"

    def __init__(self, model: nn.Module, anchors: Sequence[Anchor]) -> None:
        self.model = model
        self.anchors = {a.name: a for a in anchors}
        leaves = {a.module for a in anchors if a.module is not None}
        try:
            graph, qualnames = trace_through(model, leaves)
        except Exception as exc:  # fx raises many types; each means "not traceable as a whole"
            raise RerunError(f"fx cannot trace the model ({type(exc).__name__}: {str(exc)[:200]})") from exc
        self.graph = graph
        self._gm = fx.GraphModule(model, graph)
        self._nodes = list(graph.nodes)
        self._index = {n: i for i, n in enumerate(self._nodes)}
        self._output = next(n for n in reversed(self._nodes) if n.op == "output")
        by_qualname = {q: n for n, q in qualnames.items()}
        self._anchor_nodes: dict[str, fx.Node] = {}
        for a in anchors:
            if a.module is not None:
                found = [n for n in self._nodes if n.op == "call_module" and n.target == a.module]
            else:
                found = [by_qualname[a.node]] if a.node in by_qualname else []
            if len(found) != 1:
                what = f"module {a.module!r}" if a.module is not None else f"node {a.node!r}"
                raise RerunError(f"{what} is {'called more than once' if found else 'not a node'} in the trace")
            self._anchor_nodes[a.name] = found[0]
        self._downstream = {name: self._users(node) for name, node in self._anchor_nodes.items()}
        for name, down in self._downstream.items():
            if self._output not in down:
                raise RerunError(f"the output does not depend on anchor {name!r}")
        self._capture = _InputCapture(model, anchors)
        self._built = False
        self._clean_gm: fx.GraphModule | None = None
        self._tails: dict[str, fx.GraphModule] = {}
        self._frontier: dict[str, list[fx.Node]] = {}
        self._keep: list[fx.Node] = []
        self._values: dict[fx.Node, Any] = {}
        self.batch_size = 0

    # -- graph analysis ------------------------------------------------------------------------------

    def _users(self, anchor: fx.Node) -> set[fx.Node]:
        """Transitive users of ``anchor`` (the nodes whose value changes when the anchor's does)."""
        down: set[fx.Node] = set()
        for n in self._nodes[self._index[anchor] + 1 :]:
            if any(i is anchor or i in down for i in n.all_input_nodes):
                down.add(n)
        return down

    def _frontier_of(self, anchor: fx.Node, down: set[fx.Node]) -> list[fx.Node]:
        inputs = {i for n in down for i in n.all_input_nodes}
        return sorted((i for i in inputs if i not in down and i is not anchor and i.op != "get_attr"),
                      key=self._index.__getitem__)

    def _build(self, x: torch.Tensor) -> None:
        """Decide the frontiers from one probe run (to see which values are not tensors) and compile."""
        env = fx.Interpreter(self._gm, garbage_collect_values=False)
        with torch.no_grad():
            env.run(x)
        values = env.env
        for name, anchor in self._anchor_nodes.items():
            down = self._downstream[name]
            value = values[anchor]
            if not (isinstance(value, torch.Tensor) and value.dim() == 4):
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise RerunError(f"anchor {name!r} gives {shape}, not a (B, C, H, W) feature map")
            while True:  # recompute non-tensor frontier values (shapes, sizes) inside the tail
                frontier = self._frontier_of(anchor, down)
                moved = [f for f in frontier if f.op != "placeholder" and not isinstance(values[f], torch.Tensor)]
                if not moved:
                    break
                down |= set(moved)
            self._downstream[name] = down
            self._frontier[name] = frontier
            self._tails[name] = self._tail_module(anchor, down, frontier)
        keep = set(self._anchor_nodes.values())
        for frontier in self._frontier.values():
            keep |= set(frontier)
        self._keep = sorted(keep, key=self._index.__getitem__)
        clean = fx.Graph()
        remap: dict[fx.Node, fx.Node] = {}
        out = clean.graph_copy(self.graph, remap)
        clean.output((out, tuple(remap[n] for n in self._keep)))
        self._clean_gm = fx.GraphModule(self._gm, clean)
        self._built = True

    def _tail_module(self, anchor: fx.Node, down: set[fx.Node], frontier: list[fx.Node]) -> fx.GraphModule:
        g = fx.Graph()
        env: dict[fx.Node, fx.Node] = {anchor: g.placeholder("features")}
        for i, f in enumerate(frontier):
            env[f] = g.placeholder(f"frontier_{i}")
        for n in self._nodes:
            if n not in down or n.op == "output":
                continue
            for i in n.all_input_nodes:
                if i not in env and i.op == "get_attr":
                    env[i] = g.node_copy(i)
            env[n] = g.node_copy(n, lambda a: env[a])
        g.output(fx.map_arg(self._output.args[0], lambda a: env[a]))
        return fx.GraphModule(self._gm, g)

    # -- running -------------------------------------------------------------------------------------

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """Run the whole network on ``x`` once, keeping what the tails need; returns the logits."""
        if not self._built:
            self._build(x)
        assert self._clean_gm is not None
        self._capture.values = {}
        self._capture.active = True
        try:
            out, kept = self._clean_gm(x)
        finally:
            self._capture.active = False
        self._values = dict(zip(self._keep, kept, strict=True))
        self.batch_size = x.shape[0]
        return _first_tensor(out)

    def features(self, name: str) -> torch.Tensor:
        """The anchor's output in the last clean run."""
        return self._values[self._anchor_nodes[name]]

    def inputs(self, name: str) -> torch.Tensor | None:
        """The anchor module's input in the last clean run (anchors with ``capture_input``)."""
        return self._capture.values.get(name)

    def rerun(self, name: str, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits when the anchor's output is ``z``; row r of ``z`` belongs to clean image ``rows[r]``."""
        if rows is None:
            rows = torch.arange(z.shape[0])
        rows = rows.to(z.device)
        frontier = [self._gather(self._values[f], rows) for f in self._frontier[name]]
        return _first_tensor(self._tails[name](z, *frontier))

    def _gather(self, value: Any, rows: torch.Tensor) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.batch_size:
            return value.index_select(0, rows.to(value.device))
        return value

    def close(self) -> None:
        self._capture.remove()
        self._values = {}


class HookSplit:
    """Full reruns with a forward hook that substitutes the anchor module's output (the fallback).

    Raises:
        RerunError: an anchor is not a module.
    """

    method = "hook"

    def __init__(self, model: nn.Module, anchors: Sequence[Anchor]) -> None:
        self.model = model
        self.anchors = {a.name: a for a in anchors}
        names = dict(model.named_modules())
        for a in anchors:
            path = a.module if a.module is not None else a.node
            if path not in names:
                raise RerunError(f"anchor {a.name!r} ({path}) is not a module, so a hook cannot replace it")
        paths = {a.name: a.module if a.module is not None else a.node for a in anchors}
        self._modules = {name: names[path] for name, path in paths.items()}
        self._capture = _InputCapture(model, [Anchor(a.name, module=paths[a.name], capture_input=a.capture_input)
                                              for a in anchors])
        self._x: torch.Tensor | None = None
        self._features: dict[str, torch.Tensor] = {}

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        handles = [m.register_forward_hook(self._keep(name)) for name, m in self._modules.items()]
        self._capture.values = {}
        self._capture.active = True
        try:
            out = self.model(x)
        finally:
            self._capture.active = False
            for h in handles:
                h.remove()
        self._x = x
        return _first_tensor(out)

    def _keep(self, name: str):
        def hook(_module, _args, output):
            self._features[name] = _first_tensor(output)

        return hook

    def features(self, name: str) -> torch.Tensor:
        return self._features[name]

    def inputs(self, name: str) -> torch.Tensor | None:
        return self._capture.values.get(name)

    def rerun(self, name: str, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        assert self._x is not None, "clean() must run first"
        rows = torch.arange(z.shape[0]) if rows is None else rows

        def substitute(_module, _args, output):
            if isinstance(output, (list, tuple)):
                return type(output)([z, *output[1:]])
            return z

        handle = self._modules[name].register_forward_hook(substitute)
        try:
            return _first_tensor(self.model(self._x.index_select(0, rows.to(self._x.device))))
        finally:
            handle.remove()

    def close(self) -> None:
        self._capture.remove()
        self._x = None
        self._features = {}


def make_split(model: nn.Module, anchors: Sequence[Anchor], example: torch.Tensor | None = None,
               prefer: str = "fx") -> tuple[Rerunner, str | None]:
    """An :class:`FxSplit` when fx can split the model at every anchor, else a :class:`HookSplit`.

    Args:
        model: the network, in eval mode.
        anchors: where to split.
        example: a batch to check the fx split with (its anchors must be (B, C, H, W) maps).
        prefer: ``"fx"`` or ``"hook"`` (force full reruns).

    Returns:
        The split and, when it fell back to full reruns, the reason (else None).

    Raises:
        RerunError: neither way works (an anchor that is neither a node nor a module).
    """
    reason = "full reruns requested"
    if prefer == "fx":
        split = None
        try:
            split = FxSplit(model, anchors)
            if example is not None:  # builds the tails, and checks every anchor is a (B, C, H, W) map
                with torch.no_grad():
                    split.clean(example)
            return split, None
        except RerunError as exc:
            reason = str(exc)
            _log.info("fx split not possible (%s); using full reruns with hooks", reason)
            if split is not None:
                split.close()
    split = HookSplit(model, anchors)
    if example is not None:  # the same warm-up and check as the fx split, so that the timings compare
        with torch.no_grad():
            split.clean(example)
        for name in split.anchors:
            value = split.features(name)
            if value.dim() != 4:
                split.close()
                raise RerunError(f"anchor {name!r} gives {tuple(value.shape)}, not a (B, C, H, W) feature map")
    return split, reason
