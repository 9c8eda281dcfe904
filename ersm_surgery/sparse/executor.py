"""Runs the eval graph of a gated stage node by node on rows of kept tokens.

Every spatial node of a gated graph feeds a gate node (``surgery.gating``), so a value either is rows
(a spatial map, switched-off tokens implied zero) or a tensor that is not spatial (a per-image vector, a
constant). Each node is planned once: a convolution (with the BatchNorm after it folded in), a
BatchNorm, a norm over channels, a linear layer, an element-wise op, a spatial mean or an average pool
runs on rows; any other op with a spatial operand runs densely -- the rows are scattered into a zero
map, which is the dense gated map exactly, the op runs, and the gate after it gathers the kept rows
again -- and is listed in :attr:`StageProgram.ran_dense`.
"""
from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..layers import AdaptedMask, EnergyMask
from ..layers.gate import kept_tokens
from ..surgery.gating import GATE_ATTR, NCHW, NHWC, node_kinds
from .conv import (
    RowConv,
    avg_pool_rows,
    avg_pool_supported,
    conv_supported,
    in_place_activation,
    max_pool_rows,
    max_pool_supported,
)
from .fold import AfterFold, bn_affine, fold_bn, is_batchnorm, norm_affine
from .grid import GridSet, Rows
from .inplace import is_timm_drop_path
from .rowops import (
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    NotRowWise,
    group_norm_rows,
    is_elementwise_module,
    segment_mean,
    to_row_operand,
)
from .squeeze_excite import find_squeeze_excites, sole_user

__all__ = ["StageProgram"]

Handler = Callable[[list, dict, GridSet], Any]



