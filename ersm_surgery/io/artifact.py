"""A saved masked model: a folder with model.safetensors, recipe.yaml and config.json.

The weights file carries the recipe, the versions, the input config and a SHA-256 over the tensor data
and the recipe in its header metadata, so the file alone is enough to rebuild the model, and an edit of
either is detected: base model + recipe + weights, loaded strictly, nothing unpickled.

torch and timm are imported inside the functions, so that ``ersm-surgery info`` (which imports this
package) stays fast.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, OutputExistsError
from ..version import __version__
from .atomic import atomic_path, atomic_write_text
from .publish import output_lock, publish, staging_dir
from .safetensors_header import SafetensorsHeader, read_header
from .source import recipe_of
from .tensor_hash import FORMAT_KEY, FORMAT_VERSION, SHA256_KEY, state_sha256, verify_digest
from .untrusted import refuse_file_reads

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..recipe import Recipe

__all__ = [
    "save", "load", "read_metadata", "check_output_dir", "versions", "weights_path",
    "weights_metadata", "write_weights", "state_sha256", "timm_config", "input_config", "labels_of",
    "WEIGHTS", "RECIPE", "CONFIG", "RECIPE_KEY", "SHA256_KEY", "FORMAT_KEY", "LABELS_KEY", "INPUT_KEY", "MASK_MODE_KEY",
]  # fmt: skip

_log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
RECIPE = "recipe.yaml"
CONFIG = "config.json"
# header metadata keys (all values are strings; the JSON ones are marked)
RECIPE_KEY = "ersm_recipe"  # JSON of the Recipe
LABELS_KEY = "label_names"  # JSON list of class names, when known
INPUT_KEY = "input_config"  # JSON: input_size, mean, std, interpolation, crop_pct, crop_mode
MASK_MODE_KEY = "mask_mode"  # the masks' eval mode: hard or soft
_RESERVED = (RECIPE_KEY, SHA256_KEY, FORMAT_KEY)


def versions() -> dict[str, str]:
    import timm
    import torch

    return {"ersm_surgery": __version__, "torch": torch.__version__, "timm": timm.__version__}


def check_output_dir(path: str | Path, force: bool) -> Path:
    """Refuse an existing non-empty folder unless ``force``; refuse a path that is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {str(path)!r} is a file", "choose a folder path with -o")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputExistsError(f"output folder {str(path)!r} exists and is not empty",
                                "pass --force or choose another -o")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def input_config(model: nn.Module) -> dict[str, Any]:
    """input_size, interpolation, mean, std, crop_pct, crop_mode: the preprocessing the model was trained with.

    The recipe's ``data_config`` when ``finetune`` recorded one, else what the recipe version implies (see
    ``ersm_surgery.data.resolve``): the model's own timm pretrained config for a current recipe.
    """
    from ..data.resolve import recorded_data_config

    return _jsonable(recorded_data_config(model))


def _manual_config(model: nn.Module, recipe: Recipe, labels: list[str] | None) -> dict[str, Any]:
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg = {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool, list, tuple, dict, type(None)))}
    pool = getattr(model, "global_pool", None)
    out = {
        "architecture": recipe.model,
        "num_classes": getattr(model, "num_classes", recipe.num_classes),
        "num_features": getattr(model, "num_features", None),
        "global_pool": pool if isinstance(pool, str) else None,
        "model_args": dict(recipe.model_kwargs),
        "pretrained_cfg": cfg,
    }
    if labels:
        out["label_names"] = list(labels)
    return out


def timm_config(model: nn.Module, recipe: Recipe, labels: list[str] | None = None) -> dict[str, Any]:
    """config.json in timm's hub layout (``save_config_for_hf``), plus an "ersm" block with the recipe."""
    try:
        from timm.models._hub import save_config_for_hf

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / CONFIG
            save_config_for_hf(model, str(path), model_config={"label_names": list(labels)} if labels else None)
            cfg = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # an older timm, or a model argument timm cannot serialise
        _log.debug("timm's save_config_for_hf failed (%s); writing the config by hand", exc)
        cfg = _manual_config(model, recipe, labels)
    # timm reads the preprocessing from pretrained_cfg: publish what the model was trained with
    pretrained = cfg.get("pretrained_cfg")
    if isinstance(pretrained, dict):
        pretrained.update(input_config(model))
    cfg["ersm"] = {**recipe.to_dict(), "versions": versions()}
    return _jsonable(cfg)


def labels_of(metadata: Mapping[str, str]) -> list[str] | None:
    """The class names stored under ``LABELS_KEY``, or None."""
    raw = metadata.get(LABELS_KEY)
    if not raw:
        return None
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return [str(x) for x in labels] if isinstance(labels, list) else None


