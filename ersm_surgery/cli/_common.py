"""Shared pieces of the commands: the console, --json output, option parsing."""
from __future__ import annotations

import json
import sys
from typing import Any

import click


def console(ctx: click.Context):
    """A rich console on stderr when --json is used (stdout then holds only JSON)."""
    from rich.console import Console

    return Console(stderr=bool(ctx.params.get("as_json")), quiet=bool((ctx.obj or {}).get("quiet")))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def parse_input_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    """'3,224,224' -> (3, 224, 224); a BadParameter naming the expected form otherwise."""
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{value!r} is not C,H,W (three positive integers, e.g. 3,224,224)")
    return tuple(int(p) for p in parts)


def is_tty() -> bool:
    return sys.stderr.isatty()