class StageProgram:
    """The plan of one gated module's eval graph.

    Args:
        module: the gated :class:`DualGraphModule` (its ``eval_graph`` is run).
        path: the module's name in the model, for the list of ops that ran densely.
    """

    def __init__(self, module: nn.Module, path: str) -> None:
        self.module = module
        self.path = path
        self.graph: fx.Graph = module.eval_graph
        self.ran_dense: set[str] = set()  # ops that had a spatial operand and ran densely
        self.kinds = node_kinds(self.graph, module)
        self._folded: set[fx.Node] = set()
        self._fused: set[fx.Node] = set()  # activations computed by the convolution before them
        # squeeze-excite branches, one step each at their multiply; the branch's other nodes take no step
        self._squeeze_excites = find_squeeze_excites(self.graph, module, self.kinds)
        self._absorbed = {n for se in self._squeeze_excites.values() for n in se.nodes}
        self.steps: list[tuple[fx.Node, Handler]] = [(n, self._plan(n)) for n in self.graph.nodes]
        self._compile()

    # planning --------------------------------------------------------------------------------------
    def _name(self, node: fx.Node) -> str:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return f"{self.path}.{target}" if node.op == "call_module" else f"{self.path}:{node.name} ({target})"

    def _plan(self, node: fx.Node) -> Handler:
        if node in self._absorbed:
            return _never
        if node in self._squeeze_excites:
            return self._plan_squeeze_excite(node)
        if node in self._fused:
            return self._plan_fused(node)
        if node in self._folded:
            return self._plan_folded(node)
        if node.op == "call_module":
            return self._plan_module(node)
        if node.op in ("call_function", "call_method"):
            return self._plan_function(node)
        return self._generic(node)

    def _plan_module(self, node: fx.Node) -> Handler:
        if node.target == GATE_ATTR:
            channels_last = bool(node.kwargs.get("channels_last", False))
            return lambda args, kwargs, grids: _to_rows(args[0], grids, channels_last)
        module = self.module.get_submodule(node.target)
        if isinstance(module, (EnergyMask, AdaptedMask)):
            return lambda args, kwargs, grids: module(*_densify(args), **_densify(kwargs))
        if conv_supported(module):
            return self._plan_conv(node, module)
        if is_batchnorm(module):
            scale, shift = bn_affine(module)
            after = AfterFold(module).forward
            return self._rowwise(node, lambda x, *_: after(torch.addcmul(shift, x.data, scale)), channels_last=False)
        if is_elementwise_module(module):
            # the module's forward itself: a row program calls no hooks (its convolutions are not modules either)
            forward = module.forward
            return self._rowwise(node, lambda x, *_: x.data if isinstance(module, nn.Identity) else forward(x.data))
        if isinstance(module, nn.Linear):
            return self._rowwise(node, lambda x, *_: F.linear(x.data, module.weight, module.bias), channels_last=True)
        if isinstance(module, nn.LayerNorm) or type(module).__name__ == "LayerNorm2d":
            shape_ok = len(module.normalized_shape) == 1
            last = type(module).__name__ != "LayerNorm2d"  # LayerNorm2d norms the channels of an NCHW map
            if shape_ok:
                return self._rowwise(node, lambda x, *_: F.layer_norm(x.data, module.normalized_shape, module.weight,
                                                                     module.bias, module.eps), channels_last=last)
        if isinstance(module, nn.GroupNorm) and type(module).forward is nn.GroupNorm.forward:  # not GroupNormAct
            return self._rowwise(node, lambda x, *_: group_norm_rows(x, module.num_groups, module.weight, module.bias,
                                                                     module.eps), channels_last=False)
        if avg_pool_supported(module):
            return self._on_rows(node, lambda x, grids: avg_pool_rows(module, x, grids), channels_last=False)
        if max_pool_supported(module):
            return self._on_rows(node, lambda x, grids: max_pool_rows(module, x, grids), channels_last=False)
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            return self._on_rows(node, lambda x, grids: segment_mean(x, keepdim=True), channels_last=False)
        return self._generic(node)

    def _plan_conv(self, node: fx.Node, conv: nn.Conv2d) -> Handler:
        row_conv = RowConv.from_module(conv)
        bn_node = sole_user(node)
        if bn_node is not None and bn_node.op == "call_module" and bn_node.target == GATE_ATTR:
            bn_node = sole_user(bn_node)
        bn = self.module.get_submodule(bn_node.target) if bn_node is not None and bn_node.op == "call_module" else None
        if bn is not None and is_batchnorm(bn):
            row_conv = fold_bn(row_conv, bn)
            self._folded.add(bn_node)
            fused = self._fusable_activation(bn_node)
            if fused is not None:
                act_node, activation = fused
                row_conv = dataclasses.replace(row_conv, activation=activation)
                self._fused.add(act_node)
            # if the conv ever runs densely, the norm (folded here, skipped at its own node) runs with it, and the
            # activation fused into it
            scale, shift = (t.reshape(1, -1, 1, 1) for t in bn_affine(bn))
            dense = self._generic(node)

            def fallback(args, kwargs, grids):
                return row_conv.activate(torch.addcmul(shift, dense(args, kwargs, grids), scale))
        else:
            fallback = None
        on_rows = self._on_rows(node, lambda x, grids: row_conv(x, grids), channels_last=False, fallback=fallback)
        if not row_conv.pointwise:
            return on_rows

        def pointwise(args, kwargs, grids):
            x = args[0]
            # a per-image vector (squeeze-excite's (B, C, 1, 1)): one GEMM, not a convolution call per image map
            if len(args) == 1 and not kwargs and row_conv.takes_vectors(x):
                return row_conv.on_vectors(x)
            return on_rows(args, kwargs, grids)
        return pointwise

    def _fusable_activation(self, bn_node: fx.Node) -> tuple[fx.Node, str] | None:
        """(node, name) of the activation a folded norm's value goes to alone (through identities; the norm's own
        when it is timm's BatchNormAct2d) if it has an in-place form (``conv.IN_PLACE_ACTIVATIONS``): the
        convolution's step applies it, one step of the program fewer."""
        after = AfterFold(self.module.get_submodule(bn_node.target))
        if after.drop is not None or after.act is not None:
            name = in_place_activation(after.act) if after.drop is None else None
            return (bn_node, name) if name is not None else None
        node = sole_user(bn_node)
        while node is not None and node.op == "call_module" and len(node.args) == 1 and not node.kwargs \
                and _is_identity(self.module.get_submodule(node.target)):
            node = sole_user(node)
        if node is None or node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return None
        name = in_place_activation(self.module.get_submodule(node.target))
        return (node, name) if name is not None else None

    def _plan_squeeze_excite(self, node: fx.Node) -> Handler:
        """A squeeze-excite branch (:mod:`.squeeze_excite`), read off its map alone (the program passes it only)."""
        se = self._squeeze_excites[node]
        # its map is channels-first by the node kinds it was found with, so rows here are never channels-last
        return lambda args, kwargs, grids: se.on_rows(args[0]) if isinstance(args[0], Rows) else se.dense_value(args[0])

    def _plan_fused(self, node: fx.Node) -> Handler:
        """An activation fused into the convolution before it (its own node, or a folded BatchNormAct2d's): rows
        pass; a dense value (the convolution ran densely, see ``_plan_conv``'s fallback) has had it applied too."""
        return lambda args, kwargs, grids: args[0]

    def _plan_folded(self, node: fx.Node) -> Handler:
        after = AfterFold(self.module.get_submodule(node.target)).forward

        def activation(args, kwargs, grids):
            x = args[0]
            return x.like(after(x.data)) if isinstance(x, Rows) else after(x)
        return activation

    def _plan_function(self, node: fx.Node) -> Handler:
        target = node.target
        if target is kept_tokens:  # the region made its grids from the same kept tokens; the gates need no value
            return lambda args, kwargs, grids: None
        if target == "permute" or target is torch.permute:
            dims = tuple(node.args[1:] if len(node.args) > 2 else node.args[1])

            def permute(args, kwargs, grids):
                x = args[0]
                if not isinstance(x, Rows):
                    return x.permute(*dims)
                return Rows(x.data, x.grid, channels_last=dims == (0, 2, 3, 1))
            return permute
        name = target if node.op == "call_method" else getattr(target, "__name__", "")
        if name == "mean" or target is F.adaptive_avg_pool2d:
            return self._plan_mean(node)
        if target is torch.cat:
            return self._plan_cat(node)
        if (node.op == "call_method" and target in ("split", "chunk")) or target in (torch.split, torch.chunk):
            return self._plan_split(node)
        if target is operator.getitem:
            return self._plan_getitem(node)
        if target is F.batch_norm:
            return self._plan_functional_bn(node)
        if target is F.avg_pool2d or target is F.max_pool2d:
            return self._plan_functional_pool(node)
        if target is F.conv2d or target is torch.conv2d:
            return self._plan_functional_conv(node)
        if target is F.group_norm:  # timm's GroupNorm / GroupNorm1, traced
            return self._rowwise(node, lambda x, *rest, **kw: group_norm_rows(x, *rest, **kw), channels_last=False)
        if target is getattr:
            generic = self._generic(node)
            # shape, ndim, dtype, device of a map in rows, read without making the map (traced norms assert on them)
            return lambda args, kwargs, grids: (_dense_attribute(args[0], args[1]) if isinstance(args[0], Rows)
                                                and args[1] in _DENSE_ATTRIBUTES else generic(args, kwargs, grids))
        if target is F.layer_norm:
            return self._rowwise(node, lambda x, shape, *rest, **kw: F.layer_norm(x.data, shape, *rest, **kw),
                                 channels_last=True)
        if (node.op == "call_method" and target in ELEMENTWISE_METHODS) or (
                node.op == "call_function" and target in ELEMENTWISE_FUNCTIONS):
            return self._elementwise(node)
        return self._generic(node)

    def _plan_mean(self, node: fx.Node) -> Handler:
        generic = self._generic(node)

        def mean(args, kwargs, grids):
            x = args[0]
            if not isinstance(x, Rows):
                return generic(args, kwargs, grids)
            if node.target is F.adaptive_avg_pool2d:
                if args[1] in (1, (1, 1)) and not x.channels_last:
                    return segment_mean(x, keepdim=True)
                return generic(args, kwargs, grids)
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            dims = {d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))} if dims is not None else None
            keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            if dims == ({1, 2} if x.channels_last else {2, 3}) and not kwargs.get("dtype"):
                return segment_mean(x, keepdim=keepdim)
            return generic(args, kwargs, grids)
        return mean

    def _plan_cat(self, node: fx.Node) -> Handler:
        """``torch.cat`` of maps on one grid along their channels (dla's roots, densenet): the rows side by side."""
        generic = self._generic(node)

        def cat(args, kwargs, grids):
            parts = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            if not parts or not all(isinstance(p, Rows) for p in parts):
                return generic(args, kwargs, grids)
            first = parts[0]
            channel_dim = 3 if first.channels_last else 1
            if dim % 4 != channel_dim or any(p.grid is not first.grid or p.channels_last != first.channels_last
                                             for p in parts):
                return generic(args, kwargs, grids)
            return first.like(torch.cat([p.data for p in parts], 1))
        return cat

    def _plan_getitem(self, node: fx.Node) -> Handler:
        """An item of a tuple of rows (a split's parts), or a slice of the channels (ghostnet's ``x[:, :c]``)."""
        generic = self._generic(node)

        def getitem(args, kwargs, grids):
            x, index = args[0], args[1]
            if isinstance(x, (tuple, list)) and not kwargs:
                return x[index]
            channels = _channel_slice(x, index) if isinstance(x, Rows) else None
            return generic(args, kwargs, grids) if channels is None else x.like(x.data[:, channels])
        return getitem

    def _plan_functional_bn(self, node: fx.Node) -> Handler:
        """``F.batch_norm`` with running statistics in eval mode (a traced BatchNormAct2d): the affine map per row."""
        generic = self._generic(node)
        names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")

        def batch_norm(args, kwargs, grids):
            a = {**dict(zip(names, args, strict=False)), **kwargs}
            x = a["input"]
            if (not isinstance(x, Rows) or x.channels_last or a.get("training", False)
                    or a.get("running_mean") is None or a.get("running_var") is None):
                return generic(args, kwargs, grids)
            scale, shift = norm_affine(a["running_mean"], a["running_var"], a.get("weight"), a.get("bias"),
                                       a.get("eps", 1e-5))
            return x.like(torch.addcmul(shift, x.data, scale))
        return batch_norm

    def _plan_functional_pool(self, node: fx.Node) -> Handler:
        """``F.avg_pool2d`` / ``F.max_pool2d`` (inception's branches): as their modules on rows."""
        generic = self._generic(node)
        if node.target is F.avg_pool2d:
            names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
            make, supported, on_rows = nn.AvgPool2d, avg_pool_supported, avg_pool_rows
        else:
            names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            make, supported, on_rows = nn.MaxPool2d, max_pool_supported, max_pool_rows

        def pool(args, kwargs, grids):
            x = args[0]
            if not isinstance(x, Rows) or x.channels_last:
                return generic(args, kwargs, grids)
            module = make(**{**dict(zip(names, args[1:], strict=False)), **kwargs})
            return on_rows(module, x, grids) if supported(module) else generic(args, kwargs, grids)
        return pool

    def _plan_functional_conv(self, node: fx.Node) -> Handler:
        """``F.conv2d`` (a gated module that is a convolution by itself, traced: vgg's ``features.16``): as the module
        on rows, prepared once when its weight is a constant of the graph (a ``get_attr``), else at each call."""
        generic = self._generic(node)
        names = ("weight", "bias", "stride", "padding", "dilation", "groups")
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        constant = isinstance(weight, fx.Node) and weight.op == "get_attr"
        prepared: list[RowConv] = []

        def conv(args, kwargs, grids):
            x = args[0]
            if not isinstance(x, Rows) or x.channels_last:
                return generic(args, kwargs, grids)
            if not prepared or not constant:
                a = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1,
                     **dict(zip(names, args[1:], strict=False)), **kwargs}
                made = RowConv.from_tensors(a["weight"], a["bias"], a["stride"], a["padding"], a["dilation"],
                                            a["groups"])
                if made is None:
                    return generic(args, kwargs, grids)
                prepared[:] = [made]
            return prepared[0](x, grids)
        return conv

    def _plan_split(self, node: fx.Node) -> Handler:
        """``split`` / ``chunk`` of a map along its channels (cspnet's halves): a tuple of rows."""
        generic = self._generic(node)
        name = node.target if node.op == "call_method" else node.target.__name__

        def split(args, kwargs, grids):
            x = args[0]
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            if not isinstance(x, Rows) or len(args) < 2 or dim % 4 != (3 if x.channels_last else 1):
                return generic(args, kwargs, grids)
            parts = getattr(x.data, name)(args[1], dim=1)
            return tuple(x.like(p) for p in parts)
        return split

    # handlers --------------------------------------------------------------------------------------
    def _rowwise(self, node: fx.Node, fn: Callable, channels_last: bool | None = None) -> Handler:
        """``fn(rows, *other args)`` -> row data, when the first operand is rows in the wanted layout."""
        generic = self._generic(node)

        def run(args, kwargs, grids):
            x = args[0]
            if not isinstance(x, Rows) or (channels_last is not None and x.channels_last != channels_last):
                return generic(args, kwargs, grids)
            return x.like(fn(x, *args[1:], **kwargs))
        return run

    def _on_rows(self, node: fx.Node, fn: Callable, channels_last: bool, fallback: Handler | None = None) -> Handler:
        """``fn(rows, grids)`` -> rows (a grid-changing op), when the operand is rows in the wanted layout."""
        generic = fallback or self._generic(node)

        def run(args, kwargs, grids):
            x = args[0]
            if not isinstance(x, Rows) or x.channels_last != channels_last or len(args) > 1 or kwargs:
                return generic(args, kwargs, grids)
            return fn(x, grids)
        return run

    def _elementwise(self, node: fx.Node) -> Handler:
        generic = self._generic(node)
        call = _caller(node)

        def run(args, kwargs, grids):
            like = next((a for a in (*args, *kwargs.values()) if isinstance(a, Rows)), None)
            if like is None:
                return call(args, kwargs)
            try:
                row_args = [to_row_operand(a, like) for a in args]
                row_kwargs = {k: to_row_operand(v, like) for k, v in kwargs.items()}
            except NotRowWise:
                return generic(args, kwargs, grids)
            return like.like(call(row_args, row_kwargs))
        return run

    def _generic(self, node: fx.Node) -> Handler:
        """Run the op as the dense graph does; rows operands are scattered into their dense maps first
        (and the op is listed in ``ran_dense``)."""
        call = _caller(node, self.module)
        name = self._name(node)
        kind = self.kinds.get(node)

        def run(args, kwargs, grids):
            if not any(isinstance(a, Rows) for a in (*_flat(args), *_flat(kwargs))):
                return call(args, kwargs)
            self.ran_dense.add(name)
            out = call(_densify(args), _densify(kwargs))
            # a spatial result goes back to rows at once: what it holds at switched-off tokens is never read
            return _to_rows(out, grids, kind == NHWC) if kind in (NCHW, NHWC) else out
        return run

    # running ---------------------------------------------------------------------------------------
    def _compile(self) -> None:
        """The steps as a flat program over numbered slots: what :meth:`run` executes.

        At batch 1 a gated stage's ops are small and the interpreter's own cost per node counts (convnext_atto's
        stages.2: 126 nodes for 3-4 ms). So each node gets a slot and a function that reads its arguments off the
        slots; a module that is the identity whatever its input (``nn.Identity``, a dropout or drop path of
        probability 0: timm's defaults for ``drop_block``, ``aa``, ``shortcut``, ``drop_path``) takes its input's
        slot instead of a step; a ``get_attr`` (a weight, a layer scale) is read once, here: the program is a
        snapshot of the module's weights like its folded convolutions (call ``sparse`` again after changing them).
        """
        slot: dict[fx.Node, int] = {}
        self._constants: list[tuple[int, Any]] = []
        self._program: list[tuple[int, Handler, Callable, Callable]] = []
        self._inputs: list[tuple[int, Any]] = []  # (slot, default) of each placeholder; the first takes the value
        self._output: Callable | None = None
        size = 0
        for node, handler in self.steps:
            if node.op == "output":
                self._output = _reader(node.args[0], slot)
                break
            if node in self._absorbed:  # computed inside its squeeze-excite's step: no slot, no step
                continue
            if node.op == "call_module" and self._passes_through(node) and node.args \
                    and isinstance(node.args[0], fx.Node) and len(node.args) == 1 and not node.kwargs:
                slot[node] = slot[node.args[0]]
                continue
            slot[node] = size
            size += 1
            if node.op == "placeholder":
                self._inputs.append((slot[node], node.args[0] if node.args else None))
            elif node.op == "get_attr":
                self._constants.append((slot[node], handler([], {}, None)))
            elif node in self._squeeze_excites:
                self._program.append((slot[node], handler, _args_reader((self._squeeze_excites[node].source,), slot),
                                      _kwargs_reader({}, slot)))
            else:
                self._program.append((slot[node], handler, _args_reader(node.args, slot),
                                      _kwargs_reader(node.kwargs, slot)))
        if self._output is None:
            raise RuntimeError("the graph has no output node")
        self._size = size

    def _passes_through(self, node: fx.Node) -> bool:
        module = self.module.get_submodule(node.target)
        if node in self._fused:
            return True
        if node in self._folded:
            after = AfterFold(module)
            return after.drop is None and after.act is None
        return _is_identity(module)

    def run(self, value, grids: GridSet):
        """Run the graph on ``value`` (rows, or the dense input map); returns rows or a dense tensor."""
        vals: list[Any] = [None] * self._size
        for i, (at, default) in enumerate(self._inputs):
            # the module is called with its input alone: any other argument takes its default (the value the
            # tracer fixed, e.g. dla's Tree(x, shortcut=None, children=None))
            vals[at] = _to_rows(value, grids, False) if i == 0 else default
        for at, constant in self._constants:
            vals[at] = constant
        for at, handler, args, kwargs in self._program:
            vals[at] = handler(args(vals), kwargs(vals), grids)
        return self._output(vals)


