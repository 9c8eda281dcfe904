"""Which plugin provides the components a model uses: recorded in the recipe, checked on rebuild."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import PluginError
from ._discovery import DISABLE_ENV, load_plugins, plugins_enabled
from ._registry import OWNERS, label, lookup, names

__all__ = ["component_owner", "components_of", "provenance", "require_components"]

_CHECKED = ("unary_head", "pairwise", "adapter", "dataset", "command")


def component_owner(key: str) -> str | None:
    """The plugin that registered ``kind:name``, or None for built-ins, code and unknown names."""
    return OWNERS.get(key)


def components_of(mask_config: Any, placements: Iterable[Any] = ()) -> list[str]:
    """The ``kind:name`` keys of the components a mask config and its placements use."""
    keys = [f"unary_head:{mask_config.head}", f"pairwise:{mask_config.pairwise}"]
    return keys + [f"adapter:{p.adapter}" for p in placements if getattr(p, "adapter", None)]


def provenance(keys: Iterable[str]) -> dict[str, str]:
    """``{key: plugin}`` for the keys that a plugin provides: what a recipe records in ``plugins``."""
    return {k: OWNERS[k] for k in keys if k in OWNERS}


def require_components(keys: Iterable[str], recorded: dict[str, str] | None = None) -> None:
    """Load plugins and check that every component is registered.

    Args:
        keys: ``kind:name`` keys (see :func:`components_of`).
        recorded: the recipe's ``plugins`` map, which names the plugin a missing component comes from.

    Raises:
        PluginError: one line naming each missing component and the plugin to install, or why the
            installed one is not available (it failed to load, or plugins are turned off).
    """
    recorded = dict(recorded or {})
    infos = {i.owner: i for i in load_plugins()}
    problems, fixes = [], []
    for key in dict.fromkeys([*keys, *recorded]):
        kind, _, name = key.partition(":")
        if kind in _CHECKED and lookup(kind, name) is not None:
            continue
        what = f"{label(kind)} {name!r}"
        plugin = recorded.get(key)
        if plugin is None:
            known = ", ".join(names(kind)) if kind in _CHECKED else ""
            problems.append(f"unknown {what}" + (f" (registered: {known})" if known else ""))
            fixes.append("install the plugin that provides it (see: ersm-surgery plugins) or choose a registered one")
        elif not plugins_enabled():
            problems.append(f"{what} comes from plugin {plugin!r}, but plugins are turned off")
            fixes.append(f"drop --no-plugins and unset {DISABLE_ENV}")
        elif plugin in infos and infos[plugin].status == "failed":
            problems.append(f"{what} comes from plugin {plugin!r}, which failed to load ({infos[plugin].error})")
            fixes.append(f"fix or reinstall {plugin} (see: ersm-surgery plugins)")
        else:
            problems.append(f"{what} comes from plugin {plugin!r}, which is not installed")
            fixes.append(f"install it: pip install {plugin}")
    if problems:
        raise PluginError("; ".join(problems), "; ".join(dict.fromkeys(fixes)))
