"""Model adapters: a (B, C, H, W) view of stage outputs that come in another layout.

A stage whose output is tokens (B, N, C) or channels-last (B, H, W, C) is "not spatial" (see
:func:`.analysis.classify`). A registered :class:`ModelAdapter` may claim it: ``resolve_stages`` asks
each adapter in registration order, records the first that matches in the placement (``adapter`` and
``adapter_args``), and the insertion wraps the Energy-Mask as ``AdaptedMask(adapter, mask)``. The core
ships no adapter; plugins register them (``plugins/ersm-token-grid`` for ViT, Swin and MambaOut).

    @register_adapter("nhwc")
    class NHWC(ModelAdapter):
        @classmethod
        def match(cls, model, module, shape, layout, input_size):
            return {} if layout and layout.startswith("channels-last") else None
        def to_spatial(self, x):
            return x.permute(0, 3, 1, 2), None
        def from_spatial(self, y, context):
            return y.permute(0, 2, 3, 1).contiguous()
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..layers import AdaptedMask
from ._tracer import register_leaf_module

__all__ = [
    "ModelAdapter",
    "register_adapter",
    "unregister_adapter",
    "list_adapters",
    "get_adapter",
    "create_adapter",
    "find_adapter",
]

_ADAPTERS: dict[str, type[ModelAdapter]] = {}

# the adapted mask is one node of any later trace, like the Energy-Mask it wraps
register_leaf_module(AdaptedMask)


class ModelAdapter(nn.Module):
    """Maps a stage output to a (B, C, H, W) view and back; subclass it and register it.

    The constructor takes the ``adapter_args`` that :meth:`match` returned, which the recipe records,
    so a rebuilt model gets the same adapter. Adapters should hold no parameters.
    """

    def __init__(self, **adapter_args: Any) -> None:
        super().__init__()
        self.adapter_args = dict(adapter_args)

    @classmethod
    def match(
        cls, model: nn.Module, module: str, shape: tuple[int, ...], layout: str | None, input_size: tuple[int, int, int]
    ) -> dict[str, Any] | None:
        """The ``adapter_args`` that map this stage output, or None when this adapter does not apply.

        Args:
            model: the timm model being masked.
            module: qualified name of the stage module.
            shape: its output shape, probed on one image (the batch is 1; the spatial size may be
                that of a smaller probe input than ``input_size``).
            layout: what :func:`.analysis.classify` said, e.g. "tokens (B, N, C)".
            input_size: the (C, H, W) the model is masked at.
        """
        return None

    def to_spatial(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(B, C, H, W) view of ``x`` and whatever :meth:`from_spatial` needs to undo it."""
        raise NotImplementedError

    def from_spatial(self, y: torch.Tensor, context: Any) -> torch.Tensor:
        """The masked view ``y`` back in the layout of the stage output."""
        raise NotImplementedError

    def channels(self, shape: tuple[int, ...]) -> int:
        """C of the (B, C, H, W) view of an output of ``shape`` (the last dimension by default)."""
        return int(shape[-1])

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.adapter_args.items())


def register_adapter(name: str) -> Callable[[type[ModelAdapter]], type[ModelAdapter]]:
    """Class decorator: register a :class:`ModelAdapter` subclass under ``name``.

    Raises:
        ValueError: ``name`` is taken by another class, or the class is not a ModelAdapter.
    """
    def add(cls: type[ModelAdapter]) -> type[ModelAdapter]:
        if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
            raise ValueError(f"adapter {name!r} must be a ModelAdapter subclass, got {cls!r}")
        if name in _ADAPTERS and _ADAPTERS[name] is not cls:
            raise ValueError(f"model adapter {name!r} is already registered; choose another name")
        _ADAPTERS[name] = cls
        return cls

    return add


def unregister_adapter(name: str) -> type[ModelAdapter] | None:
    """Remove the adapter ``name``; return its class, or None when nothing was registered under it."""
    return _ADAPTERS.pop(name, None)


def list_adapters() -> list[str]:
    """Registered adapter names, in the order they are consulted."""
    return list(_ADAPTERS)


def get_adapter(name: str) -> type[ModelAdapter]:
    """The adapter class registered under ``name`` (KeyError naming the registered ones)."""
    if name not in _ADAPTERS:
        raise KeyError(f"unknown model adapter {name!r}; registered: {', '.join(list_adapters()) or 'none'}")
    return _ADAPTERS[name]


def create_adapter(name: str, **adapter_args: Any) -> ModelAdapter:
    """An instance of the adapter ``name`` with the recorded ``adapter_args``."""
    return get_adapter(name)(**adapter_args)


def find_adapter(
    model: nn.Module, module: str, shape: tuple[int, ...], layout: str | None, input_size: tuple[int, int, int]
) -> tuple[str, dict[str, Any]] | None:
    """(name, adapter_args) of the first registered adapter that claims this stage output, else None."""
    for name, cls in _ADAPTERS.items():
        args = cls.match(model, module, tuple(shape), layout, tuple(input_size))
        if args is not None:
            return name, dict(args)
    return None
