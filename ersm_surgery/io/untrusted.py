"""What a saved model's header may not ask for: no field of a file is turned into a file read.

A weights file carries its recipe, and :func:`.artifact.load` rebuilds the model from it with
``timm.create_model(recipe.model, **recipe.model_kwargs)``. Some timm arguments read other files: a
``pretrained`` flag (weights from the Hub or from a path named in ``pretrained_cfg`` /
``pretrained_cfg_overlay``), ``checkpoint_path`` (a checkpoint, read by torch), ``pretrained_path``, and a
model name that is itself a source (``local-dir:PATH`` reads PATH/config.json, ``hf-hub:`` the network).
ersm-surgery never records these (a source is recorded as its architecture plus ``base_model``), so a
header holding them was written by hand: it is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["refuse_file_reads", "file_reading_fields"]

# timm.create_model / build_model_with_cfg arguments that make timm (or torch) read a file or the network
_READING_KWARGS = ("pretrained", "pretrained_path", "checkpoint_path", "cache_dir")
# keys of a pretrained_cfg (or its overlay) that name where weights come from; read only under pretrained
_CFG_SOURCES = ("file", "url", "hf_hub_id", "hf_hub_filename", "state_dict")


def _names_a_source(cfg: Any) -> bool:
    return isinstance(cfg, dict) and any(cfg.get(k) for k in _CFG_SOURCES)


def file_reading_fields(recipe: Recipe) -> list[str]:
    """The recipe fields that would make the rebuild read something other than the weights file."""
    found = []
    if ":" in recipe.model:  # hf-hub:, local-dir:, timm's hf_hub: - registry names have no colon
        found.append(f"model={recipe.model!r}")
    kwargs = recipe.model_kwargs or {}
    found += [f"model_kwargs.{k}" for k in _READING_KWARGS if kwargs.get(k) not in (None, False)]
    found += [f"model_kwargs.{k}" for k in ("pretrained_cfg", "pretrained_cfg_overlay")
              if _names_a_source(kwargs.get(k))]
    return found


def refuse_file_reads(recipe: Recipe, where: str | Path) -> None:
    """Refuse a recipe read from a file that asks the rebuild to read other files.

    Raises:
        ArtifactError: naming the fields.
    """
    found = file_reading_fields(recipe)
    if found:
        raise ArtifactError(f"the recipe in {str(where)!r} asks timm to read other files or the network "
                            f"({', '.join(found)}); a saved model is rebuilt from its own weights only",
                            "the header was written by hand: re-export the model from its source")
