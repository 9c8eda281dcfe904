"""Saving and loading masked models (safetensors + recipe), atomic file writes."""
from .artifact import CONFIG, RECIPE, WEIGHTS, check_output_dir, load, read_metadata, recipe_of, save, versions
from .atomic import atomic_path, atomic_write_bytes, atomic_write_text

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
]
