"""The Recipe: everything needed to rebuild a masked model from its base model and weights.

A model is always rebuilt as ``timm.create_model(recipe.model, **kwargs)`` + the recipe's placements +
the saved weights, loaded strictly; nothing is ever unpickled.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError
from .layers.config import MaskConfig
from .surgery.placement import Placement


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float: PyYAML follows YAML 1.1, where a float needs a dot."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats (``lr: 1e-4`` is a number, not a string)."""
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass

__all__ = ["Recipe", "RECIPE_VERSION", "RECIPE_ATTR", "load_recipe", "apply_overrides", "settable_keys"]

# 2: data_config (the preprocessing a model was fine-tuned with). A version-1 recipe has none and means the
# preprocessing of that time (ImageNet or the built-in data's statistics, crop fraction 1.0); a version-2
# recipe without one means the model's own timm pretrained config (see ersm_surgery.data.resolve).
# 3: mask.price (layers.price). A recipe of version 1 or 2 has no such key and means price "absolute", the only
# price of that time; a version-3 recipe always writes it.
# 4: mask.gate_pool (layers.gate). A gated recipe (mask.gate "stage") of version 1 to 3 has no such key and
# means "sample", the only rule of that time; a version-4 gated recipe always writes it.
# 5: mask.norm_prior_stats (layers.heads.RunningLogNorm). A recipe of version 1 to 4 has no such key and means
# "image", the only rule of that time; the key is left out when "image" in any version.
# 6: mask.norm_prior_zeros (layers.heads). A gated recipe (mask.gate "stage") with a prior (mask.norm_prior not 0)
# of version 1 to 5 has no such key and means "count": its prior's statistics counted the tokens a gated stage
# leaves at exactly zero. Only such tokens differ between the two rules; the key is left out when "skip".
RECIPE_VERSION = 6

# the recipe travels with the model as a plain attribute (not in the state dict)
RECIPE_ATTR = "ersm_recipe"

# top-level keys a user may set with --set (placements are set with --stages/--nodes)
_TOP_SETTABLE = ("model", "num_classes", "input_size")


@dataclass
class Recipe:
    """Base model, placements and layer settings of a masked model.

    Attributes:
        model: timm model name.
        model_kwargs: extra keyword arguments of ``timm.create_model`` (drop_path_rate, ...).
        num_classes: classifier size (None: the model's default).
        input_size: (C, H, W) the model was checked at.
        placements: where the masks sit.
        mask: the Energy-Mask layers' settings.
        finetune: fine-tuning settings (filled by ``finetune``; free-form here).
        version: recipe schema version.
        plugins: which plugin provides each plugin component the model uses, e.g.
            ``{"pairwise:edge_aware": "ersm-edge-aware"}`` (see ``ersm_surgery.plugins``); empty, and
            left out of the file, when the model uses built-in components only.
        data_config: the preprocessing the model was fine-tuned with, as timm's data config (input_size,
            interpolation, mean, std, crop_pct, crop_mode); None until ``finetune`` records it (then see
            ``version``), and left out of the file.
        base_model: where the base weights came from, when known: the ``hf-hub:ORG/NAME`` or
            ``local-dir:PATH`` the model was built from, or the Hub repo timm fetched ``--pretrained``
            weights from. Provenance only (the model card's ``base_model``); the model is rebuilt from
            ``model``. Left out of the file when unknown.
    """

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    input_size: tuple[int, int, int] | None = None
    placements: list[Placement] = field(default_factory=list)
    mask: MaskConfig = field(default_factory=MaskConfig)
    finetune: dict[str, Any] = field(default_factory=dict)
    version: int = RECIPE_VERSION
    plugins: dict[str, str] = field(default_factory=dict)
    data_config: dict[str, Any] | None = None
    base_model: str | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise RecipeError("invalid recipe: " + "; ".join(problems), "fix the recipe (see docs/recipe.md)")

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.model, str) or not self.model:
            out.append(f"model must be a timm model name, got {self.model!r}")
        # 0 is timm's headless backbone (pooled features out), e.g. eva02_tiny_patch14_224's default
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool)
                                             or self.num_classes < 0):
            out.append(f"num_classes must be 0 (headless) or a positive integer, got {self.num_classes!r}")
        if self.input_size is not None and (
            len(self.input_size) != 3 or any(not isinstance(v, int) or v <= 0 for v in self.input_size)
        ):
            out.append(f"input_size must be three positive integers C,H,W, got {self.input_size!r}")
        if self.version > RECIPE_VERSION:
            out.append(f"recipe version {self.version} is newer than this ersm-surgery understands ({RECIPE_VERSION})")
        if not isinstance(self.model_kwargs, dict):
            out.append("model_kwargs must be a mapping")
        if self.base_model is not None and not isinstance(self.base_model, str):
            out.append(f"base_model must be a string, got {self.base_model!r}")
        if not isinstance(self.plugins, dict) or not all(isinstance(v, str) for v in self.plugins.values()):
            out.append(f"plugins must map components to plugin names, got {self.plugins!r}")
        if self.data_config is not None:
            out += _data_config_problems(self.data_config)
        return out + self.mask.problems()

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"plugins": dict(self.plugins)} if self.plugins else {}
        if self.data_config is not None:
            extra["data_config"] = dict(self.data_config)
        if self.base_model:
            extra["base_model"] = self.base_model
        return {
            "version": self.version,
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "num_classes": self.num_classes,
            "input_size": list(self.input_size) if self.input_size else None,
            "placements": [p.to_dict() for p in self.placements],
            "mask": self.mask.to_dict(),
            "finetune": dict(self.finetune),
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a mapping, got {type(data).__name__}", "see docs/recipe.md")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"unknown recipe key(s) {', '.join(unknown)}", f"valid keys: {', '.join(sorted(known))}")
        if "model" not in data:
            raise RecipeError("the recipe names no model", "add 'model: <timm model name>'")
        problems = []
        try:
            mask = MaskConfig.from_dict(_versioned_mask(data))
        except (TypeError, ValueError) as exc:
            problems.append(str(exc))
            mask = MaskConfig()
        try:
            kwargs = dict(data)
            kwargs["placements"] = [Placement.from_dict(p) for p in data.get("placements") or []]
            kwargs["mask"] = mask
            if kwargs.get("input_size") is not None:
                kwargs["input_size"] = tuple(kwargs["input_size"])
            kwargs["model_kwargs"] = kwargs.get("model_kwargs") or {}
            kwargs["finetune"] = kwargs.get("finetune") or {}
            kwargs["plugins"] = kwargs.get("plugins") or {}
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"invalid recipe: {exc}", "fix the recipe (see docs/recipe.md)") from exc
        if problems:
            try:
                cls(**kwargs)
            except RecipeError as exc:
                problems.insert(0, exc.problem.removeprefix("invalid recipe: "))
            raise RecipeError("invalid recipe: " + "; ".join(problems), "fix the recipe (see docs/recipe.md)")
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise RecipeError(f"recipe is not valid JSON ({exc})", "fix or re-export it") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Recipe:
        try:
            return cls.from_dict(load_yaml(text))
        except yaml.YAMLError as exc:
            raise RecipeError(f"recipe is not valid YAML ({str(exc).splitlines()[0]})", "fix the file") from exc

    def save(self, path: str | Path) -> None:
        """Write YAML (or JSON for a .json path), atomically."""
        from .io.atomic import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_json() if path.suffix == ".json" else self.to_yaml())


