"""``mask.gate=stage``: which modules a stage mask gates, and the gate nodes in their graphs.

The mask after feature stage k gates the modules that run between the end of stage k and the end of
stage k+1 (``layer3`` for resnet's stage 2; ``blocks.3`` and ``blocks.4`` for efficientnet's stage 2,
whose feature stages skip a block). Each gated module's fx graph computes the kept tokens of its input
once (:func:`~ersm_surgery.layers.kept_tokens`: the input is the masked output of the stage before) and a
:class:`~ersm_surgery.layers.StageGate` call follows every node whose output is a spatial map, so every
map of the stage is zero at the tokens the mask switches off. Which nodes are spatial is decided from
the graph alone: the input is a (B, C, H, W) map; a permute to (0, 2, 3, 1) makes it channels-last and
back; a mean over the spatial dimensions (squeeze-excite) makes a per-image vector, which is not
gated; any other op on a spatial map keeps it spatial. An op that reshapes a spatial map cannot be gated and is refused.
"""
from __future__ import annotations

import operator

import torch
from torch import fx, nn

from ..errors import PlacementError
from ..layers.gate import kept_tokens, pass_mask_on
from .analysis import feature_info
from .placement import Placement
from .token_ops import MIXING, ZERO, op_class

__all__ = ["GATE_ATTR", "gated_modules", "insert_gates", "node_kinds", "NCHW", "NHWC", "IMAGE", "OTHER"]

GATE_ATTR = "ersm_gate"
NCHW, NHWC, IMAGE, OTHER = "nchw", "nhwc", "image", "other"

_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
# ops that change a map's dimensions; stack adds one (selective kernels stack their branches: (B, K, C, H, W)),
# which no gate broadcast and no row of a token can follow
_RESHAPES = {"view", "reshape", "flatten", "transpose", "unsqueeze", "squeeze", "unflatten", "expand",
             torch.reshape, torch.flatten, torch.transpose, torch.unsqueeze, torch.squeeze, torch.stack}
_SHAPE_QUERIES = {"size", "dim", "numel"}
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def gated_modules(model: nn.Module, placements: list[Placement]) -> dict[str, Placement]:
    """Module path -> the stage placement whose mask gates it, for ``mask.gate=stage``.

    Raises:
        PlacementError: a mask that cannot gate (hook-applied, adapted, or a next stage that is not a
            sibling of the masked one).
    """
    info = feature_info(model)
    out: dict[str, Placement] = {}
    for p in placements:
        if p.stage is None:
            continue  # a mask after a node multiplies its map only (docs/layer.md)
        if p.method != "fx" or p.adapter is not None:
            raise PlacementError(f"mask.gate=stage cannot gate from {p.label}: its mask is applied by a hook",
                                 "use mask.gate=features for this model")
        if p.stage + 1 >= len(info):
            continue  # the last stage: nothing of the feature extractor follows it
        this, nxt = info[p.stage]["module"], info[p.stage + 1]["module"]
        for path in _between(model, this, nxt):
            out[path] = p
    return out


def _between(model: nn.Module, this: str, nxt: str) -> list[str]:
    parent, _, first = this.rpartition(".")
    parent_n, _, last = nxt.rpartition(".")
    if parent != parent_n:
        raise PlacementError(f"mask.gate=stage: {nxt!r} does not follow {this!r} in one container",
                             "use mask.gate=features for this stage")
    names = [name for name, _ in (model.get_submodule(parent) if parent else model).named_children()]
    if first not in names or last not in names or names.index(last) <= names.index(first):
        raise PlacementError(f"mask.gate=stage: cannot find the modules between {this!r} and {nxt!r}",
                             "use mask.gate=features for this stage")
    prefix = f"{parent}." if parent else ""
    return [prefix + n for n in names[names.index(first) + 1 : names.index(last) + 1]]


def _flat_nodes(args) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, out.append)
    return out


def _reduces_space(node: fx.Node, layout: str, owner: nn.Module) -> bool:
    if node.op == "call_module":
        mod = owner.get_submodule(node.target)
        return isinstance(mod, _POOLS) or type(mod).__name__ == "SelectAdaptivePool2d"
    if node.target is torch.nn.functional.adaptive_avg_pool2d or node.target is torch.nn.functional.adaptive_max_pool2d:
        return True
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name not in ("mean", "sum", "amax", "amin"):
        return False
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = {d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))} if dims is not None else set()
    return dims == ({2, 3} if layout == NCHW else {1, 2})


def _permuted(node: fx.Node, layout: str) -> str | None:
    if not (node.op == "call_method" and node.target == "permute") and node.target is not torch.permute:
        return None
    dims = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) > 1 else node.kwargs.get("dims")
    dims = tuple(dims)
    if layout == NCHW and dims == _TO_NHWC:
        return NHWC
    if layout == NHWC and dims == _TO_NCHW:
        return NCHW
    raise PlacementError(f"mask.gate=stage cannot follow the permute {dims} at node {node.name!r}",
                         "use mask.gate=features for this model")


