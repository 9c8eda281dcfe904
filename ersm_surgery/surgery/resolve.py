"""Turning ``--stages`` and ``--nodes`` into :class:`Placement` anchors, with every problem named."""
from __future__ import annotations

import difflib

from torch import nn

from ..errors import NotSpatialError, PlacementError
from ._tracer import trace
from .adapters import create_adapter, find_adapter
from .analysis import analyse, channels_last, classify, feature_info, probe_outputs
from .placement import Placement

__all__ = ["resolve_stages", "resolve_nodes", "find_owner", "parse_stages"]

_ADAPTER_HINT = "install the token-grid adapter plugin (plugins/ersm-token-grid) or choose a (B, C, H, W) stage"


def parse_stages(text: str) -> list[int]:
    """'2,3' -> [2, 3]; raises PlacementError for empty or malformed input."""
    items = [t.strip() for t in (text or "").split(",")]
    if not text or not text.strip() or any(not t for t in items):
        raise PlacementError(f"--stages {text!r} is empty or malformed",
                             "give comma-separated indices, e.g. --stages 2,3")
    bad = [t for t in items if not t.lstrip("-").isdigit()]
    if bad:
        raise PlacementError(f"--stages {text!r}: {', '.join(map(repr, bad))} is not an integer",
                             "give comma-separated indices, e.g. --stages 2,3")
    return [int(t) for t in items]


def resolve_stages(model: nn.Module, stages: list[int], input_size: tuple[int, int, int]) -> list[Placement]:
    """Placements after the outputs of timm ``feature_info`` stages.

    One forward pass with hooks checks each stage output is a (B, C, H, W) map. A stage whose output
    is tokens or channels-last gets the first registered model adapter that claims it (see
    :mod:`.adapters`); its mask is then applied to the stage output by a forward hook (``method
    "module"``), because token models call their blocks with extra arguments (EVA's rotary embedding)
    that a trace of the block alone would freeze.

    Raises:
        PlacementError: out of range or repeated indices (all reported at once).
        NotSpatialError: a stage's output is tokens or channels-last and no registered adapter claims it.
    """
    info = feature_info(model)
    if not info:
        raise PlacementError(f"{type(model).__name__} has no feature_info stages", "place masks with --nodes instead")
    problems = []
    for s in stages:
        if not 0 <= s < len(info):
            problems.append(f"stage {s} is out of range 0..{len(info) - 1}")
    dupes = sorted({s for s in stages if stages.count(s) > 1})
    if dupes:
        problems.append(f"stage(s) {', '.join(map(str, dupes))} given twice")
    if problems:
        raise PlacementError("; ".join(problems), "list the stages with: ersm-surgery inspect MODEL")
    outputs = _probe(model, [info[s]["module"] for s in stages], input_size, info)
    placements = []
    for s in stages:
        d = info[s]
        elements = outputs.get(d["module"]) or [None]
        element = _element(elements, info, s, input_size)
        shape = elements[element]
        status, layout = classify(shape, d["num_chs"], d.get("reduction"), input_size[1], channels_last(model))
        if status == "not spatial":
            found = find_adapter(model, d["module"], shape, layout, input_size)
            if found is None:
                raise NotSpatialError(f"stage {s} ({d['module']}) outputs {layout}, not a (B, C, H, W) map",
                                      _ADAPTER_HINT)
            name, args = found
            placements.append(Placement(module=d["module"], channels=create_adapter(name, **args).channels(shape),
                                        reduction=d.get("reduction"), stage=s, method="module", adapter=name,
                                        adapter_args=args, output=element))
            continue
        if shape is None:
            raise PlacementError(f"stage {s} ({d['module']}) produced no tensor output", "place the mask with --nodes")
        placements.append(Placement(module=d["module"], channels=int(shape[1]), reduction=d.get("reduction"), stage=s,
                                    output=element))
    return placements


