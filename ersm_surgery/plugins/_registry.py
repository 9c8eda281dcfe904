"""The component tables plugins fill, who owns each name, and the all-or-nothing :class:`PluginRegistry`."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["KINDS", "PluginRegistry", "lookup", "names", "add", "remove", "owner_of", "check_component", "hide",
           "restore", "reserve_commands", "OWNERS", "label"]

KINDS = ("unary_head", "pairwise", "adapter", "dataset", "command")
_LABELS = {"unary_head": "unary head", "pairwise": "pairwise term", "adapter": "model adapter",
           "dataset": "data set", "command": "command"}
DATASET_SPEC = re.compile(r"^[A-Za-z][\w.-]+:[\w.-]+$")
BUILTIN_OWNER = "ersm-surgery (built-in)"

DATASETS: dict[str, Callable[..., Any]] = {}
COMMANDS: dict[str, Any] = {}
OWNERS: dict[str, str] = {}  # "pairwise:edge_aware" -> the plugin (distribution) that registered it
_RESERVED_COMMANDS: set[str] = set()  # the command line's own commands, which no plugin may take


def label(kind: str) -> str:
    return _LABELS.get(kind, kind)


def reserve_commands(names: Iterable[str]) -> None:
    """Mark command names as the command line's own (``ersm_surgery.cli`` calls this): a plugin cannot take them.

    The command line owns its table; this package only learns the names, so it never imports the CLI.
    """
    _RESERVED_COMMANDS.update(names)


def _core(kind: str) -> tuple[Callable[[str], Any], Callable[[str, Any], Any], Callable[[str], Any],
                              Callable[[], list[str]]]:
    """(get, register, unregister, list) of the core registry that holds ``kind``: its public API only."""
    if kind in ("unary_head", "pairwise"):
        from .. import layers

        if kind == "unary_head":
            return (layers.get_unary_head, lambda n, o: layers.register_unary_head(n)(o), layers.unregister_unary_head,
                    layers.list_unary_heads)
        return layers.get_pairwise, lambda n, o: layers.register_pairwise(n)(o), layers.unregister_pairwise, \
            layers.list_pairwise
    from .. import surgery

    return surgery.get_adapter, lambda n, o: surgery.register_adapter(n)(o), surgery.unregister_adapter, \
        surgery.list_adapters


def _local(kind: str) -> dict[str, Any]:
    return DATASETS if kind == "dataset" else COMMANDS


def lookup(kind: str, name: str) -> Any:
    """The component registered as ``kind:name``, or None."""
    if kind in ("dataset", "command"):
        return _local(kind).get(name)
    try:
        return _core(kind)[0](name)
    except KeyError:
        return None


def names(kind: str) -> list[str]:
    """The names registered for ``kind``."""
    return sorted(_local(kind)) if kind in ("dataset", "command") else sorted(_core(kind)[3]())


def add(kind: str, name: str, obj: Any) -> None:
    """Register through the core's own ``register_*`` so that its checks apply."""
    if kind in ("dataset", "command"):
        _local(kind)[name] = obj
    else:
        _core(kind)[1](name, obj)


def remove(kind: str, name: str) -> Any:
    """Take ``kind:name`` out of its registry; return what was there, or None."""
    if kind in ("dataset", "command"):
        return _local(kind).pop(name, None)
    return _core(kind)[2](name)


def owner_of(kind: str, name: str) -> str | None:
    """Who registered ``kind:name``: a plugin, the built-ins, or code in some module (None: nobody)."""
    key = f"{kind}:{name}"
    if key in OWNERS:
        return OWNERS[key]
    if kind == "command" and name in _RESERVED_COMMANDS:
        return BUILTIN_OWNER
    obj = lookup(kind, name)
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
            if (owner is not None and lookup(kind, name) is not obj) or seen.get(key, obj) is not obj:
                raise ValueError(f"{label(kind)} {name!r} is registered by both {owner or self.owner!r} and "
                                 f"{self.owner!r}; uninstall one of them or ask for a rename")
            seen[key] = obj
        for kind, name, obj in self.items:
            add(kind, name, obj)
            OWNERS[f"{kind}:{name}"] = self.owner


def hide() -> list[tuple[str, str, Any]]:
    """Take every plugin-owned component out of its table; :func:`restore` puts them back."""
    hidden = []
    for key in list(OWNERS):
        kind, name = key.split(":", 1)
        obj = remove(kind, name)
        if obj is not None:
            hidden.append((kind, name, obj))
    return hidden


def restore(hidden: list[tuple[str, str, Any]]) -> None:
    """Put back what :func:`hide` took out."""
    for kind, name, obj in hidden:
        add(kind, name, obj)
