"""Access to a masked model's Energy-Mask layers: their states, density and the regularizer."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .layers import AdaptedMask, EnergyMask, MaskState, energy_regularizer

__all__ = ["MaskSet", "masks", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class MaskSet:
    """The Energy-Mask layers of a model, by qualified name, in the order they were placed."""

    def __init__(self, layers: dict[str, EnergyMask]) -> None:
        self.layers = layers

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[EnergyMask]:
        return iter(self.layers.values())

    def items(self):
        return self.layers.items()

    def names(self) -> list[str]:
        return list(self.layers)

    def states(self) -> dict[str, MaskState | None]:
        """q, e, hard mask and applied mask of each layer from the last forward pass."""
        return {name: layer.state for name, layer in self.layers.items()}

    def regularizer(self) -> torch.Tensor:
        """sum over layers of alpha * mean(q) + beta * mean |q_i - q_j| (see ``layers.loss``)."""
        return energy_regularizer(self.layers.values())

    def set_gradient_multiplier(self, value: float) -> None:
        """What the loss is multiplied by before ``backward`` (``1 / accumulation steps``, times a GradScaler's
        scale); a relative price (``layers.price``) divides the task gradient it observes by it."""
        for layer in self.layers.values():
            layer.task_scale.set_multiplier(value)

    def price_state(self) -> dict[str, dict[str, float]]:
        """The running task-gradient scales of a relative price, by layer (saved for an exact resume)."""
        return {name: layer.task_scale.state() for name, layer in self.layers.items()}

    def load_price_state(self, state: dict[str, dict[str, float]]) -> None:
        for name, layer in self.layers.items():
            if name in state:
                layer.task_scale.load_state(state[name])

    def density(self) -> dict[str, torch.Tensor]:
        """Per-image fraction of kept tokens (the hard mask) of each layer, shape (B,)."""
        out = {}
        for name, layer in self.layers.items():
            if layer.state is None:
                raise RuntimeError(f"mask {name} has not run a forward pass yet")
            out[name] = layer.state.hard.flatten(1).mean(1)
        return out

    def parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.layers.values():
            yield from layer.parameters()

    def clear(self) -> None:
        """Drop the stored states (and the autograd graph they hold)."""
        for layer in self.layers.values():
            layer.state = None

    @contextlib.contextmanager
    def switched_off(self) -> Iterator[None]:
        """Inside the block every mask layer passes its input through unchanged (states cleared after).

        The model then computes what its backbone computes without masks, which is what the stripped
        backbone of an export must reproduce.
        """
        handles = [layer.register_forward_hook(lambda _m, args, _out: args[0]) for layer in self.layers.values()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.clear()

    def set_mode(self, train_mode: str | None = None, eval_mode: str | None = None) -> None:
        for layer in self.layers.values():
            if train_mode is not None:
                layer.config.train_mode = train_mode
            if eval_mode is not None:
                layer.config.eval_mode = eval_mode


def masks(model: nn.Module) -> MaskSet:
    """The :class:`MaskSet` of a masked model (DDP and ``torch.compile`` wrappers are looked through).

    A mask behind a layout adapter (:class:`AdaptedMask`) is listed under the adapter's path, which is
    its placement's ``path``, so names match the recipe either way.
    """
    model = unwrap(model)
    adapted = {id(m.mask): name for name, m in model.named_modules() if isinstance(m, AdaptedMask)}
    return MaskSet({adapted.get(id(m), name): m for name, m in model.named_modules() if isinstance(m, EnergyMask)})
