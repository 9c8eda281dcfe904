"""Inserting Energy-Mask layers at resolved placements.

The preferred method edits the graph of the smallest module that holds the anchor: the stage
module for a stage, the module whose forward computes the node for a node. That module is traced
once per mode and replaced in its parent by a :class:`DualGraphModule`, so the rest of the timm model
(its class, ``forward_head``, ``pretrained_cfg``, ``feature_info``) is untouched and the state dict
keeps timm's keys plus ``*.ersm_mask*`` entries. Where fx cannot trace that module, the mask is
applied by a forward hook on the module instead ("module" method).
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict

from torch import fx, nn

from ..errors import ArtifactError, PlacementError
from ..layers import AdaptedMask, EnergyMask, MaskConfig, StageGate
from ._tracer import trace
from .adapters import create_adapter
from .gating import GATE_ATTR, gated_modules, insert_gates
from .graph_module import DualGraphModule
from .placement import MASK_ATTR_PREFIX, Placement

__all__ = ["apply_placements", "mask_output_hook", "set_submodule", "create_mask"]

_log = logging.getLogger(__name__)


def mask_output_hook(module: nn.Module, _args: tuple, output):
    """Forward hook of the "module" method: mask the module's output with its ``ersm_mask`` child."""
    masks = getattr(module, "_ersm_outputs", {0: MASK_ATTR_PREFIX})
    if isinstance(output, (list, tuple)):
        items = list(output)
        for k, attr in masks.items():
            items[k] = getattr(module, attr)(items[k])
        return type(output)(items)
    return getattr(module, masks[0])(output)


def create_mask(p: Placement, config: MaskConfig) -> nn.Module:
    """The mask layer of one placement: an :class:`EnergyMask`, behind its adapter when it names one."""
    mask = EnergyMask(p.channels, dataclasses.replace(config), p.hidden)
    if p.adapter is None:
        return mask
    try:
        adapter = create_adapter(p.adapter, **p.adapter_args)
    except KeyError as exc:
        raise PlacementError(f"{p.label} needs the model adapter {p.adapter!r}, which is not registered",
                             "install the plugin that provides it (see: ersm-surgery plugins)") from exc
    return AdaptedMask(adapter, mask)


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (works for Sequential/ModuleList children too)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def _edit_graph(graph: fx.Graph, qualnames: dict[fx.Node, str], items: list[Placement], owner: str) -> None:
    by_name = {q: n for n, q in qualnames.items()}
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    for p in items:
        if p.local_node is None:
            _mask_output(graph, output, p.attr, owner, p.output)
            continue
        anchor = by_name.get(p.local_node)
        if anchor is None:
            raise PlacementError(f"node {p.node!r} is not in the trace of {owner!r}",
                                 "list nodes with inspect --all-nodes")
        with graph.inserting_after(anchor):
            masked = graph.call_module(p.attr, (anchor,))
        anchor.replace_all_uses_with(masked, delete_user_cb=lambda user, m=masked: user is not m)
    graph.lint()


def _mask_output(graph: fx.Graph, output: fx.Node, attr: str, owner: str, index: int = 0) -> None:
    """Mask what a module returns: the tensor, or element ``index`` of a returned list (the first: selecsls)."""
    result = output.args[0]
    if isinstance(result, fx.Node):
        with graph.inserting_before(output):
            output.args = (graph.call_module(attr, (result,)),)
        return
    if isinstance(result, (list, tuple)) and len(result) > index and isinstance(result[index], fx.Node):
        with graph.inserting_before(output):
            masked = graph.call_module(attr, (result[index],))
        output.args = (type(result)([*result[:index], masked, *result[index + 1:]]),)
        return
    raise PlacementError(f"the output of {owner!r} is not a tensor ({type(result).__name__})",
                         "place the mask after a node inside it with --nodes")


def _insert_fx(
    owner: nn.Module, owner_path: str, items: list[tuple[Placement, nn.Module]], gate_source: str | None = None,
    gate_pool: str = "sample",
) -> DualGraphModule:
    graphs = {}
    for mode in (True, False):
        graph, qualnames = trace(owner, train=mode)
        if gate_source is not None:  # gates first: a mask at this module's output then masks the gated map
            insert_gates(graph, owner, pass_on=gate_pool if mode else None)
        _edit_graph(graph, qualnames, [p for p, _ in items], owner_path)
        graphs[mode] = graph
    new = DualGraphModule(owner, graphs[True], graphs[False])
    for p, mask in items:
        new.add_module(p.attr, mask)
    if gate_source is not None:
        new.add_module(GATE_ATTR, StageGate(gate_source, gate_pool))
    return new


