"""Where a mask sits: an anchor with meaningful names (never FX's automatic ones)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Placement", "METHODS", "MASK_ATTR_PREFIX", "is_mask_key"]

METHODS = ("fx", "module")
# every mask is registered under an attribute starting with this, so the masks can be told
# apart from timm's own weights (and stripped) by name alone
MASK_ATTR_PREFIX = "ersm_mask"


@dataclass
class Placement:
    """One mask layer's anchor.

    Attributes:
        stage: timm ``feature_info`` index when placed after a stage, else None.
        node: node qualname in the whole-model trace (as ``timm.layers.get_graph_node_names`` names
            it, e.g. ``layer3.2.act3``) when placed after a node, else None.
        module: the module that ends the stage, or the module whose forward holds the node.
        channels: C of the masked feature map.
        reduction: stride of the feature map relative to the input.
        hidden: width of the mask's unary head.
        method: "fx" (a mask node in the module's graph) or "module" (a forward hook on the module).
    """

    module: str
    channels: int
    reduction: int | None = None
    stage: int | None = None
    node: str | None = None
    hidden: int = 16
    method: str = "fx"

    @property
    def label(self) -> str:
        """Human-readable anchor: ``stage 2 (layer2)`` or ``node layer3.2.act3``."""
        return f"stage {self.stage} ({self.module})" if self.stage is not None else f"node {self.node}"

    @property
    def local_node(self) -> str | None:
        """The node's qualname inside ``module`` (None for a stage: the mask goes at its output)."""
        if self.node is None:
            return None
        return self.node[len(self.module) + 1 :] if self.module else self.node

    @property
    def attr(self) -> str:
        """Attribute name of the mask inside ``module`` (``ersm_mask`` or ``ersm_mask_<node>``).

        With the "module" method ``module`` is the hooked module itself, so the mask is its
        ``ersm_mask`` child; with "fx" a node inside ``module`` gets its own suffixed name.
        """
        local = self.local_node
        if self.method == "module" or local is None:
            return MASK_ATTR_PREFIX
        return f"{MASK_ATTR_PREFIX}_{local.replace('.', '_')}"

    @property
    def path(self) -> str:
        """Qualified name of the mask module in the model."""
        return f"{self.module}.{self.attr}" if self.module else self.attr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown placement key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        missing = [k for k in ("module", "channels") if k not in data]
        if missing:
            raise ValueError(f"placement lacks {', '.join(missing)}")
        p = cls(**data)
        if p.method not in METHODS:
            raise ValueError(f"placement method must be one of {', '.join(METHODS)}, got {p.method!r}")
        if (p.stage is None) == (p.node is None):
            raise ValueError("a placement names exactly one of stage or node")
        return p


def is_mask_key(key: str) -> bool:
    """True for state-dict keys that belong to a mask layer."""
    return any(part.startswith(MASK_ATTR_PREFIX) for part in key.split("."))
