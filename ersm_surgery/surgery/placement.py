"""Where a mask sits: an anchor with meaningful names (never FX's automatic ones)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..layers.config import check_known_keys

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
        adapter: registered model adapter (see ``surgery.adapters``) that gives the stage output a
            (B, C, H, W) view, for token and channels-last stages; None for a (B, C, H, W) output.
        adapter_args: the adapter's settings, recorded so that a rebuild makes the same adapter.
        output: for a module that returns a tuple or list (CrossViT's two branches, TNT's pixel and patch
            tokens, CoaT's parallel scales), the element that is this stage's feature map; 0 otherwise.
    """

    module: str
    channels: int
    reduction: int | None = None
    stage: int | None = None
    node: str | None = None
    hidden: int = 16
    method: str = "fx"
    adapter: str | None = None
    adapter_args: dict[str, Any] = field(default_factory=dict)
    output: int = 0

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
        """Attribute name of the mask inside ``module`` (``ersm_mask``, ``ersm_mask_output<k>``, ``ersm_mask_<node>``).

        With the "module" method ``module`` is the hooked module itself, so the mask is its
        ``ersm_mask`` child (``ersm_mask_output<k>`` for element k of a tuple output, so that two stages
        that end in one module each get their own); with "fx" a node inside ``module`` gets its own
        suffixed name.
        """
        local = self.local_node
        if self.method == "module" or local is None:
            return f"{MASK_ATTR_PREFIX}_output{self.output}" if self.output else MASK_ATTR_PREFIX
        return f"{MASK_ATTR_PREFIX}_{local.replace('.', '_')}"

    @property
    def path(self) -> str:
        """Qualified name of the mask module in the model."""
        return f"{self.module}.{self.attr}" if self.module else self.attr

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.adapter is None and not self.adapter_args:  # recipes of (B, C, H, W) placements stay as they were
            del d["adapter"], d["adapter_args"]
        if not self.output:  # and those of single-output modules too
            del d["output"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Placement:
        check_known_keys(cls, data, "placement key(s)")
        missing = [k for k in ("module", "channels") if k not in data]
        if missing:
            raise ValueError(f"placement lacks {', '.join(missing)}")
        p = cls(**{**data, "adapter_args": data.get("adapter_args") or {}})
        if not isinstance(p.adapter_args, dict) or (p.adapter is None and p.adapter_args):
            raise ValueError(f"placement adapter_args must be a mapping for a named adapter, got {p.adapter_args!r}")
        if p.method not in METHODS:
            raise ValueError(f"placement method must be one of {', '.join(METHODS)}, got {p.method!r}")
        if not isinstance(p.output, int) or isinstance(p.output, bool) or p.output < 0:
            raise ValueError(f"placement output must be an element index >= 0, got {p.output!r}")
        if (p.stage is None) == (p.node is None):
            raise ValueError("a placement names exactly one of stage or node")
        return p


def is_mask_key(key: str) -> bool:
    """True for state-dict keys that belong to a mask layer."""
    return any(part.startswith(MASK_ATTR_PREFIX) for part in key.split("."))
