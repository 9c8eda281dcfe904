"""Library errors become one-line click errors at the CLI boundary (tracebacks only with --debug)."""
from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

import click

# errno -> (what it means, the fix): ordinary conditions of the machine, not bugs to report
_OS_FIXES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free some space or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write to another disk"),
    errno.EROFS: ("read-only file system", "write to a writable location (e.g. another -o / --output)"),
    errno.ENOTDIR: ("a path component is a file, not a folder", "check the path: a file stands where a folder "
                    "is expected"),
    errno.EACCES: ("permission denied", "fix the permissions or choose a location you can write to"),
    errno.EPERM: ("operation not permitted", "fix the permissions or choose a location you can write to"),
    errno.EISDIR: ("a folder stands where a file is expected", "check the path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer --workers"),
}


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError with a known errno behind ``exc`` (safetensors and torch wrap them), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _OS_FIXES:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _os_line(exc: BaseException) -> str | None:
    """One line with the fix for an ordinary OS condition behind ``exc``, or None."""
    os_exc = _os_error(exc)
    if os_exc is None:
        text = str(exc)
        # safetensors' Rust writer reports ENOSPC as text only ("No space left on device (os error 28)")
        for code, (what, fix) in _OS_FIXES.items():
            if f"(os error {code})" in text:
                return f"{what} ({text.strip().splitlines()[0][:200]}); {fix}"
        return None
    what, fix = _OS_FIXES[os_exc.errno]
    where = f": {os_exc.filename!r}" if os_exc.filename else ""
    return f"{what}{where}; {fix}"


def _debug(ctx: click.Context) -> bool:
    # read when the error happens: the root group's callback sets ctx.obj["debug"] only after
    # LazyGroup.invoke entered translate_errors
    return bool((ctx.obj or {}).get("debug")) or "--debug" in (ctx.args or [])


@contextlib.contextmanager
def translate_errors(ctx: click.Context) -> Iterator[None]:
    from ..errors import ErsmError

    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except ErsmError as exc:
        if _debug(ctx):
            raise
        raise click.ClickException(one_line(exc)) from None
    except KeyboardInterrupt as exc:
        if _debug(ctx):
            raise
        hint = getattr(exc, "hint", None) or "nothing half-written was left behind"
        raise click.ClickException(f"interrupted; {hint}") from None
    except Exception as exc:
        if _debug(ctx):
            raise
        line = _os_line(exc)
        if line is not None:
            raise click.ClickException(line) from None
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise click.ClickException(
            f"unexpected {type(exc).__name__}: {first}; rerun with --debug for the traceback and report it"
        ) from None


def one_line(exc: BaseException) -> str:
    """The error's own line, also when torch's DataLoader re-raised it from a worker process.

    A worker's exception comes back as ``"Caught DataError in DataLoader worker process 0.\nOriginal
    Traceback ...\n<module>.DataError: <problem>; <fix>"``: only that last line is the user's business.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    for prefix in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last
