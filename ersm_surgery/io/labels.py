"""Class names of an exported model: given, from the weights' metadata, or from a labels file beside it."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..errors import ArtifactError
from .artifact import labels_of

__all__ = ["read_labels", "resolve_labels", "LABEL_FILES"]

LABEL_FILES = ("labels.txt", "labels.json")


def read_labels(path: str | Path) -> list[str]:
    """Class names from a .txt (one per line) or .json (a list, or {index: name}) file.

    Raises:
        ArtifactError: missing or unreadable file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ArtifactError(f"cannot read labels file {str(path)!r} ({exc.strerror})", "check the path") from None
    if path.suffix != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"labels file {str(path)!r} is not valid JSON ({exc})", "fix the file") from None
    if isinstance(data, dict):
        try:
            return [str(data[k]) for k in sorted(data, key=int)]
        except ValueError:
            raise ArtifactError(f"labels file {str(path)!r} maps non-integer keys", "use {\"0\": name, ...}") from None
    if isinstance(data, list):
        return [str(x) for x in data]
    raise ArtifactError(f"labels file {str(path)!r} holds a JSON {type(data).__name__}", "give a list of names")


def resolve_labels(src: Path, meta: dict[str, str], given: str | Path | Sequence[str] | None,
                   num_classes: int | None) -> list[str] | None:
    """The class names of an export: ``given`` (names or a file), else the metadata's, else a labels file.

    Raises:
        ArtifactError: a file cannot be read, or the count differs from ``num_classes``.
    """
    if isinstance(given, (str, Path)):
        labels = read_labels(given)
    elif given is not None:
        labels = [str(x) for x in given]
    else:
        labels = labels_of(meta)
        folder = src if src.is_dir() else src.parent
        for name in LABEL_FILES:
            if labels is None and (folder / name).is_file():
                labels = read_labels(folder / name)
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        raise ArtifactError(f"{len(labels)} label names for a model with {num_classes} classes",
                            "give one name per class (--labels FILE)")
    return labels