class _HidesMask:
    """Mixed into a hooked nn.Sequential: its mask child is not one of the layers it runs in turn.

    Sequential's forward (and timm's SequentialList, HRNet's stages) calls every child in order, so the
    mask added as a child would be called as one more layer.
    """

    def _layers(self) -> list[nn.Module]:
        return [m for name, m in self._modules.items() if not name.startswith(MASK_ATTR_PREFIX)]

    def __iter__(self):
        return iter(self._layers())

    def __len__(self) -> int:
        return len(self._layers())

    def __getitem__(self, idx):
        layers = self._layers()
        return nn.Sequential(*layers[idx]) if isinstance(idx, slice) else layers[idx]


_hiding_classes: dict[type, type] = {}


def _hide_mask(module: nn.Module) -> None:
    cls = type(module)
    if not isinstance(module, nn.Sequential) or isinstance(module, _HidesMask):
        return
    if cls not in _hiding_classes:
        _hiding_classes[cls] = type(cls.__name__, (_HidesMask, cls), {"__module__": cls.__module__})
    module.__class__ = _hiding_classes[cls]


def _insert_hook(module: nn.Module, mask: nn.Module, p: Placement) -> None:
    _hide_mask(module)
    module.add_module(p.attr, mask)
    module._ersm_outputs = {**getattr(module, "_ersm_outputs", {}), p.output: p.attr}
    if not getattr(module, "_ersm_hooked", False):  # one hook applies every mask of the module
        module.register_forward_hook(mask_output_hook)
    module._ersm_hooked = True


def apply_placements(
    model: nn.Module, placements: list[Placement], config: MaskConfig, fallback: bool = True
) -> list[Placement]:
    """Insert one :class:`EnergyMask` per placement, in place.

    Placements sharing a module are inserted in one trace; deeper modules go first so that an outer
    trace sees the inner masked module as one leaf node.

    Args:
        model: the timm model (edited in place).
        placements: resolved anchors (see :mod:`.resolve`).
        config: the layers' hyper-parameters.
        fallback: when fx cannot trace a module, use a forward hook (and record ``method="module"``);
            when False (rebuilding from a recipe), the recorded method must work.

    Returns:
        The placements with the method actually used.

    Raises:
        PlacementError: an anchor cannot be found or masked.
        ArtifactError: a recorded fx placement cannot be rebuilt (a different timm version, say).
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(placements):
        groups[p.module].append(i)
    gates = gated_modules(model, placements) if config.gate == "stage" else {}
    for path in gates:
        groups.setdefault(path, [])
    made = {i: create_mask(p, config) for i, p in enumerate(placements)}
    source = {path: p.path for path, p in gates.items()}
    done = list(placements)
    for owner_path in sorted(groups, key=lambda path: -path.count(".") - (1 if path else 0)):
        fx_idx = [i for i in groups[owner_path] if placements[i].method == "fx"]
        hook_idx = [i for i in groups[owner_path] if placements[i].method == "module"]
        if fx_idx or owner_path in source:
            try:
                _replace_with_fx(model, owner_path, [(placements[i], made[i]) for i in fx_idx], source.get(owner_path),
                                 config.gate_pool)
            except PlacementError:
                raise
            except Exception as exc:  # fx raises many types; each means "this module is not traceable"
                if not fallback:
                    raise ArtifactError(f"fx cannot rebuild the mask in {owner_path!r}: {exc}",
                                        "use the timm version the model was saved with") from exc
                if owner_path in source:
                    raise PlacementError(f"mask.gate=stage: fx cannot trace the gated module {owner_path!r} ({exc})",
                                         "use mask.gate=features for this model") from exc
                _log.warning("fx cannot trace %s (%s); masking with a forward hook instead", owner_path, exc)
                for i in fx_idx:
                    done[i] = _as_hook_placement(model, placements[i], owner_path, exc)
                hook_idx += fx_idx
        for i in hook_idx:
            p = done[i]
            _insert_hook(model.get_submodule(p.module), made[i], p)
    return done


def _replace_with_fx(
    model: nn.Module, owner_path: str, masks: list[tuple[Placement, nn.Module]], gate_source: str | None,
    gate_pool: str = "sample",
) -> None:
    if not owner_path:
        raise PlacementError("a mask at the model's top level cannot be inserted",
                             "choose a node inside a submodule (see inspect --all-nodes)")
    owner = model.get_submodule(owner_path)
    set_submodule(model, owner_path, _insert_fx(owner, owner_path, masks, gate_source, gate_pool))


def _as_hook_placement(model: nn.Module, p: Placement, owner_path: str, exc: Exception) -> Placement:
    """The same anchor done by a forward hook: on the stage module, or on the node's own module."""
    if p.stage is not None:
        return Placement(**{**p.to_dict(), "method": "module"})
    names = dict(model.named_modules())
    if p.node in names:
        return Placement(**{**p.to_dict(), "module": p.node, "method": "module"})
    raise PlacementError(
        f"fx cannot trace {owner_path!r} ({type(exc).__name__}), so node {p.node!r} cannot be masked",
        "mask the stage with --stages, or choose a node that is a module call",
    ) from exc