def _labels_from_recipe(recipe: Recipe) -> list[str] | None:
    for key in ("label_names", "labels", "class_names", "classes"):
        value = recipe.finetune.get(key)
        if isinstance(value, (list, tuple)) and value:
            return [str(v) for v in value]
    return None


# -- writing -------------------------------------------------------------------------------------------


def state_to_save(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors' ``save_model`` writes it: shared tensors once, contiguous, on CPU."""
    from safetensors.torch import _remove_duplicate_names

    state = model.state_dict()
    for removed in _remove_duplicate_names(state).values():
        for name in removed:
            del state[name]
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def weights_metadata(model: nn.Module, recipe: Recipe | None = None, labels: list[str] | None = None,
                     extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The header metadata of a masked model's weights (without the sha256, added by ``write_weights``).

    Args:
        model: the masked model.
        recipe: its recipe (default: the one it carries).
        labels: class names (default: from ``recipe.finetune``, when there).
        extra: more string entries; they may not replace the recipe or the sha256.
    """
    recipe = recipe or recipe_of(model)
    labels = labels or _labels_from_recipe(recipe)
    meta = {
        "format": "pt",
        "model": recipe.model,
        "model_kwargs": json.dumps(_jsonable(recipe.model_kwargs), sort_keys=True),
        "num_classes": str(getattr(model, "num_classes", recipe.num_classes)),
        RECIPE_KEY: recipe.to_json(),
        FORMAT_KEY: str(FORMAT_VERSION),
        MASK_MODE_KEY: recipe.mask.eval_mode,
        **versions(),
    }
    try:
        meta[INPUT_KEY] = json.dumps(input_config(model))
    except Exception as exc:  # a model without a usable pretrained_cfg: leave the input config out
        _log.warning("no input config recorded (%s)", exc)
    if labels:
        meta[LABELS_KEY] = json.dumps(list(labels))
    bad = [k for k in (extra or {}) if k in _RESERVED]
    if bad:
        raise ValueError(f"metadata keys {bad} are written by ersm-surgery itself")
    meta.update(extra or {})
    return meta


def write_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, str]) -> dict[str, str]:
    """Write the state dict and ``metadata`` plus the sha256 to ``path``, atomically.

    The sha256 is computed from the tensors in memory (see :func:`state_sha256`) with the recipe JSON of
    ``metadata`` as ``extra``, so that the file is written once.

    Returns:
        The metadata written, sha256 included.
    """
    from safetensors.torch import save_file

    state = state_to_save(model)
    meta = dict(metadata)
    meta[SHA256_KEY] = state_sha256(state, meta.get(RECIPE_KEY, "").encode("utf-8"))
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return meta


def save(model: nn.Module, path: str | Path, force: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write a masked model to a folder: model.safetensors, recipe.yaml, config.json.

    The weights carry the recipe, versions, input config and a sha256 of tensors + recipe (checked by
    :func:`load`). The files are written into a staging folder beside ``path`` and the folder is swapped in
    as a whole (:mod:`.publish`), so a reader never sees the weights of one save beside the recipe of
    another; an existing folder's other files are kept. The folder's write lock is held meanwhile.

    Args:
        model: the masked model (DDP / ``torch.compile`` wrappers are looked through).
        path: the folder.
        force: write into an existing non-empty folder.
        metadata: more header metadata (str -> str), e.g. ``{"label_names": json.dumps(names)}``.

    Raises:
        OutputExistsError: the folder exists and is not empty (without ``force``), or another process is
            writing it.
        ArtifactError: the model carries no recipe.
    """
    from ..mask_set import unwrap

    model = unwrap(model)
    recipe = recipe_of(model)
    with output_lock(path):
        out = check_output_dir(path, force)
        staging = staging_dir(out)
        try:
            meta = write_weights(model, staging / WEIGHTS, weights_metadata(model, recipe, extra=metadata))
            atomic_write_text(staging / RECIPE, recipe.to_yaml())
            config = timm_config(model, recipe, labels_of(meta))
            atomic_write_text(staging / CONFIG, json.dumps(config, indent=2) + "\n")
            publish(staging, out, [WEIGHTS, RECIPE, CONFIG])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


# -- reading -------------------------------------------------------------------------------------------


def weights_path(path: str | Path) -> Path:
    """``path`` itself, or the model.safetensors inside a folder (see :func:`.hub.locate_weights`).

    Raises:
        ArtifactError: nothing there.
    """
    from .hub import locate_weights

    return locate_weights(path)


_weights_path = weights_path  # the name used before


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file (or a folder's model.safetensors), tensor data untouched.

    Raises:
        ArtifactError: missing, truncated, hostile or not a safetensors file (see ``read_header``).
    """
    return dict(read_header(weights_path(path)).metadata)


def _check_fit(model: nn.Module, header: SafetensorsHeader) -> dict[str, str]:
    """Compare the file's tensor names and shapes with the model's; return alias -> stored name."""
    from safetensors.torch import _remove_duplicate_names

    own = model.state_dict()
    removed = _remove_duplicate_names(own, preferred_names=list(header.tensors))
    aliases = {r: kept for kept, names in removed.items() for r in names}
    expected = {k: tuple(v.shape) for k, v in own.items() if k not in aliases}
    stored = header.tensors
    parts = []
    wrong = [f"{k} is {list(stored[k].shape)} in the file but {list(expected[k])} in the model"
             for k in sorted(set(expected) & set(stored)) if stored[k].shape != expected[k]]
    if wrong:
        parts.append(f"{len(wrong)} shape mismatch(es): {'; '.join(wrong[:3])}")
    missing = sorted(set(expected) - set(stored))
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    unexpected = sorted(set(stored) - set(expected) - set(aliases))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if parts:
        raise ArtifactError(f"tensors in {str(header.path)!r} do not match the recipe: {', '.join(parts)}",
                            "the file was edited or comes from another model or recipe; re-export it")
    return aliases


def _read_tensors(weights: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(weights), device="cpu")
    except Exception as exc:  # read_header accepted it, so this is a race or a safetensors limitation
        raise ArtifactError(f"{str(weights)!r} cannot be read ({str(exc).splitlines()[0][:200]})",
                            "copy it again or re-export it") from exc


def verify_tensors(weights: Path, metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> bool:
    """Check the stored sha256 against ``tensors`` (read from ``weights``) and the recipe JSON.

    Returns:
        False for an old file (format 1) without a sha256, True when it matches.

    Raises:
        ArtifactError: the digest does not match, or a current-format file lacks it.
    """
    if not metadata.get(SHA256_KEY):
        return verify_digest(weights, metadata, None)
    return verify_digest(weights, metadata, state_sha256(tensors, metadata.get(RECIPE_KEY, "").encode("utf-8")))


def load(path: str | Path, device: str | torch.device = "cpu", *, verify: bool = True) -> nn.Module:
    """Rebuild a masked model from a folder or a .safetensors file: base model + recipe + weights.

    The header is validated first (hostile files are refused before safetensors reads them); then the
    sha256 over tensors + recipe is checked, the model rebuilt from its recipe and the weights loaded
    strictly. No network is needed and nothing is unpickled. Files without a sha256 (written before it
    existed, format 1) load with one warning; a current-format file without one is refused. Nothing in
    the header is turned into a file read: a recipe asking timm for weights or a config from elsewhere
    is refused (see :func:`.untrusted.refuse_file_reads`).

    Args:
        path: a folder with model.safetensors (an export, a clone of its Hub repo, a Hub cache folder), a
            .safetensors file, ``local-dir:PATH``, or ``hf-hub:ORG/NAME[@revision]`` (an export uploaded to
            the Hub; downloaded once into huggingface_hub's cache).
        device: where the model goes.
        verify: check the sha256 (False loads an edited file anyway).

    Returns:
        The model in eval mode, with its recipe as ``model.ersm_recipe``.

    Raises:
        ArtifactError: missing, truncated, hostile or pickled file, no recipe, sha256 mismatch, or weights
            that do not fit the recipe.
        UnknownModelError: an ``hf-hub:`` name offline and not cached (the line says what to do).
        RecipeError: the recipe in the metadata is invalid.
    """
    from ..build import build_model
    from ..recipe import Recipe

    weights = weights_path(path)
    header = read_header(weights)
    meta = header.metadata
    if RECIPE_KEY not in meta:
        raise ArtifactError(f"{str(weights)!r} has no ersm recipe in its metadata (a plain timm model?)",
                            "load it with timm.create_model(\"local-dir:DIR\", pretrained=True), or inject masks "
                            "first")
    tensors = None
    if verify:
        tensors = _read_tensors(weights)
        verify_tensors(weights, meta, tensors)
    recipe = Recipe.from_json(meta[RECIPE_KEY])
    refuse_file_reads(recipe, weights)
    model = build_model(recipe)
    aliases = _check_fit(model, header)
    if tensors is None:
        tensors = _read_tensors(weights)
    for alias, kept in aliases.items():
        tensors[alias] = tensors[kept]
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ArtifactError(f"weights in {str(weights)!r} do not fit the recipe ({' '.join(first[:3])[:300]})",
                            "the file was edited or comes from another model; re-export it") from exc
    model.to(device)
    return model.eval()
