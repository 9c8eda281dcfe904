"""Model names as timm accepts them: registry names, ``hf-hub:ORG/NAME[@rev]`` and ``local-dir:PATH``.

timm parses the source prefix itself (``timm.models.parse_model_name``) and ``timm.create_model`` reads the
source's ``config.json`` for the architecture, its arguments and its pretrained config. This module asks
timm the same questions before a model is built, so that a bad name fails in one line that says what to
do (no network and no cached copy: connect, or download the repo and pass ``local-dir:``), and so that a
recipe records what rebuilds the model offline: the registry architecture (with the pretrained tag when
the source names one timm knows) and the source's saved model arguments, never the hub name itself.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UnknownModelError
from .optional import require

__all__ = ["ModelName", "resolve_model_name", "hub_errors", "is_source_name", "short_name", "SOURCES"]

SOURCES = ("hf-hub", "local-dir")
_NOT_ARGS = ("num_classes", "pretrained_cfg", "pretrained_cfg_overlay")  # the recipe records these itself
_LIST_HINT = "list names with: python -c 'import timm; print(timm.list_models())'"


@dataclass(frozen=True)
class ModelName:
    """A model name resolved without building the model.

    Attributes:
        given: the name as typed.
        architecture: the registry name that rebuilds the model offline (``resnet18`` or ``resnet18.a1_in1k``).
        model_args: the source's saved ``timm.create_model`` arguments (empty for a registry name).
        source: ``"hf-hub"``, ``"local-dir"`` or None for a registry name.
        location: the Hub repo id or the folder, for a source name.
        ersm_export: the source is an ersm-surgery export (a model with masks), not a plain timm model.
    """

    given: str
    architecture: str
    model_args: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    location: str | None = None
    ersm_export: bool = False


def is_source_name(name: str) -> bool:
    """Whether ``name`` carries a source prefix (``hf-hub:``, ``local-dir:``)."""
    head, sep, _ = name.partition(":")
    return bool(sep) and head.lower().replace("_", "-") in SOURCES


def short_name(name: str) -> str:
    """A file-name-safe short form: ``hf-hub:timm/resnet18.a1_in1k`` -> ``resnet18.a1_in1k``."""
    if is_source_name(name):
        location = name.partition(":")[2].split("@")[0].rstrip("/\\")
        name = Path(location).name or "model"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


@contextlib.contextmanager
def hub_errors(name: str) -> Iterator[None]:
    """Turn huggingface_hub's errors for ``name`` into one line that says what to do."""
    try:
        import huggingface_hub.errors as hf
    except ImportError:  # no hub support: timm raises its own error, caught by the caller
        yield
        return
    repo = name.partition(":")[2].split("@")[0] if is_source_name(name) else ""
    try:
        yield
    except hf.LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE=1 or no network) and not cached
        fix = (f"connect to the network, or download the repo (hf download {repo} --local-dir DIR) and pass "
               "local-dir:DIR" if repo else
               "connect to the network, or pass local weights (--pretrained-path FILE, or local-dir:DIR)")
        raise UnknownModelError(f"cannot reach the Hugging Face Hub for {name!r} and no local copy is cached",
                                fix) from None
    except (hf.RepositoryNotFoundError, hf.GatedRepoError) as exc:
        raise UnknownModelError(f"the Hub repo of {name!r} does not exist or is not accessible "
                                f"({type(exc).__name__})",
                                "check the name (hf-hub:ORG/NAME), or log in with hf auth login") from None
    except hf.EntryNotFoundError as exc:
        raise UnknownModelError(f"the Hub repo of {name!r} lacks a file it needs ({str(exc).splitlines()[0][:150]})",
                                "name a timm model repo (config.json + model.safetensors), e.g. "
                                "hf-hub:timm/resnet18.a1_in1k") from None
    except hf.HfHubHTTPError as exc:
        raise UnknownModelError(f"the Hugging Face Hub refused {name!r} ({str(exc).splitlines()[0][:150]})",
                                "retry later, or download the repo and pass local-dir:DIR") from None


