"""The two registries that live here rather than in the core: data set factories and CLI commands."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import DataError
from ._discovery import load_plugins
from ._registry import COMMANDS, DATASET_SPEC, DATASETS, check_component, owner_of


def register_dataset(name: str, factory: Callable[..., Any] | None = None) -> Any:
    """Register ``factory(split, img_size, seed, **kwargs)`` for the data set spec ``name`` ("x:y").

    Plugins use ``registry.register_dataset``; this is for code that is not a plugin. Works as a
    decorator when ``factory`` is omitted.

    Raises:
        ValueError: a bad name, or one taken by another factory (both owners named).
    """
    if factory is None:
        return lambda f: register_dataset(name, f)
    check_component("dataset", name, factory)
    if DATASETS.get(name, factory) is not factory:
        raise ValueError(f"data set {name!r} is registered by both {owner_of('dataset', name)!r} and code in "
                         f"{factory.__module__}; choose another name")
    DATASETS[name] = factory
    return factory


def list_datasets() -> list[str]:
    """Specs of the data sets plugins (and code) registered, e.g. ``["myplugin:shapes"]``."""
    return sorted(DATASETS)


def get_dataset_factory(name: str) -> Callable[..., Any] | None:
    """The factory registered for spec ``name`` (plugins are loaded first), or None."""
    load_plugins()
    return DATASETS.get(name)


def is_plugin_dataset_spec(spec: str) -> bool:
    """True for ``"<plugin>:<name>"`` specs that are not ``builtin:`` and not an existing path."""
    return bool(DATASET_SPEC.match(spec)) and not spec.startswith("builtin:") and not os.path.exists(spec)


def create_plugin_dataset(spec: str, **kwargs: Any) -> Any:
    """``factory(**kwargs)`` of the plugin data set ``spec`` (``data.create_dataset`` calls this).

    Raises:
        DataError: no plugin registered ``spec``.
    """
    factory = get_dataset_factory(spec)
    if factory is None:
        known = ", ".join(list_datasets()) or "none registered"
        raise DataError(f"unknown data set {spec!r} (plugin data sets: {known})",
                        "install the plugin that provides it (see: ersm-surgery plugins), or give a data directory")
    return factory(**kwargs)


def register_command(command: Any, name: str | None = None) -> Any:
    """Add a ``click.Command`` to ``ersm-surgery`` (plugins use ``registry.register_command``).

    Raises:
        ValueError: not a click command, or the name is taken (a built-in's included; both owners named).
    """
    name = name or getattr(command, "name", None)
    check_component("command", name, command)
    owner = owner_of("command", name)
    if owner is not None and COMMANDS.get(name) is not command:
        raise ValueError(f"command {name!r} is registered by both {owner!r} and code in {command.__module__}")
    COMMANDS[name] = command
    return command


def list_commands() -> list[str]:
    """Names of the commands that plugins (and code) added; call :func:`load_plugins` first."""
    return sorted(COMMANDS)


def get_command(name: str) -> Any:
    """The plugin command ``name``, loading plugins first; None when there is none."""
    load_plugins()
    return COMMANDS.get(name)
