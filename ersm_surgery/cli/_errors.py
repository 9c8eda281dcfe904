"""Library errors become one-line click errors at the CLI boundary (tracebacks only with --debug)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click


@contextlib.contextmanager
def translate_errors(ctx: click.Context) -> Iterator[None]:
    from ..errors import ErsmError

    debug = bool((ctx.obj or {}).get("debug")) or "--debug" in (ctx.args or [])
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except ErsmError as exc:
        if debug:
            raise
        raise click.ClickException(one_line(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; nothing half-written was left behind") from None
    except Exception as exc:
        if debug:
            raise
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
