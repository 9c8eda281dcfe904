"""Optional dependencies: one line with the install command when one is missing, and what is installed.

ONNX export needs ``onnx`` and ``onnxruntime`` (the ``onnx`` extra), TensorBoard logging needs
``tensorboard`` (the ``tensorboard`` extra), hub names need ``huggingface_hub`` (a dependency of timm's
hub support, installed with the ``hub`` extra). Checks use ``importlib.util.find_spec`` where they only
ask, so that asking costs no import.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from .errors import ErsmError

__all__ = ["MissingDependencyError", "require", "is_installed", "EXTRAS", "install_hint"]

# module -> the extra of ersm-surgery that installs it
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "tensorboard": "tensorboard",
    "huggingface_hub": "hub",
}


class MissingDependencyError(ErsmError):
    """An optional dependency that a feature needs is not installed."""


def install_hint(module: str) -> str:
    """The pip command that installs ``module`` the way ersm-surgery packages it."""
    extra = EXTRAS.get(module)
    return f'pip install "ersm-surgery[{extra}]"' if extra else f"pip install {module}"


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it when it was not imported yet)."""
    if module in sys.modules:
        return sys.modules[module] is not None  # None: the import was blocked on purpose
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise one line naming it and the install command.

    Args:
        module: the importable name, e.g. ``"onnxruntime"``.
        feature: what needs it, e.g. ``"ONNX export"``.

    Raises:
        MissingDependencyError: the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        what = module if missing == module else f"{module} (its dependency {missing!r} is missing)"
        raise MissingDependencyError(f"{feature} needs {what}, which is not installed",
                                     install_hint(module)) from None
