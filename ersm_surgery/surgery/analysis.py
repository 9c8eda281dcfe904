"""What a model offers for masking: candidate feature-map nodes and the stage table.

The whole model is traced once in eval mode and shapes are propagated on an example input with
``torch.fx.passes.shape_prop``. Stages are timm's ``feature_info`` entries, each checked against the
propagated shape of the node that ends it.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ._tracer import trace, training_mode

__all__ = [
    "FeatureNode", "StageInfo", "ModelAnalysis", "analyse", "feature_info", "stage_module", "probe_shapes",
    "probe_outputs", "classify", "channels_last",
]

_log = logging.getLogger(__name__)


@dataclass
class FeatureNode:
    """A node of the traced model whose output is a 4-D (B, C, H, W) tensor."""

    name: str
    op: str
    target: str
    channels: int
    height: int
    width: int
    stride: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StageInfo:
    """One ``feature_info`` stage and what the trace or probe found at its end.

    Attributes:
        status: "ok" (a (B, C, H, W) map with the advertised channels and stride), "mismatch"
            (spatial, but channels or stride differ from feature_info), "not spatial" (3-D tokens or
            channels-last), or "unknown" (its shape could not be found).
    """

    index: int
    module: str
    channels: int
    reduction: int | None
    node: str | None
    shape: tuple[int, ...] | None
    status: str
    layout: str | None = None

    @property
    def spatial(self) -> bool:
        return self.status in ("ok", "mismatch")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d


@dataclass
class ModelAnalysis:
    """Result of :func:`analyse`."""

    input_size: tuple[int, int, int]
    method: str
    stages: list[StageInfo]
    candidates: list[FeatureNode]
    trace_error: str | None = None
    shapes: dict[str, tuple[int, ...]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "method": self.method,
            "trace_error": self.trace_error,
            "stages": [s.to_dict() for s in self.stages],
            "candidates": [c.to_dict() for c in self.candidates],
        }


def feature_info(model: nn.Module) -> list[dict[str, Any]]:
    """timm's feature_info as a list of dicts (empty when the model has none), each naming a module that runs.

    A few timm models name modules they do not have (Twins and MViTv2 list ``block.N``; their stages are
    ``blocks.N``, ``stages.N``), and a stage that is a ModuleList is never called itself: such entries are
    repaired by :func:`stage_module`.
    """
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    dicts = list(info.get_dicts()) if hasattr(info, "get_dicts") else [dict(d) for d in info]
    return [{**d, "module": stage_module(model, d["module"])} if isinstance(d.get("module"), str) else d
            for d in dicts]


def stage_module(model: nn.Module, name: str) -> str:
    """The module that ends the stage ``name``: itself, a plural spelling of it, the one module whose path ends
    with it, or (for a ModuleList) its last member."""
    module = _submodule(model, name)
    if module is None:
        # a wrapper around the network (Gemma4's classifier holds the encoder that has the blocks)
        inside = [n for n, _ in model.named_modules() if n.endswith(f".{name}")]
        if len(inside) == 1:
            name, module = inside[0], model.get_submodule(inside[0])
    if module is None:
        head, _, rest = name.partition(".")
        for alt in dict.fromkeys((f"{head}s", "stages", "blocks", "layers")):
            candidate = f"{alt}.{rest}" if rest else alt
            module = _submodule(model, candidate)
            if module is not None:
                name = candidate
                break
        else:
            return name  # left as timm names it: resolving the stage reports it in one line
    while isinstance(module, nn.ModuleList) and len(module):
        name, module = f"{name}.{len(module) - 1}", module[-1]
    return name


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def channels_last(model: nn.Module) -> bool:
    """timm marks models whose stages run channels-last (Swin, MambaOut) with output_fmt 'NHWC'."""
    return str(getattr(model, "output_fmt", "")).upper() == "NHWC"


def classify(
    shape: tuple[int, ...] | None, channels: int, reduction: int | None, in_h: int, nhwc_model: bool = False
) -> tuple[str, str | None]:
    """(status, layout) of a stage output shape against feature_info's channels and reduction.

    A shape like (1, 16, 16, 16) reads both ways; ``nhwc_model`` (see :func:`channels_last`) decides.
    """
    if shape is None:
        return "unknown", None
    if len(shape) == 3:
        return "not spatial", "tokens (B, N, C)"
    if len(shape) != 4:
        return "not spatial", f"{len(shape)}-D"
    if shape[3] == channels and (shape[1] != channels or nhwc_model):
        return "not spatial", "channels-last (B, H, W, C)"
    stride_ok = reduction is None or shape[2] * reduction == in_h
    return ("ok" if shape[1] == channels and stride_ok else "mismatch"), "NCHW"


def probe_shapes(model: nn.Module, modules: list[str], input_size: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Output shapes of the named modules on one zero image, by forward hooks, in eval mode.

    A module that returns a tuple or list is represented by its first element (selecsls passes its
    feature map first); :func:`probe_outputs` gives every element.
    """
    return {name: shapes[0] for name, shapes in probe_outputs(model, modules, input_size).items() if shapes[0]}


