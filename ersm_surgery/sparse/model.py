"""``ersm_surgery.sparse(model)``: a masked model whose gated stages run on their kept tokens only.

Each run of gated modules (``layer3``; or ``blocks.3`` + ``blocks.4`` for efficientnet) is replaced by
a :class:`SparseRegion` that gathers the kept tokens of its input once, runs every module's graph on
rows (:mod:`.executor`) and scatters back once at the end. A batch whose kept fraction is above the
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
from ..surgery.gating import GATE_ATTR
from .executor import StageProgram
from .grid import GridSet, Rows

__all__ = ["sparse", "SparseRegion", "sparse_regions", "DEFAULT_BREAK_EVEN"]

# above this kept fraction a gated stage runs densely (benchmarks/bench_sparse.py measures where the
# sparse resnet50 stages stop being faster than the dense gated ones; docs/sparse.md)
DEFAULT_BREAK_EVEN = 0.85

_FIX = "inject with --set mask.gate=stage and fine-tune (ersm-surgery inject MODEL --stages 2,3 --set mask.gate=stage)"


@dataclass
class RegionStats:
    """What the last forward pass of a region did."""

    density: float | None = None
    ran_sparse: bool = False
    calls: int = 0
    sparse_calls: int = 0


class SparseRegion(nn.Module):
    """Gated modules run on the kept tokens of the mask that gates them.

    Args:
        modules: (path, gated DualGraphModule) in the order the model runs them.
        source: the mask layer whose mask gates them.
        break_even: kept fraction above which the region runs densely.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]], source: nn.Module, break_even: float) -> None:
        super().__init__()
        self.paths = [p for p, _ in modules]
        self.gated = nn.ModuleList([m for _, m in modules])
        object.__setattr__(self, "source", source)  # a reference: the mask lives in its own stage
        self.break_even = float(break_even)
        self.stats = RegionStats()
        self.ungated_when_full = True
        self._programs: dict[tuple, list[StageProgram]] = {}
        self._without_gates: list[nn.Module] | None = None

    def _ungated(self) -> list[nn.Module]:
        """Each gated module's eval graph with its gate nodes taken out (sharing the module's weights)."""
        if self._without_gates is None:
            self._without_gates = [_drop_gates(m) for m in self.gated]
        return self._without_gates

    def programs(self, x: torch.Tensor) -> list[StageProgram]:
        """The row programs for ``x``'s device and dtype (planned on first use: folded weights are copies)."""
        key = (x.device, x.dtype)
        if key not in self._programs:
            self._programs[key] = [StageProgram(m, p) for p, m in zip(self.paths, self.gated, strict=True)]
        return self._programs[key]

    def dense_ops(self) -> list[str]:
        """Ops that had a spatial operand and ran densely (no row form, or operands it does not fit)."""
        return sorted({name for programs in self._programs.values() for prog in programs for name in prog.ran_dense})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = getattr(self.source, "state", None)
        mask = state.mask if state is not None else None
        self.stats.calls += 1
        usable = (not self.training and mask is not None and x.dim() == 4 and mask.shape[0] == x.shape[0]
                  and tuple(mask.shape[-2:]) == tuple(x.shape[-2:]))
        density = float(mask.float().mean()) if usable else None
        self.stats.density = density
        if not usable or density > self.break_even:
            self.stats.ran_sparse = False
            # every token kept: each gate would multiply by one, so the graphs without gates give the same
            for module in self._ungated() if density == 1.0 and self.ungated_when_full else self.gated:
                x = module(x)
            return x
        self.stats.ran_sparse = True
        self.stats.sparse_calls += 1
        grids = GridSet(mask.to(x.dtype))
        value = x
        for program in self.programs(x):
            value = program.run(value, grids)
        return value.dense().contiguous() if isinstance(value, Rows) else value


def _drop_gates(module: nn.Module) -> nn.Module:
    graph = copy.deepcopy(module.eval_graph)
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == GATE_ATTR:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    return fx.GraphModule(module, graph, class_name=f"Ungated{type(module).__name__}")


class _RunByRegion(nn.Module):
    """Stands where a gated module that its region runs used to be: passes the region's output on."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"run by the sparse region before it ({self.path})"


def _gated(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(path, module, source mask) of every gated module, in the model's order."""
    out = []
    for path, module in model.named_modules():
        gate = getattr(module, GATE_ATTR, None)
        if isinstance(gate, StageGate) and path:
            out.append((path, module, gate.source))
    return out


def _regions(gated: list[tuple[str, nn.Module, nn.Module]]) -> list[list[tuple[str, nn.Module, nn.Module]]]:
    """Consecutive sibling modules gated by one mask form one region (scatter once at its end)."""
    regions: list[list] = []
    for item in gated:
        prev = regions[-1][-1] if regions else None
        if prev is not None and prev[2] is item[2] and prev[0].rpartition(".")[0] == item[0].rpartition(".")[0]:
            regions[-1].append(item)
        else:
            regions.append([item])
    return regions


def _check(model: nn.Module) -> None:
    from ..api import RECIPE_ATTR

    recipe = getattr(model, RECIPE_ATTR, None)
    if recipe is None or not recipe.placements:
        raise SparseError("the model has no ERSM masks, so nothing can be skipped", _FIX)
    if recipe.mask.gate != "stage":
        raise SparseError("the model's masks only multiply their own feature maps (mask.gate=features), "
                          "so the stages after them still read every token", _FIX)
    if recipe.mask.eval_mode != "hard":
        raise SparseError(f"mask.eval_mode is {recipe.mask.eval_mode!r}: a soft mask switches no token off",
                          "set mask.eval_mode=hard")


def sparse(model: nn.Module, break_even: float = DEFAULT_BREAK_EVEN) -> nn.Module:
    """A copy of a ``mask.gate=stage`` model whose gated stages run on the kept tokens only.

    The copy computes the same outputs as ``model`` in eval mode (to float rounding: a gathered GEMM
    sums in another order than the dense convolution) and runs its dense gated graph in train mode.
    Its weights are a snapshot: call ``sparse`` again after changing ``model``'s weights.

    Args:
        model: a model from ``inject(..., config={"gate": "stage"})``, ``build_model`` or ``load``.
        break_even: kept fraction of a batch above which a gated stage runs densely (1.0: never).

    Raises:
        SparseError: the model has no masks, its masks do not gate (``mask.gate=features``) or are soft.
    """
    _check(model)
    out = copy.deepcopy(model)
    gated = _gated(out)
    if not gated:
        raise SparseError("the model's masks gate no stage (a mask after the last stage gates nothing)",
                          "place masks before the last stage, e.g. --stages 2,3")
    from ..surgery.insert import set_submodule

    for region in _regions(gated):
        (first, _, source), rest = region[0], region[1:]
        set_submodule(out, first, SparseRegion([(p, m) for p, m, _ in region], source, break_even))
        for path, _, _ in rest:
            set_submodule(out, path, _RunByRegion(path))
    return out.eval()


def sparse_regions(model: nn.Module) -> dict[str, SparseRegion]:
    """The sparse regions of a model from :func:`sparse`, by the path of their first module."""
    return {path: m for path, m in model.named_modules() if isinstance(m, SparseRegion)}
