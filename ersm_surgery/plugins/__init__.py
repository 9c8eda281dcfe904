"""Plugins: discovery through Python entry points, and the registries that plugins fill.

A plugin is an installed distribution with an entry point in the group ``ersm_surgery.plugins``::

    [project.entry-points."ersm_surgery.plugins"]
    edge_aware = "ersm_edge_aware:register"

The entry point resolves to a callable ``register(registry)`` (or to a module with a ``register``
function), which receives a :class:`PluginRegistry` and adds components to it:

=============  ======================================================  ===============================
kind           what                                                    used by
=============  ======================================================  ===============================
unary_head     ``factory(channels, hidden, config) -> nn.Module``     ``mask.head`` in the recipe
pairwise       ``factory(channels, config) -> nn.Module``             ``mask.pairwise`` in the recipe
adapter        a ``ersm_surgery.surgery.ModelAdapter`` subclass        stages that are not (B, C, H, W)
dataset        ``factory(split, img_size, seed, **kw) -> Dataset``    specs like ``"myplugin:name"``
command        a ``click.Command``                                     ``ersm-surgery <name>``
=============  ======================================================  ===============================

The first three go into the core registries (``layers.heads``, ``surgery.adapters``) where the
built-ins live; data sets and commands live here. A name that is already taken fails the plugin with
an error naming both owners, and a plugin that fails to import or register is recorded with its error
(see :func:`load_plugins`) and leaves no component behind: it never breaks another command.

Discovery is lazy: entry points are loaded by :func:`load_plugins`, which ``inject``, ``build_model``
(so ``load``), ``create_dataset`` for plugin specs and the CLI call when they need components, never
at import or at ``--help``. ``ERSM_SURGERY_NO_PLUGINS=1`` or ``ersm-surgery --no-plugins`` (or
:func:`disabled`) turns it off. A recipe records which plugin provides each component it uses (its
``plugins`` field), so a model that needs a missing plugin fails with one line naming it.
"""
from __future__ import annotations

from ._components import component_owner, components_of, provenance, require_components
from ._discovery import DISABLE_ENV, ENTRY_POINT_GROUP, PluginInfo, disabled, load_plugins, plugins_enabled
from ._extensions import (
    create_plugin_dataset,
    get_command,
    get_dataset_factory,
    is_plugin_dataset_spec,
    list_commands,
    list_datasets,
    register_command,
    register_dataset,
)
from ._registry import KINDS, PluginRegistry, reserve_commands

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_ENV",
    "KINDS",
    "PluginInfo",
    "PluginRegistry",
    "load_plugins",
    "plugins_enabled",
    "disabled",
    "component_owner",
    "components_of",
    "provenance",
    "require_components",
    "register_dataset",
    "list_datasets",
    "get_dataset_factory",
    "is_plugin_dataset_spec",
    "create_plugin_dataset",
    "register_command",
    "list_commands",
    "get_command",
    "reserve_commands",
]
