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
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException("interrupted; nothing half-written was left behind") from None
    except Exception as exc:
        if debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise click.ClickException(
            f"unexpected {type(exc).__name__}: {first}; rerun with --debug for the traceback and report it"
        ) from None
