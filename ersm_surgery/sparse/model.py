"""``ersm_surgery.sparse(model)``: a masked model whose gated stages run on their kept tokens only.

Each gated module (``layer3``; ``blocks.3`` and ``blocks.4`` for efficientnet) is replaced by a
:class:`SparseRegion` that gathers the kept tokens of its input once, runs the module's graph on rows
(:mod:`.executor`) and scatters back once at the end. A batch whose kept fraction is above the
break-even (``DEFAULT_BREAK_EVEN``, measured by benchmarks/bench_sparse.py) runs the dense gated graph
instead: gathering costs more than it saves when almost every token is kept.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn

from ..errors import SparseError
from ..layers import StageGate
from ..layers.gate import kept_tokens
from ..surgery._tracer import register_leaf_module, trace
from ..surgery.gating import GATE_ATTR
from ..surgery.graph_module import DualGraphModule
from .executor import StageProgram
from .fold import fold_batchnorms
from .grid import Grid, GridSet, Rows
from .inplace import adds_in_place
from .max_pool import channels_last_max_pools

__all__ = ["sparse", "SparseRegion", "sparse_regions", "fold_model", "rewrite_dense", "DEFAULT_BREAK_EVEN"]

# above this kept fraction a gated stage runs densely. benchmarks/bench_break_even.py (resnet50 batch 4,
# convnext_atto batch 16, 224 px, 2 threads): every gated stage's sparse path is faster than the same stage
# computed densely with its gates, with a 95% interval above 1, up to 0.7 of its tokens; at 0.8 resnet50's
# layer3 is not (0.96x [0.89, 1.03]). (0.61 before 2026-12-04, from a curve whose last gated stage computed
# fewer tokens than it reported; docs/sparse.md, "The break-even rule".)
DEFAULT_BREAK_EVEN = 0.7

_FIX = "inject with --set mask.gate=stage and fine-tune (ersm-surgery inject MODEL --stages 2,3 --set mask.gate=stage)"


@dataclass
class RegionStats:
    """What the last forward pass of a region did."""

    density: float | None = None
    ran_sparse: bool = False
    calls: int = 0
    sparse_calls: int = 0


@register_leaf_module  # its forward branches on the batch's density: one node when a model around it is traced
class SparseRegion(nn.Module):
    """A gated module run on the kept tokens of its input.

    Args:
        module: the gated DualGraphModule.
        path: its name in the model.
        break_even: kept fraction above which it runs densely.
        fold: fold the BatchNorms into the convolutions of the graphs it runs densely (above the break-even,
            and without gates when every token is kept).
    """

    def __init__(self, module: nn.Module, path: str, break_even: float, fold: bool = True) -> None:
        super().__init__()
        self.path = path
        self.fold = fold
        self.gated = module
        self.source = getattr(module, GATE_ATTR).source
        self.pool = getattr(module, GATE_ATTR).pool
        self.break_even = float(break_even)
        self.stats = RegionStats()
        self.ungated_when_full = True
        self._programs: dict[tuple, StageProgram] = {}
        self._without_gates: nn.Module | None = None
        self._dense_gated: nn.Module | None = None

    def program(self, x: torch.Tensor) -> StageProgram:
        """The row program for ``x``'s device and dtype (planned on first use: folded weights are copies)."""
        key = (x.device, x.dtype)
        if key not in self._programs:
            self._programs[key] = StageProgram(self.gated, self.path)
        return self._programs[key]

    def _ungated(self) -> nn.Module:
        """The module's eval graph with its gate nodes taken out (sharing the module's weights)."""
        if self._without_gates is None:
            self._without_gates = _drop_gates(self.gated)
            if self.fold:  # the gated module's own convolutions are not touched: the graph module holds references
                fold_batchnorms(self._without_gates, [self._without_gates.graph])
            if adds_in_place(self._without_gates, self._without_gates.graph):
                self._without_gates.recompile()
        return self._without_gates

    def _dense(self) -> nn.Module:
        """The eval graph with its gates, run densely above the break-even; with ``fold``, a copy whose norms are
        folded (the gated module itself stays as it is: the row programs plan from it)."""
        if self._dense_gated is None:
            self._dense_gated = self.gated
            if self.fold:
                graph_module = fx.GraphModule(self.gated, copy.deepcopy(self.gated.eval_graph),
                                              class_name=f"Folded{type(self.gated).__name__}")
                if fold_batchnorms(graph_module, [graph_module.graph]):
                    if adds_in_place(graph_module, graph_module.graph):  # a copy: the row programs read the original
                        graph_module.recompile()
                    self._dense_gated = graph_module
        return self._dense_gated

    def dense_ops(self) -> list[str]:
        """Ops that had a spatial operand and ran densely (no row form, or operands it does not fit)."""
        return sorted({name for prog in self._programs.values() for name in prog.ran_dense})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.stats.calls += 1
        usable = not self.training and x.dim() == 4
        if not usable:
            self.stats.density = None
            self.stats.ran_sparse = False
            return self.gated(x)
        mask = kept_tokens(x)
        # the kept tokens' grid, made at once: counting its tokens is the density (no second pass over the mask)
        top = Grid.from_mask(mask)
        density = top.count / mask.numel()
        self.stats.density = density
        if density > self.break_even:
            self.stats.ran_sparse = False
            # every token kept: each gate would multiply by one, so the graph without gates gives the same
            full = density == 1.0 and self.ungated_when_full
            return (self._ungated() if full else self._dense())(x)
        self.stats.ran_sparse = True
        self.stats.sparse_calls += 1
        value = self.program(x).run(x, GridSet(mask, self.pool, top=top))
        return value.dense().contiguous() if isinstance(value, Rows) else value


