"""Moving a staged export into its folder all at once, so that a failure leaves the old export as it was."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import ArtifactError

__all__ = ["staging_dir", "publish", "write_error"]


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` (same file system, so the final renames need no space)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _share(path: Path, mask: int) -> None:
    """The modes ``open()`` and ``mkdir()`` give under the umask (0o644 / 0o755 with the usual 022).

    mkstemp and mkdtemp made the files owner-only; an export is meant to be shared like any written file.
    """
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            _share(child, mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def publish(staging: Path, out: Path, names: list[str], owned: Iterable[str]) -> None:
    """Move the staged entries (files or folders) ``names`` into ``out``.

    Every entry of ``owned`` (the names an export writes, including those of older versions) found in
    ``out`` and not replaced is removed, so that no stale file of an earlier export remains. Renames within
    one file system do not need space; if one still fails, what was moved is taken back and the previous
    entries restored, so ``out`` is as before.
    """
    out.mkdir(parents=True, exist_ok=True)
    mask = _umask()
    for name in names:
        _share(staging / name, mask)
    previous = staging / ".previous"
    previous.mkdir()
    moved: list[str] = []
    displaced: list[str] = []
    try:
        for name in dict.fromkeys([*owned, *names]):
            if (out / name).exists():
                os.replace(out / name, previous / name)
                displaced.append(name)
        for name in names:
            os.replace(staging / name, out / name)
            moved.append(name)
    except BaseException:
        for name in moved:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        for name in displaced:
            os.replace(previous / name, out / name)
        raise


def write_error(out: Path, exc: OSError) -> ArtifactError:
    """The one-line error for a failed write: nothing was changed."""
    reason = exc.strerror or str(exc)
    return ArtifactError(f"cannot write the export to {str(out)!r} ({reason})",
                         "free some space or choose a writable folder with -o; nothing was changed")
