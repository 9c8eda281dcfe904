"""A pull of the mask layers towards the values they started the run with (``finetune.mask_pull``).

The loss gets ``mask_pull * sum ||theta - theta_0||^2`` over the mask layers' trainable parameters (L2-SP,
Li et al. 2018, applied to the masks only). The price alone has no equilibrium in a fine-tuning's length:
the masks keep closing for as long as they learn, so their density is set by how many updates they get
(docs/finetune.md). The pull is a restoring force that grows as the masks move, so they stop where it
balances the price and the task; it never reads the density, and a token is still kept or dropped per image.
Weight decay never reaches the masks (``train.optim``), so this is their only anchor.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from ..mask_set import MaskSet

__all__ = ["MaskPull"]

_log = logging.getLogger(__name__)


class MaskPull:
    """The pull's weight and anchor; :meth:`penalty` is the loss term.

    Args:
        weight: ``finetune.mask_pull`` (None or 0: no pull, no anchor kept).
        layers: the run's mask layers; the anchor is their parameters' values now, when the run starts.
    """

    def __init__(self, weight: float | None, layers: MaskSet) -> None:
        self.weight = float(weight or 0.0)
        self.layers = layers
        self.anchor = {name: p.detach().clone() for name, p in self._parameters()} if self.active else {}

    @property
    def active(self) -> bool:
        return self.weight > 0 and len(self.layers) > 0

    def _parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for layer_name, layer in self.layers.items():
            for name, p in layer.named_parameters():
                if p.requires_grad:
                    yield f"{layer_name}.{name}", p

    def penalty(self) -> torch.Tensor | None:
        """``weight * sum ||theta - theta_0||^2`` in float32 (None when the pull is off)."""
        if not self.active:
            return None
        # the anchor holds every name (taken at the start; load_state only replaces entries), on the parameters' device
        terms = [(p.float() - self.anchor[name].float()).pow(2).sum() for name, p in self._parameters()]
        return self.weight * torch.stack(terms).sum() if terms else None

    def state(self) -> dict[str, torch.Tensor]:
        """The anchor, for the training state (a resumed run is pulled towards the same values)."""
        return {name: t.cpu() for name, t in self.anchor.items()}

    def load_state(self, state: dict[str, torch.Tensor] | None) -> None:
        """Take the anchor a run was saved with; without one (saved before the pull was on) keep the current one."""
        if not self.active:
            return
        if not state:
            _log.warning("the resumed run was saved without a mask_pull anchor: the masks are pulled towards their "
                         "values at the resume point")
            return
        current = dict(self._parameters())
        self.anchor.update({name: t.to(current[name].device, current[name].dtype) for name, t in state.items()
                            if name in current and t.shape == current[name].shape})