def _element(elements: list, info: list[dict], s: int, input_size: tuple[int, int, int]) -> int:
    """Which element of a module's tuple output is stage ``s``'s feature map.

    The elements whose channels (and, for tokens, whose count against the stage's reduction) fit the
    feature_info entry; where several fit (CoaT's parallel scales share a width), the k-th of them for
    the k-th entry naming the same module. 0 for a single output, or when none fits.
    """
    if len(elements) < 2:
        return 0
    d = info[s]
    chs, r = d.get("num_chs"), d.get("reduction") or 1
    area = (input_size[1] // r) * (input_size[2] // r)

    def fits(shape) -> bool:
        if shape is None:
            return False
        if len(shape) == 3:  # tokens: the grid of this reduction, and at most a few class/register tokens
            return shape[2] == chs and 0 <= shape[1] - area <= 16
        return len(shape) == 4 and chs in (shape[1], shape[3])

    fitting = [i for i, shape in enumerate(elements) if fits(shape)]
    rank = [j for j, e in enumerate(info) if e.get("module") == d.get("module")].index(s)
    if not fitting:
        return 0
    return fitting[rank] if len(fitting) > 1 and rank < len(fitting) else fitting[0]


def _probe(model: nn.Module, modules: list[str], input_size: tuple[int, int, int], info: list[dict]) -> dict:
    """Stage output shapes, probed at the smallest input that resolves every stage when the model takes it.

    A 2x-deepest-reduction input costs a fraction of a full-size forward pass; models that insist on
    their own size (window attention, fixed position embeddings), and token stages, whose count of tokens
    does not scale back, are probed at ``input_size``.
    """
    side = 2 * max(int(d.get("reduction") or 1) for d in info)
    sizes = [(input_size[0], side, side)] if side < min(input_size[1:]) else []
    for size in [*sizes, tuple(input_size)]:
        try:
            outputs = probe_outputs(model, modules, size)
        except Exception as exc:  # the model's own forward failed on this input
            error = exc
            continue
        if size != tuple(input_size) and any(s is not None and len(s) == 3 for e in outputs.values() for s in e):
            continue  # a token count does not scale back to input_size (prefix tokens, pooling): probe there
        # channel counts and layouts do not depend on the input size; strides are checked at it
        return {name: [(*s[:2], s[2] * input_size[1] // size[1], *s[3:]) if s is not None and len(s) == 4 else s
                       for s in shapes] for name, shapes in outputs.items()}
    raise PlacementError(f"the model fails on an input of size {tuple(input_size)} ({type(error).__name__}: {error})",
                         "pass --input-size C,H,W that the model accepts") from error


def find_owner(model: nn.Module, node: str) -> str:
    """The deepest module whose own trace contains ``node`` (its caller, for a module node)."""
    modules = dict(model.named_modules())
    parts = node.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:cut])
        if owner not in modules:
            continue
        try:
            _, qualnames = trace(modules[owner], train=False)
        except Exception:  # not traceable on its own: try the enclosing module
            continue
        if node[len(owner) + 1 :] in qualnames.values():
            return owner
    return ""


def resolve_nodes(model: nn.Module, nodes: list[str], input_size: tuple[int, int, int]) -> list[Placement]:
    """Placements after named nodes of the whole-model trace (see ``inspect --all-nodes``).

    Raises:
        PlacementError: a node is unknown (close matches suggested) or repeated, or fx cannot trace.
        NotSpatialError: a node's output is not 4-D.
    """
    analysis = analyse(model, input_size)
    if analysis.method != "fx":
        raise PlacementError(f"fx cannot trace this model ({analysis.trace_error})",
                             "place masks with --stages instead")
    by_name = {c.name: c for c in analysis.candidates}
    problems, not_spatial = [], []
    placements = []
    for name in nodes:
        shape = (analysis.shapes or {}).get(name)
        if name not in by_name and shape is not None:
            not_spatial.append(f"node {name!r} outputs shape {tuple(shape)}, not a (B, C, H, W) map")
            continue
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.5)
            problems.append(f"node {name!r} not found" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            continue
        c = by_name[name]
        owner = find_owner(model, name)
        if not owner:
            problems.append(f"node {name!r} is computed at the model's top level")
            continue
        placements.append(Placement(module=owner, channels=c.channels, reduction=round(c.stride), node=name))
    if nodes and len(set(nodes)) != len(nodes):
        problems.append("a node is given twice")
    if problems or not_spatial:
        error = PlacementError if problems else NotSpatialError
        raise error("; ".join(problems + not_spatial),
                    "list candidate nodes with: ersm-surgery inspect MODEL --all-nodes")
    return placements