def _never(args, kwargs, grids):
    raise RuntimeError("a node computed inside another step was run on its own")


def _is_identity(module: nn.Module) -> bool:
    """A module that returns its input unchanged in any mode."""
    if isinstance(module, nn.Identity):
        return True
    if isinstance(module, (nn.Dropout, nn.Dropout2d)):
        return module.p == 0
    if is_timm_drop_path(module):
        return getattr(module, "drop_prob", None) == 0
    return False


def _reader(template, slot: dict[fx.Node, int]) -> Callable[[list], Any]:
    """A function of the slots that builds ``template`` (a node's args or kwargs) with every node's value."""
    return lambda vals: fx.node.map_arg(template, lambda node: vals[slot[node]])


def _args_reader(args: tuple, slot: dict[fx.Node, int]) -> Callable[[list], list]:
    """:func:`_reader` of a node's positional arguments as a new list; without ``map_arg``'s walk where every
    argument is a node or a plain constant (most nodes: at batch 1 the per-node cost is felt)."""
    if any(isinstance(a, (tuple, list, dict, slice)) for a in args):
        read = _reader(args, slot)
        return lambda vals: list(read(vals))
    items = [(True, slot[a]) if isinstance(a, fx.Node) else (False, a) for a in args]
    return lambda vals: [vals[v] if is_node else v for is_node, v in items]


