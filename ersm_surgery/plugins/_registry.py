"""The component tables plugins fill, who owns each name, and the all-or-nothing :class:`PluginRegistry`."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["KINDS", "PluginRegistry", "table", "owner_of", "check_component", "hide", "restore", "OWNERS", "label"]

KINDS = ("unary_head", "pairwise", "adapter", "dataset", "command")
_LABELS = {"unary_head": "unary head", "pairwise": "pairwise term", "adapter": "model adapter",
           "dataset": "data set", "command": "command"}
DATASET_SPEC = re.compile(r"^[A-Za-z][\w.-]+:[\w.-]+$")
BUILTIN_OWNER = "ersm-surgery (built-in)"

DATASETS: dict[str, Callable[..., Any]] = {}
COMMANDS: dict[str, Any] = {}
OWNERS: dict[str, str] = {}  # "pairwise:edge_aware" -> the plugin (distribution) that registered it


def label(kind: str) -> str:
    return _LABELS.get(kind, kind)


def table(kind: str) -> dict[str, Any]:
    """The registry dict of ``kind``: the core ones for masks and adapters, this package's for the rest."""
    # the core registries are module-level dicts; this package is the one place that also removes entries
    if kind in ("unary_head", "pairwise"):
        from ..layers import heads

        return heads._UNARY_HEADS if kind == "unary_head" else heads._PAIRWISE
    if kind == "adapter":
        from ..surgery import adapters

        return adapters._ADAPTERS
    return DATASETS if kind == "dataset" else COMMANDS


def _add(kind: str, name: str, obj: Any) -> None:
    """Register through the core's own ``register_*`` so that its checks apply."""
    if kind == "unary_head":
        from ..layers import register_unary_head

        register_unary_head(name)(obj)
    elif kind == "pairwise":
        from ..layers import register_pairwise

        register_pairwise(name)(obj)
    elif kind == "adapter":
        from ..surgery.adapters import register_adapter

        register_adapter(name)(obj)
    else:
        table(kind)[name] = obj


def owner_of(kind: str, name: str) -> str | None:
    """Who registered ``kind:name``: a plugin, the built-ins, or code in some module (None: nobody)."""
    key = f"{kind}:{name}"
    if key in OWNERS:
        return OWNERS[key]
    if kind == "command":
        from ..cli.main import COMMANDS as BUILTIN_COMMANDS  # a plain dict; importing it does not import torch

        if name in BUILTIN_COMMANDS:
            return BUILTIN_OWNER
    obj = table(kind).get(name)
    if obj is None:
        return None
    module = getattr(obj, "__module__", "") or ""
    return BUILTIN_OWNER if module.startswith("ersm_surgery.") else f"code in {module or 'unknown'}"


def check_component(kind: str, name: Any, obj: Any) -> None:
    """ValueError naming the problem when ``name`` or ``obj`` cannot be registered as ``kind``."""
    if not isinstance(name, str) or not name or (":" in name and kind != "dataset"):
        raise ValueError(f"{label(kind)} name must be a non-empty string without ':', got {name!r}")
    if kind == "dataset" and (not DATASET_SPEC.match(name) or name.startswith("builtin:")):
        raise ValueError(f"data set name {name!r} must look like '<plugin>:<name>' and not start with 'builtin:'")
    if kind == "command":
        import click

        if not isinstance(obj, click.Command):
            raise ValueError(f"command {name!r} must be a click.Command, got {type(obj).__name__}")
    elif not callable(obj):
        raise ValueError(f"{label(kind)} {name!r} must be callable, got {type(obj).__name__}")


class PluginRegistry:
    """What a plugin's ``register(registry)`` receives.

    Each ``register_*`` takes a name and the component, or only a name and then works as a decorator.
    Components are collected first and added only when ``register`` has returned and no name
    collides (:meth:`commit`), so a plugin that fails leaves nothing half-registered.

    Args:
        owner: the plugin's distribution name (recorded as the components' owner).
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.items: list[tuple[str, str, Any]] = []

    def _stage(self, kind: str, name: str, obj: Any) -> Any:
        if obj is None:
            return lambda o: self._stage(kind, name, o)
        check_component(kind, name, obj)
        self.items.append((kind, name, obj))
        return obj

    def register_unary_head(self, name: str, factory: Callable | None = None) -> Any:
        """``factory(channels, hidden, config) -> nn.Module`` mapping X (B, C, H, W) to s (B, 1, H, W)."""
        return self._stage("unary_head", name, factory)

    def register_pairwise(self, name: str, factory: Callable | None = None) -> Any:
        """``factory(channels, config) -> nn.Module`` mapping X to w (B, K, H, W), or to None for w = 1."""
        return self._stage("pairwise", name, factory)

    def register_adapter(self, name: str, cls: type | None = None) -> Any:
        """A ``ersm_surgery.surgery.ModelAdapter`` subclass (see its docstring)."""
        return self._stage("adapter", name, cls)

    def register_dataset(self, name: str, factory: Callable | None = None) -> Any:
        """``factory(split, img_size, seed, **kwargs)`` for the spec ``name`` (``"<plugin>:<name>"``)."""
        return self._stage("dataset", name, factory)

    def register_command(self, command: Any, name: str | None = None) -> Any:
        """A ``click.Command``, added to the root group as ``ersm-surgery <name or command.name>``."""
        return self._stage("command", name or getattr(command, "name", None), command)

    def keys(self) -> list[str]:
        """The collected components as ``kind:name``."""
        return [f"{kind}:{name}" for kind, name, _ in self.items]

    def commit(self) -> None:
        """Add every collected component, or none.

        Raises:
            ValueError: a name is taken by another component; the message names both owners.
        """
        seen: dict[str, Any] = {}
        for kind, name, obj in self.items:
            key = f"{kind}:{name}"
            owner = owner_of(kind, name)
            if (owner is not None and table(kind).get(name) is not obj) or seen.get(key, obj) is not obj:
                raise ValueError(f"{label(kind)} {name!r} is registered by both {owner or self.owner!r} and "
                                 f"{self.owner!r}; uninstall one of them or ask for a rename")
            seen[key] = obj
        for kind, name, obj in self.items:
            _add(kind, name, obj)
            OWNERS[f"{kind}:{name}"] = self.owner


def hide() -> list[tuple[str, str, Any]]:
    """Take every plugin-owned component out of its table; :func:`restore` puts them back."""
    hidden = []
    for key in list(OWNERS):
        kind, name = key.split(":", 1)
        obj = table(kind).pop(name, None)
        if obj is not None:
            hidden.append((kind, name, obj))
    return hidden


def restore(hidden: list[tuple[str, str, Any]]) -> None:
    for kind, name, obj in hidden:
        table(kind)[name] = obj
