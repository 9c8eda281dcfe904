"""Saving and loading masked models (safetensors + recipe), a model with its recipe, atomic file writes."""
from .artifact import CONFIG, RECIPE, WEIGHTS, check_output_dir, load, read_metadata, save, versions
from .atomic import atomic_path, atomic_write_bytes, atomic_write_text
from .source import SourceError, load_source, recipe_of, strip_masks

__all__ = [
    "CONFIG",
    "RECIPE",
    "WEIGHTS",
    "check_output_dir",
    "load",
    "read_metadata",
    "recipe_of",
    "save",
    "versions",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "SourceError",
    "load_source",
    "strip_masks",
]