def probe_outputs(model: nn.Module, modules: list[str], input_size: tuple[int, int, int]
                  ) -> dict[str, list[tuple[int, ...] | None]]:
    """The shape of every element a named module returns (one for a tensor; None for a non-tensor element)."""
    shapes: dict[str, list[tuple[int, ...] | None]] = {}
    handles = []

    def record(name: str):
        def hook(_module, _args, output):
            items = list(output) if isinstance(output, (list, tuple)) else [output]
            if items:
                shapes[name] = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in items]

        return hook

    try:
        for name in modules:
            handles.append(model.get_submodule(name).register_forward_hook(record(name)))
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")
        with training_mode(model, False), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _stage_end_node(names: list[str], module: str) -> str | None:
    inside = [n for n in names if n == module or n.startswith(module + ".")]
    return inside[-1] if inside else None


def analyse(model: nn.Module, input_size: tuple[int, int, int]) -> ModelAnalysis:
    """Trace ``model`` (eval mode), propagate shapes and build the stage table and candidate list.

    Where fx cannot trace the model, the stage table comes from forward hooks on the stage modules and
    no candidate nodes are listed (``method == "module"``, ``trace_error`` says why).
    """
    info = feature_info(model)
    in_h = input_size[1]
    try:
        graph, qualnames = trace(model, train=False)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...); all mean "not traceable"
        _log.info("fx could not trace %s: %s", type(model).__name__, exc)
        shapes = probe_shapes(model, [d["module"] for d in info], input_size)
        stages = []
        for i, d in enumerate(info):
            status, layout = classify(shapes.get(d["module"]), d["num_chs"], d.get("reduction"), in_h,
                                      channels_last(model))
            stages.append(StageInfo(i, d["module"], d["num_chs"], d.get("reduction"), None,
                                    shapes.get(d["module"]), status, layout))
        return ModelAnalysis(tuple(input_size), "module", stages, [], trace_error=f"{type(exc).__name__}: {exc}")

    gm = fx.GraphModule(model, graph)
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")
    with training_mode(gm, False), torch.no_grad():
        ShapeProp(gm).propagate(x)

    shapes: dict[str, tuple[int, ...]] = {}
    candidates = []
    for node in graph.nodes:
        meta = node.meta.get("tensor_meta")
        name = qualnames.get(node)
        if name is None or node.op in ("placeholder", "output", "get_attr") or not hasattr(meta, "shape"):
            continue
        shape = tuple(meta.shape)
        shapes[name] = shape
        if len(shape) == 4:
            target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            candidates.append(FeatureNode(name, node.op, target, shape[1], shape[2], shape[3], in_h / shape[2]))

    names = [qualnames[n] for n in graph.nodes if n in qualnames]
    stages = []
    for i, d in enumerate(info):
        end = _stage_end_node(names, d["module"])
        shape = shapes.get(end) if end else None
        status, layout = classify(shape, d["num_chs"], d.get("reduction"), in_h, channels_last(model))
        stages.append(StageInfo(i, d["module"], d["num_chs"], d.get("reduction"), end, shape, status, layout))
    return ModelAnalysis(tuple(input_size), "fx", stages, candidates, shapes=shapes)
