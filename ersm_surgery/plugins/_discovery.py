"""Entry-point discovery: load each plugin once, record what it registered or why it failed."""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from ._registry import OWNERS, PluginRegistry, hide, restore

__all__ = ["ENTRY_POINT_GROUP", "DISABLE_ENV", "PluginInfo", "load_plugins", "plugins_enabled", "disabled"]

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ersm_surgery.plugins"
DISABLE_ENV = "ERSM_SURGERY_NO_PLUGINS"


@dataclass
class PluginInfo:
    """One discovered entry point and what became of it.

    Attributes:
        name: the entry point's name.
        target: what it points at (``module:attr``).
        dist: the distribution that declares it (the name to ``pip install``).
        version: that distribution's version.
        status: "ok" or "failed".
        error: why it failed (one line), else None.
        provides: the components it registered, as ``kind:name``.
    """

    name: str
    target: str
    dist: str | None
    version: str | None
    status: str = "ok"
    error: str | None = None
    provides: list[str] = field(default_factory=list)

    @property
    def owner(self) -> str:
        """The name components are recorded under: the distribution, else the entry point."""
        return self.dist or self.name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _State:
    loaded = False
    infos: list[PluginInfo] = []
    off = 0  # depth of disabled() contexts


def plugins_enabled() -> bool:
    """False inside :func:`disabled` or when ``ERSM_SURGERY_NO_PLUGINS`` is set (to anything but 0/false/no)."""
    env = os.environ.get(DISABLE_ENV, "").strip().lower()
    return _State.off == 0 and env in ("", "0", "false", "no")


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    try:
        found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken installed distribution must not break ersm-surgery
        _log.warning("cannot read the entry points of %s: %s", ENTRY_POINT_GROUP, exc)
        return []
    unique = {(ep.name, ep.value): ep for ep in found}  # one distribution can sit twice on sys.path
    return sorted(unique.values(), key=lambda ep: ((ep.dist.name if ep.dist else "") or "", ep.name))


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_one(ep: importlib.metadata.EntryPoint) -> PluginInfo:
    dist = ep.dist
    info = PluginInfo(ep.name, ep.value, dist.name if dist else None, dist.version if dist else None)
    try:
        obj = ep.load()
        register = getattr(obj, "register", None) if isinstance(obj, ModuleType) else obj
        if not callable(register):
            raise TypeError(f"entry point {ep.value!r} is neither register(registry) nor a module with register()")
        registry = PluginRegistry(info.owner)
        register(registry)
        registry.commit()
        info.provides = registry.keys()
    except Exception as exc:  # any failure of a plugin is recorded, never raised
        info.status, info.error = "failed", _one_line(exc)
        _log.info("plugin %s (%s) failed: %s", info.name, info.owner, info.error)
    return info


def load_plugins(reload: bool = False) -> list[PluginInfo]:
    """Discover and register every plugin, once; later calls return the same list.

    Args:
        reload: forget the plugins' components and discover again (for tests and notebooks).

    Returns:
        One :class:`PluginInfo` per entry point, failed ones included; [] when plugins are turned off.
    """
    if not plugins_enabled():
        return []
    if _State.loaded and not reload:
        return list(_State.infos)
    if reload:
        hide()
        OWNERS.clear()
    _State.infos = [_load_one(ep) for ep in _entry_points()]
    _State.loaded = True
    return list(_State.infos)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Inside: no discovery, and components that plugins registered earlier are hidden (``--no-plugins``)."""
    hidden = hide()
    _State.off += 1
    try:
        yield
    finally:
        _State.off -= 1
        restore(hidden)