def node_kinds(graph: fx.Graph, owner: nn.Module) -> dict[fx.Node, str]:
    """Each node's kind: a spatial map (``nchw``/``nhwc``), a per-image tensor (``image``) or ``other``.

    Raises:
        PlacementError: an op reshapes a spatial map, or mixes layouts.
    """
    kinds: dict[fx.Node, str] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            kinds[node] = NCHW
            continue
        if node.op in ("get_attr", "output") or (node.op == "call_function" and node.target is kept_tokens):
            # the kept tokens of a graph already gated are the gates' operand, not a map of the stage: read as a
            # map they would make every gate of a channels-last map mix layouts
            kinds[node] = OTHER
            continue
        inputs = {kinds[n] for n in _flat_nodes((node.args, node.kwargs))}
        spatial = inputs & {NCHW, NHWC}
        if not spatial:
            kinds[node] = IMAGE if IMAGE in inputs else OTHER
            continue
        if len(spatial) > 1:
            raise PlacementError(f"mask.gate=stage: node {node.name!r} mixes channels-first and channels-last maps",
                                 "use mask.gate=features for this model")
        layout = spatial.pop()
        method = node.target if node.op == "call_method" else None
        if node.op == "call_function" and node.target is getattr or method in _SHAPE_QUERIES:
            kinds[node] = OTHER
        elif _reduces_space(node, layout, owner):
            kinds[node] = IMAGE
        elif (permuted := _permuted(node, layout)) is not None:
            kinds[node] = permuted
        elif method in _RESHAPES or (node.op == "call_function" and node.target in _RESHAPES):
            raise PlacementError(f"mask.gate=stage cannot gate the reshaped map at node {node.name!r}",
                                 "use mask.gate=features for this model")
        else:
            kinds[node] = layout
    return kinds


def insert_gates(graph: fx.Graph, owner: nn.Module, pass_on: str | None = None) -> int:
    """Compute the input's kept tokens once and gate every spatial map that needs it (in place).

    A map is gated when it may be non-zero at a switched-off token (see :mod:`.token_ops`) and an op that
    reads other tokens, or the stage's output, consumes it. Gating every map after every op computes
    the same values at every kept token; these gates are the ones that change anything.

    With ``pass_on`` (the gate's pool rule; training graphs only) the module's output also hands the kept
    tokens, with their gradient path, to a module gated after it (``layers.gate.pass_mask_on``).

    Returns:
        The number of gate nodes inserted.
    """
    kinds = node_kinds(graph, owner)
    spatial = {n for n, k in kinds.items() if k in (NCHW, NHWC)}
    source = next(n for n in graph.nodes if n.op == "placeholder")
    with graph.inserting_after(source):
        keep = graph.call_function(kept_tokens, (source,))
    zero: dict[fx.Node, bool] = {}
    count = 0
    for node in list(graph.nodes):
        if node not in spatial or node is keep:
            continue
        if node.op == "placeholder":
            zero[node] = True  # the previous stage's output times its mask
            continue
        cls = op_class(node, owner, spatial, kinds[node] == NHWC)
        inputs = [a for a in _flat_nodes((node.args, node.kwargs)) if a in spatial]
        zero[node] = cls == ZERO and all(zero.get(a, False) for a in inputs)
        if zero[node] or _is_tuple(node) or not any(_reads_others(u, owner, spatial, kinds) for u in node.users):
            continue
        kwargs = {"channels_last": True} if kinds[node] == NHWC else {}
        with graph.inserting_after(node):
            gate = graph.call_module(GATE_ATTR, (node, keep), kwargs)
        node.replace_all_uses_with(gate, delete_user_cb=lambda user, g=gate: user is not g)
        spatial.add(gate)
        kinds[gate] = kinds[node]
        zero[gate] = True
        count += 1
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    result = output.args[0]
    if pass_on is not None and isinstance(result, fx.Node) and kinds.get(result) == NCHW:
        with graph.inserting_before(output):
            output.args = (graph.call_function(pass_mask_on, (result, keep, pass_on)),)
    graph.lint()
    return count


def _reads_others(user: fx.Node, owner: nn.Module, spatial: set[fx.Node], kinds: dict) -> bool:
    """The stage output, a reduction, or an op that reads other tokens (or that the gate does not know)."""
    if user.op == "output" or user not in spatial:
        return True
    if _is_tuple(user) or (user.op == "call_function" and user.target is operator.getitem):
        return False
    return op_class(user, owner, spatial, kinds[user] == NHWC) == MIXING


def _is_tuple(node: fx.Node) -> bool:
    """chunk/split give a tuple of maps: its getitem nodes are gated, not the tuple."""
    if node.op == "call_method" and node.target in ("chunk", "split", "unbind"):
        return True
    if node.op == "call_function" and node.target in (torch.chunk, torch.split, torch.unbind):
        return True
    return any(u.op == "call_function" and u.target is operator.getitem for u in node.users) and all(
        u.op == "call_function" and u.target is operator.getitem for u in node.users)
