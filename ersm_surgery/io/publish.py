"""Publishing an output folder as a whole: stage beside it, swap once, recover leftovers; one writer at a time.

A command that writes a folder (inject, finetune's model files, export) fills a hidden staging folder
beside it (``.NAME.xxxx.partial``, same file system), then swaps it in with two renames: the old folder to
``.NAME.xxxx.previous``, the staged one to ``NAME``; the old one is then deleted. A reader sees the old
folder or the new one, never a mix of files of two writes. A crash between the two renames (a window of
two system calls) leaves no ``NAME`` but a ``.previous``: the next writer puts it back first
(:func:`recover`), and removes any ``.partial`` or ``.previous`` left over.

Entries of the old folder that the writer does not own (``last/`` and ``summary.csv`` of a finetune run
when its best model is saved, a user's own notes) are carried into the staged folder as hard links (a
copy where the file system has none), so they survive the swap.

:func:`output_lock` holds an exclusive OS lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) on a
hidden ``.NAME.lock`` beside the folder for as long as a command writes it, so a second run into the same
folder fails at once in one line instead of interleaving with the first. The lock file is removed on
release. The lock is re-entrant within a process, so a command holding it can call :func:`.artifact.save`.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ArtifactError, OutputExistsError

try:  # POSIX
    import fcntl
except ImportError:  # Windows: the package still imports; msvcrt locks a byte range instead
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

__all__ = ["staging_dir", "publish", "swap_in", "recover", "output_lock", "write_error"]

_PARTIAL, _PREVIOUS = ".partial", ".previous"
_held: dict[str, list[int]] = {}  # lock path -> [fd, depth]: re-entrant within this process


def _real(out: Path) -> Path:
    # the folder a symlinked -o points to is the one replaced; "." has no name to put a sibling beside
    return Path(os.path.realpath(out))


def staging_dir(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` (same file system, so the final renames need no space)."""
    out = _real(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=_PARTIAL, dir=out.parent))


def _leftovers(out: Path, suffix: str) -> list[Path]:
    prefix = f".{out.name}."
    try:
        names = os.listdir(out.parent)
    except FileNotFoundError:
        return []
    return sorted((out.parent / n for n in names if n.startswith(prefix) and n.endswith(suffix)),
                  key=lambda p: p.stat().st_mtime)


def recover(out: Path) -> list[Path]:
    """Undo what an interrupted publish left: restore the folder, remove stale staging. Call under the lock.

    Returns:
        The leftovers handled (restored or removed).
    """
    out = _real(out)
    previous, partial = _leftovers(out, _PREVIOUS), _leftovers(out, _PARTIAL)
    if previous and not out.exists():  # crashed between the two renames: the last published folder is back
        os.replace(previous.pop(), out)
    for path in [*previous, *partial]:
        shutil.rmtree(path, ignore_errors=True)
    return [*previous, *partial]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _share(path: Path, mask: int) -> None:
    """The modes ``open()`` and ``mkdir()`` give under the umask (0o644 / 0o755 with the usual 022).

    mkstemp and mkdtemp made the files owner-only; an export is meant to be shared like any written file.
    """
    if path.is_dir() and not path.is_symlink():
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            _share(child, mask)
    elif not path.is_symlink():
        os.chmod(path, 0o666 & ~mask)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # no space, no time: the carried file is the same inode
    except OSError:
        shutil.copy2(src, dst)


def _carry(old: Path, staging: Path, skip: set[str]) -> None:
    """Bring the entries of ``old`` not in ``skip`` into ``staging`` (hard links where possible)."""
    for entry in old.iterdir():
        if entry.name in skip or (staging / entry.name).exists():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), staging / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(staging / entry.name))


def swap_in(staging: Path, out: Path) -> None:
    """Replace the folder ``out`` by ``staging`` with two renames; on a failure ``out`` is as before."""
    out = _real(out)
    previous = None
    if out.exists():
        previous = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}{_PREVIOUS}"
        os.replace(out, previous)
    try:
        os.replace(staging, out)
    except BaseException:
        if previous is not None:
            os.replace(previous, out)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def publish(staging: Path, out: Path, names: list[str], owned: Iterable[str] = ()) -> None:
    """Publish the staged entries ``names`` as the folder ``out``, all at once.

    Entries of the old ``out`` that are neither staged nor in ``owned`` (the names this writer writes,
    including those of older versions, so none goes stale) are carried over; anything else in the staging
    folder (scratch files of the writer) is left out. Any failure leaves ``out`` as it was.
    """
    out = _real(out)
    keep = set(names)
    for entry in list(staging.iterdir()):
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    if out.is_dir():
        _carry(out, staging, keep | set(owned))
    _share(staging, _umask())
    swap_in(staging, out)


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        elif msvcrt is not None:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold the exclusive write lock of the output folder ``out``; recover leftovers once it is held.

    Yields:
        ``out`` with symlinks resolved.

    Raises:
        OutputExistsError: another process holds the lock (one line: wait, or choose another output).
    """
    out = _real(Path(out))
    lock = out.parent / f".{out.name}.lock"
    key = str(lock)
    if key in _held:
        _held[key][1] += 1
        try:
            yield out
        finally:
            _held[key][1] -= 1
        return
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:  # the first write into the output's location: say where and why
            raise ArtifactError(f"cannot write to {str(out.parent)!r} ({exc.strerror or exc})",
                                "choose a writable location for the output, with space left") from None
        if not _try_lock(fd):
            os.close(fd)
            raise OutputExistsError(f"output folder {str(out)!r} is being written by another ersm-surgery process "
                                    f"(it holds {lock.name})", "wait for it to finish, or choose another output")
        # the holder before us may have removed the file between our open and our lock: lock the current one
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        _unlock(fd)
        os.close(fd)
    _held[key] = [fd, 1]
    try:
        recover(out)
        yield out
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)  # before unlocking, so a waiter that opened it re-checks (samestat above)
        _unlock(fd)
        os.close(fd)


def write_error(out: Path, exc: OSError) -> ArtifactError:
    """The one-line error for a failed write: nothing was changed."""
    reason = exc.strerror or str(exc)
    return ArtifactError(f"cannot write the export to {str(out)!r} ({reason})",
                         "free some space or choose a writable folder with -o; nothing was changed")
