"""Creating timm base models by name, with weights from the hub or a local file (never unpickled)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UnknownModelError, WeightsError
from .model_source import ModelName, hub_errors, resolve_model_name

__all__ = ["check_model_name", "create_base_model", "recorded_name", "read_state_dict", "load_base_weights",
           "model_name_of", "default_input_size"]

_log = logging.getLogger(__name__)


def check_model_name(name: str) -> ModelName:
    """Resolve ``name`` (a timm name, ``hf-hub:ORG/NAME`` or ``local-dir:PATH``) or raise one clear line.

    Raises:
        UnknownModelError: with close matches for an unknown registry name; for a source name, what to do.
    """
    return resolve_model_name(name)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from a .safetensors file, or a torch file with ``torch.load(weights_only=True)``.

    Raises:
        WeightsError: missing, corrupt, or not a plain tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist", "check the path given to --pretrained-path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise several types for a bad file
        raise WeightsError(
            f"cannot read weights from {str(path)!r} ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})",
            "pass a .safetensors file or a torch state dict saved with torch.save(model.state_dict())",
        ) from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{str(path)!r} does not hold a state dict of tensors", "save model.state_dict() instead")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_base_weights(model: nn.Module, path: str | Path) -> None:
    """Load a base model checkpoint strictly; a classifier of another size is left at its fresh init.

    Raises:
        WeightsError: the keys or shapes do not fit the model.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = _classifier_keys(model)
    skipped = [k for k in head if k in state and k in own and state[k].shape != own[k].shape]
    for k in skipped:
        state.pop(k)
    if skipped:
        _log.info("classifier of another size in %s left at its fresh init: %s", path, ", ".join(skipped))
    missing = sorted(set(own) - set(state) - set(skipped))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsError(f"{str(path)!r} does not fit {model_name_of(model)}: {', '.join(parts)}",
                           "pass weights saved from the same timm model")
    model.load_state_dict(state, strict=False)


def _classifier_keys(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or []
    names = [names] if isinstance(names, str) else list(names)
    return [f"{n}.{s}" for n in names for s in ("weight", "bias")]


def recorded_name(name: str, model: nn.Module, pretrained: bool,
                  kwargs: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    """What a recipe records for a base model built from ``name``: (architecture, kwargs, base_model).

    A source name (``hf-hub:``, ``local-dir:``) is recorded as the registry architecture plus the source's
    saved arguments, so that the model rebuilds offline and wherever the folder moves; the source itself
    becomes ``base_model``. A registry name built with ``pretrained`` records the Hub repo timm fetched the
    weights from, when it was one.
    """
    resolved = resolve_model_name(name)
    if resolved.source:
        return resolved.architecture, {**resolved.model_args, **kwargs}, name
    repo = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id") if pretrained else None
    return name, dict(kwargs), f"hf-hub:{repo}" if repo else None


def model_name_of(model: nn.Module) -> str:
    """The timm architecture name of a model instance (its class name when unknown)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def create_base_model(
    name: str,
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with checked arguments and safe local weights.

    Args:
        name: timm model name, ``hf-hub:ORG/NAME[@revision]`` or ``local-dir:PATH`` (timm reads the source's
            config.json; with ``pretrained`` also its weights).
        pretrained: timm's pretrained weights (from the Hub, or the ``local-dir:`` folder's own).
        pretrained_path: local .safetensors / torch state dict for the base model.
        num_classes: classifier size (None keeps the model's default).
        **kwargs: passed to ``timm.create_model`` (drop_path_rate, in_chans, ...).

    Raises:
        UnknownModelError, WeightsError, ValueError (num_classes < 0; 0 is timm's headless model).
    """
    import timm

    resolved = check_model_name(name)
    if resolved.ersm_export:
        raise UnknownModelError(f"{name!r} is an ersm-surgery export (a model with masks), not a plain timm model",
                                "load it with ersm_surgery.load() (or pass it as DIR), or use its backbone/ "
                                "sub-folder (export --strip-masks) for the model without masks")
    if num_classes is not None and num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: headless), got {num_classes}")
    if pretrained and pretrained_path:
        raise WeightsError("both --pretrained and --pretrained-path given", "use one of them")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        with hub_errors(name):
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise UnknownModelError(f"{name} does not accept these arguments: {exc}", "check --set model_kwargs.*") from exc
    except (OSError, RuntimeError) as exc:
        if pretrained:
            fix = ("put the weights (model.safetensors) in the folder, or drop --pretrained"
                   if resolved.source == "local-dir" else "check the network, or pass --pretrained-path FILE")
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise WeightsError(f"cannot load pretrained weights for {name} ({first})", fix) from exc
        raise
    if pretrained_path:
        load_base_weights(model, pretrained_path)
    return model


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The (C, H, W) of the model's pretrained_cfg, else (3, 224, 224)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    return tuple(int(v) for v in size)
