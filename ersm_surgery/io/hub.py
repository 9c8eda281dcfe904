"""Where a saved masked model lives: a folder, a file, ``local-dir:PATH`` or ``hf-hub:ORG/NAME[@revision]``.

An export folder is laid out like a Hugging Face Hub repo (model.safetensors, config.json, README.md), so
the same folder is found whether it was written here, cloned from the Hub with git, or downloaded into
the Hub cache (``models--ORG--NAME/snapshots/<revision>/``). ``hf-hub:`` names download the weights file
once (huggingface_hub's cache; offline it is used when present).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError

__all__ = ["locate_weights", "WEIGHTS_NAME"]

WEIGHTS_NAME = "model.safetensors"
_LFS_POINTER = b"version https://git-lfs"


def _cache_snapshot(folder: Path) -> Path | None:
    """The snapshot a Hub cache folder (``models--ORG--NAME``) points at with ``refs/main``."""
    ref = folder / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = folder / "snapshots" / ref.read_text(encoding="utf-8").strip()
    return snapshot if snapshot.is_dir() else None


def _from_hub(name: str, location: str) -> Path:
    from ..model_source import hub_errors
    from ..optional import require

    require("huggingface_hub", f"loading {name!r}")
    from huggingface_hub import hf_hub_download

    repo, _, revision = location.partition("@")
    with hub_errors(name):
        return Path(hf_hub_download(repo, WEIGHTS_NAME, revision=revision or None))


def _check_not_lfs_pointer(path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(len(_LFS_POINTER))
    except OSError:
        return  # read_header reports it
    if head == _LFS_POINTER:
        raise ArtifactError(f"{str(path)!r} is a Git LFS pointer, not the weights",
                            "run 'git lfs pull' in the cloned repo, or load it as hf-hub:ORG/NAME")


def locate_weights(path: str | Path) -> Path:
    """The model.safetensors a load of ``path`` reads.

    Args:
        path: a folder (an export, a clone of its Hub repo, or a Hub cache folder), a ``.safetensors``
            file, ``local-dir:PATH``, or ``hf-hub:ORG/NAME[@revision]`` (downloaded on first use).

    Raises:
        ArtifactError: nothing there, or a Git LFS pointer instead of the weights.
        UnknownModelError: a Hub name that cannot be reached and is not cached.
        MissingDependencyError: a Hub name without huggingface_hub.
    """
    from ..model_source import is_source_name

    if isinstance(path, str) and is_source_name(path):
        source, _, location = path.partition(":")
        if source.lower().replace("_", "-") == "hf-hub":
            return _from_hub(path, location)
        path = Path(location).expanduser()
    path = Path(path)
    if path.is_dir() and not (path / WEIGHTS_NAME).exists():
        path = _cache_snapshot(path) or path
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise ArtifactError(f"no {WEIGHTS_NAME} at {str(path)!r}",
                            "pass a folder written by inject/finetune/export, a .safetensors file, local-dir:DIR "
                            "or hf-hub:ORG/NAME")
    _check_not_lfs_pointer(path)
    return path
