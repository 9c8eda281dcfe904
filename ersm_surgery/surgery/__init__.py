"""torch.fx surgery on timm models: tracing, candidate nodes, stage table, mask insertion."""
from ._tracer import ErsmTracer, register_leaf_module, trace, trace_through, training_mode
from .adapters import (
    ModelAdapter,
    create_adapter,
    find_adapter,
    get_adapter,
    list_adapters,
    register_adapter,
    unregister_adapter,
)
from .analysis import FeatureNode, ModelAnalysis, StageInfo, analyse, feature_info, probe_shapes
from .graph_module import DualGraphModule
from .insert import apply_placements
from .placement import MASK_ATTR_PREFIX, Placement, is_mask_key
from .resolve import find_owner, parse_stages, resolve_nodes, resolve_stages

__all__ = [
    "ModelAdapter",
    "create_adapter",
    "find_adapter",
    "get_adapter",
    "list_adapters",
    "register_adapter",
    "unregister_adapter",
    "ErsmTracer",
    "register_leaf_module",
    "trace",
    "trace_through",
    "training_mode",
    "FeatureNode",
    "ModelAnalysis",
    "StageInfo",
    "analyse",
    "feature_info",
    "probe_shapes",
    "DualGraphModule",
    "apply_placements",
    "MASK_ATTR_PREFIX",
    "Placement",
    "is_mask_key",
    "find_owner",
    "parse_stages",
    "resolve_nodes",
    "resolve_stages",
]