def _versioned_mask(data: dict[str, Any]) -> Any:
    """The recipe's mask settings as that recipe's version meant them (before version 3, price "absolute";
    before version 4, a gated stage pooled its mask by "sample"; before version 6, a gated prior counted zeros)."""
    mask = data.get("mask") or {}
    version = data.get("version", 1)
    if not isinstance(mask, dict) or not isinstance(version, int):
        return mask
    if "price" not in mask and version < 3:
        mask = {**mask, "price": "absolute"}
    if "gate_pool" not in mask and mask.get("gate") == "stage" and version < 4:
        mask = {**mask, "gate_pool": "sample"}
    if "norm_prior_zeros" not in mask and mask.get("gate") == "stage" and mask.get("norm_prior") and version < 6:
        mask = {**mask, "norm_prior_zeros": "count"}
    return mask


def _data_config_problems(data: Any) -> list[str]:
    from .data.preprocessing import DATA_CONFIG_KEYS, Preprocessing
    from .errors import DataError

    if not isinstance(data, dict):
        return [f"data_config must be a mapping of {', '.join(DATA_CONFIG_KEYS)}, got {data!r}"]
    unknown = sorted(set(data) - set(DATA_CONFIG_KEYS))
    if unknown:
        return [f"unknown data_config key(s) {', '.join(unknown)} (valid: {', '.join(DATA_CONFIG_KEYS)})"]
    try:
        Preprocessing.from_dict(data)
    except DataError as exc:
        return [f"data_config: {exc.problem}"]
    return []


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a .yaml/.yml or .json file.

    Raises:
        RecipeError: missing, unreadable or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist", "check the path given to --recipe")
    text = path.read_text(encoding="utf-8")
    return Recipe.from_json(text) if path.suffix == ".json" else Recipe.from_yaml(text)


def settable_keys() -> list[str]:
    """Keys accepted by :func:`apply_overrides`."""
    mask_keys = [f"mask.{f.name}" for f in fields(MaskConfig)]
    return [*_TOP_SETTABLE, *mask_keys, "model_kwargs.<name>", "finetune.<name>"]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (YAML-parsed values) to a recipe dict; every bad item is reported at once.

    Raises:
        RecipeError: malformed items or unknown keys, all of them in one message.
    """
    mask_keys = {f.name for f in fields(MaskConfig)}
    problems = []
    data = {**data, "mask": dict(data.get("mask") or {}), "model_kwargs": dict(data.get("model_kwargs") or {}),
            "finetune": dict(data.get("finetune") or {})}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"{item!r} is not key=value")
            continue
        try:
            value = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        head, _, rest = key.partition(".")
        if head == "mask" and rest in mask_keys:
            data["mask"][rest] = value
        elif head in ("model_kwargs", "finetune") and rest:
            data[head][rest] = value
        elif key in _TOP_SETTABLE:
            data[key] = value
        else:
            problems.append(f"unknown key {key!r}")
    if problems:
        raise RecipeError("bad --set: " + "; ".join(problems), f"settable keys: {', '.join(settable_keys())}")
    return data