def _check_registry_name(name: str) -> ModelName:
    import timm

    if timm.is_model(name):
        return ModelName(given=name, architecture=name)
    if any(c in name for c in "/\\:"):
        raise UnknownModelError(f"unknown model {name!r}: it looks like a Hub repo or a folder",
                                f"write hf-hub:{name} for the Hub or local-dir:{name} for a folder")
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    raise UnknownModelError(f"unknown model {name!r}", f"did you mean {', '.join(close)}?" if close else _LIST_HINT)


def _architecture(arch: str, pretrained_cfg: dict[str, Any]) -> str:
    """``arch.tag`` when the source's pretrained config names a tag timm knows (its preprocessing), else arch."""
    from timm.models import get_pretrained_cfg

    tag = pretrained_cfg.get("tag")
    if tag:
        try:
            if get_pretrained_cfg(f"{arch}.{tag}", allow_unregistered=False) is not None:
                return f"{arch}.{tag}"
        except RuntimeError:  # an unregistered tag: the architecture alone
            pass
    return arch


def _from_config(name: str, source: str, location: str, raw: dict[str, Any], parsed: tuple) -> ModelName:
    import timm

    pretrained_cfg, arch, model_args = parsed
    if not timm.is_model(arch):
        raise UnknownModelError(f"{name!r} names the architecture {arch!r}, which this timm "
                                f"{timm.__version__} does not know", "upgrade timm (pip install -U timm)")
    args = {k: v for k, v in (model_args or {}).items() if k not in _NOT_ARGS}
    return ModelName(given=name, architecture=_architecture(arch, pretrained_cfg), model_args=args, source=source,
                     location=location, ersm_export=isinstance(raw, dict) and "ersm" in raw)


def _resolve_local(name: str, location: str) -> ModelName:
    from timm.models._hub import load_model_config_from_path

    folder = Path(location).expanduser()
    config = folder / "config.json"
    if not folder.is_dir():
        raise UnknownModelError(f"{name!r}: folder {str(folder)!r} does not exist",
                                "pass local-dir:DIR, a folder with config.json and model.safetensors")
    if not config.is_file():
        raise UnknownModelError(f"{name!r}: {str(folder)!r} has no config.json",
                                "pass a folder laid out like a timm Hub repo (config.json + model.safetensors)")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
        parsed = load_model_config_from_path(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnknownModelError(f"{name!r}: cannot read {str(config)!r} ({type(exc).__name__}: {exc})",
                                "rewrite it with timm (save_for_hf) or ersm-surgery export") from None
    return _from_config(name, "local-dir", str(folder), raw, parsed)


@functools.lru_cache(maxsize=16)  # a hub name is resolved once per process: each lookup is a network round trip
def _resolve_hub(name: str, repo: str) -> ModelName:
    require("huggingface_hub", f"the Hub model name {name!r}")
    from timm.models._hub import download_from_hf, load_cfg_from_json, load_model_config_from_hf

    with hub_errors(name):
        raw = load_cfg_from_json(download_from_hf(repo, "config.json"))
        parsed = load_model_config_from_hf(repo)
    return _from_config(name, "hf-hub", repo, raw, parsed)


def resolve_model_name(name: str) -> ModelName:
    """What ``name`` builds, checked the way ``timm.create_model`` will read it.

    Args:
        name: a timm registry name (``resnet50``, ``resnet50.a1_in1k``), ``hf-hub:ORG/NAME[@revision]``
            or ``local-dir:PATH``.

    Returns:
        The resolved :class:`ModelName`.

    Raises:
        UnknownModelError: unknown name, a folder without config.json, an unknown architecture, or a Hub
            name that cannot be reached (offline and not cached).
        MissingDependencyError: a Hub name without huggingface_hub installed.
    """
    from timm.models import parse_model_name

    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"model name {name!r} is empty", "name a timm model, e.g. resnet50")
    if not is_source_name(name):
        return _check_registry_name(name)
    try:
        source, location = parse_model_name(name)
    except ValueError as exc:
        raise UnknownModelError(str(exc).rstrip("."), "write hf-hub:ORG/NAME or local-dir:PATH") from None
    if source == "local-dir":
        return _resolve_local(name, location)
    return _resolve_hub(name, location)