def _drop_gates(module: nn.Module) -> nn.Module:
    graph = copy.deepcopy(module.eval_graph)
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == GATE_ATTR:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is kept_tokens:
            graph.erase_node(node)
    return fx.GraphModule(module, graph, class_name=f"Ungated{type(module).__name__}")


def _gated(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every gated module."""
    return [(path, module) for path, module in model.named_modules()
            if path and isinstance(getattr(module, GATE_ATTR, None), StageGate)]


def check_sparsable(model: nn.Module) -> None:
    """Raise SparseError (one line with the fix) unless ``model`` has hard, stage-gated masks."""
    from ..recipe import RECIPE_ATTR

    recipe = getattr(model, RECIPE_ATTR, None)
    if recipe is None or not recipe.placements:
        raise SparseError("the model has no ERSM masks, so nothing can be skipped", _FIX)
    if recipe.mask.gate != "stage":
        raise SparseError("the model's masks only multiply their own feature maps (mask.gate=features), "
                          "so the stages after them still read every token", _FIX)
    if recipe.mask.eval_mode != "hard":
        raise SparseError(f"mask.eval_mode is {recipe.mask.eval_mode!r}: a soft mask switches no token off",
                          "set mask.eval_mode=hard")


def sparse(model: nn.Module, break_even: float = DEFAULT_BREAK_EVEN, fold: bool = True) -> nn.Module:
    """A copy of a ``mask.gate=stage`` model whose gated stages run on the kept tokens only.

    The copy computes the same outputs as ``model`` in eval mode (to float rounding: a gathered GEMM
    sums in another order than the dense convolution, a folded BatchNorm rounds its product once) and
    computes as ``model`` does in train mode (its gated stages on the dense gated graph).
    Its weights are a snapshot: call ``sparse`` again after changing ``model``'s weights.

    Args:
        model: a model from ``inject(..., config={"gate": "stage"})``, ``build_model`` or ``load``.
        break_even: kept fraction of a batch above which a gated stage runs densely (1.0: never).
        fold: rewrite the dense parts of the model too (:func:`rewrite_dense`: every BatchNorm that follows a
            convolution folded into it, also in the graph a region runs when every token is kept, and max pools
            computed channels-last on the CPU); the gated stages' row programs always fold. ``rewrite_dense``
            does the same to any model, e.g. the timm model you compare against.

    Raises:
        SparseError: the model has no masks, its masks do not gate (``mask.gate=features``) or are soft.
    """
    check_sparsable(model)
    out = copy.deepcopy(model)
    gated = _gated(out)
    if not gated:
        raise SparseError("the model's masks gate no stage (a mask after the last stage gates nothing)",
                          "place masks before the last stage, e.g. --stages 2,3")
    from ..surgery.insert import set_submodule

    for path, module in gated:
        set_submodule(out, path, SparseRegion(module, path, break_even, fold=fold))
    if fold:
        rewrite_dense(out)
    for module in _graph_modules_outside_regions(out):  # the copy's own eval graphs: the user's model keeps its own
        if adds_in_place(module, module.eval_graph) and module.graph is module.eval_graph:
            module.recompile()
    return out.eval()


def _graph_modules_outside_regions(model: nn.Module) -> list[DualGraphModule]:
    inside_regions = {id(m) for region in sparse_regions(model).values() for m in region.modules()}
    return [m for m in model.modules() if isinstance(m, DualGraphModule) and id(m) not in inside_regions]


def fold_model(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm that is the only user of a convolution's output into that convolution
    (in eval mode; train mode computes as before, see :class:`~.fold.FoldedConv`), outside sparse regions.

    The model's own forward keeps running (its in-place adds and activations stay); fx traces it in both modes
    only to find the pairs. A model fx cannot trace is folded inside its surgery-made graph modules only.
    Returns the number of pairs folded."""
    try:
        graphs = [trace(model, train=False)[0], trace(model, train=True)[0]]
    except Exception:  # noqa: BLE001 - a model fx cannot trace whole runs unfolded outside its graph modules
        graphs = []
    folded = fold_batchnorms(model, graphs)  # no pairs without graphs
    for module in _graph_modules_outside_regions(model):
        folded += fold_batchnorms(module, [module.eval_graph, module.train_graph])
    return folded


def rewrite_dense(model: nn.Module) -> int:
    """The exact rewrites ``sparse`` makes, in place, to the parts of a model outside its sparse regions: every
    BatchNorm that is the only user of a convolution's output folded into it (:func:`fold_model`) and every
    ``nn.MaxPool2d`` computed in channels-last layout on the CPU (:mod:`.max_pool`; torch's kernel for
    channels-first maps is several times slower). Neither is what the masks buy: ``bench`` applies it to the timm
    model it compares against too ("vs folded"). Returns the number of modules rewritten."""
    inside = {id(m) for region in sparse_regions(model).values() for m in region.modules()}
    return fold_model(model) + channels_last_max_pools(model, skip=inside)


def sparse_regions(model: nn.Module) -> dict[str, SparseRegion]:
    """The sparse regions of a model from :func:`sparse`, by the path of their module."""
    return {path: m for path, m in model.named_modules() if isinstance(m, SparseRegion)}