def _kwargs_reader(kwargs: dict, slot: dict[fx.Node, int]) -> Callable[[list], dict]:
    """:func:`_reader` of a node's keyword arguments as a new dict."""
    if not kwargs:
        return lambda vals: {}
    read = _reader(kwargs, slot)
    return lambda vals: dict(read(vals))


_DENSE_ATTRIBUTES = ("shape", "ndim", "dtype", "device", "is_cuda")


def _dense_attribute(x: Rows, name: str):
    """An attribute of the dense map ``x`` stands for."""
    if name in ("shape", "ndim"):
        g, c = x.grid, x.data.shape[1]
        shape = torch.Size((g.batch, g.height, g.width, c) if x.channels_last else (g.batch, c, g.height, g.width))
        return shape if name == "shape" else 4
    return getattr(x.data, name)


def _channel_slice(x: Rows, index) -> slice | None:
    """The channel slice of ``index`` when it takes every image and every token and a slice of the channels."""
    if not isinstance(index, tuple):
        index = (index,)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (4 - len(index) + 1) + index[at + 1:]
    index = index + (slice(None),) * (4 - len(index))
    if len(index) != 4 or not all(isinstance(i, slice) for i in index):
        return None
    channel = 3 if x.channels_last else 1
    full = slice(None)
    if any(i != full for pos, i in enumerate(index) if pos != channel):
        return None
    return index[channel]


