"""results.json: every number of an evaluation, with versions, seeds and the data's description.

Non-finite floats (an undefined ratio) are written as ``null`` so that the file is strict JSON.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_FILE", "to_jsonable", "write_results", "read_results", "make_readable"]

RESULTS_FILE = "results.json"


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: tensors and numpy values become lists and numbers, NaN and inf become None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return to_jsonable(value.tolist())
    return str(value)


def make_readable(path: Path) -> Path:
    """Give a written file the usual permissions (0666 less the umask): atomic writes leave them 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return path


def write_results(results: dict, out_dir: str | Path) -> Path:
    """Write ``results.json`` into ``out_dir`` atomically; returns its path."""
    from ..io.atomic import atomic_write_text

    path = Path(out_dir) / RESULTS_FILE
    atomic_write_text(path, json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n")
    return make_readable(path)


def read_results(path: str | Path) -> dict:
    """Read a results.json (or the one inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    return json.loads(path.read_text(encoding="utf-8"))
