"""What every rerun engine shares: the :class:`Rerunner` protocol, :class:`Anchor`, :class:`RerunError`,
and the hooks that keep a mask layer's input (see :mod:`.rerun`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ErsmError


class RerunError(ErsmError):
    """The model cannot be rerun from the requested anchors this way."""


SplitError = RerunError  # the name before the module was called rerun


@runtime_checkable
class Rerunner(Protocol):
    """What the deletion test needs from a rerun engine; :class:`FxSplit` and :class:`HookSplit` implement it.

    ``clean(x)`` runs the whole network once on a batch and keeps every anchor's feature map;
    ``rerun(name, z, rows)`` gives the logits the network computes when anchor ``name``'s map is
    replaced by ``z`` (for the batch rows ``rows``, or all); ``close()`` releases hooks and buffers.
    """

    anchors: dict[str, Any]

    def clean(self, x: torch.Tensor) -> torch.Tensor: ...

    def features(self, name: str) -> torch.Tensor: ...

    def inputs(self, name: str) -> torch.Tensor | None: ...

    def rerun(self, name: str, z: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Anchor:
    """Where a feature map is taken: the output of a module, or an fx node by its qualname.

    Attributes:
        name: the key under which results are reported (e.g. the mask's path ``layer2.ersm_mask``).
        module: dotted path of the module whose output is the feature map.
        node: node qualname in the whole-model trace (``layer3.0.add``), for anchors that are not a
            module's output; used only when ``module`` is None.
        capture_input: also keep the module's input (a mask layer's unmasked features).
    """

    name: str
    module: str | None = None
    node: str | None = None
    capture_input: bool = False


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    raise RerunError(f"the model returned {type(out).__name__}, not logits")


class _InputCapture:
    """Forward hooks that keep the input of the anchors with ``capture_input`` while ``active``."""

    def __init__(self, model: nn.Module, anchors: Sequence[Anchor]) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.active = False
        self._handles = []
        for a in anchors:
            if a.capture_input and a.module is not None:
                module = model.get_submodule(a.module)
                self._handles.append(module.register_forward_hook(self._hook(a.name)))

    def _hook(self, name: str):
        def hook(_module, args, _output):
            if self.active and args and isinstance(args[0], torch.Tensor):
                self.values[name] = args[0]

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