def _caller(node: fx.Node, owner: nn.Module | None = None) -> Callable:
    if node.op == "call_module":
        module = owner.get_submodule(node.target)
        return lambda args, kwargs: module(*args, **kwargs)
    if node.op == "call_method":
        method = node.target
        return lambda args, kwargs: getattr(args[0], method)(*args[1:], **kwargs)
    if node.op == "get_attr":
        parts = node.target.split(".")

        def fetch(args, kwargs):
            value = owner
            for part in parts:
                value = getattr(value, part)
            return value
        return fetch
    fn = node.target
    return lambda args, kwargs: fn(*args, **kwargs)


def _to_rows(value, grids: GridSet, channels_last: bool):
    if isinstance(value, Rows) or not isinstance(value, torch.Tensor) or value.dim() != 4:
        return value
    h, w = (value.shape[1], value.shape[2]) if channels_last else (value.shape[2], value.shape[3])
    grid = grids.at(h, w)
    if grid.batch != value.shape[0]:
        return value
    return Rows(grid.gather(value, channels_last), grid, channels_last)


def _flat(args) -> list:
    if isinstance(args, dict):
        args = list(args.values())
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (list, tuple, dict)) else [a])
    return out


def _densify(args):
    if isinstance(args, Rows):
        return args.dense()
    if isinstance(args, dict):
        return {k: _densify(v) for k, v in args.items()}
    if isinstance(args, (list, tuple)):
        return type(args)(_densify(a) for a in args)
    return args

