"""Shared pieces of the commands: the console, --json output, option parsing."""
from __future__ import annotations

import json
import re
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


# -- options every command that needs them shares: one spelling, one default, one validation ----------------

DEVICES = "auto, cpu, cuda, cuda:N, mps"
# DataLoader worker processes of finetune and evaluate (finetune's also sits in its recipe: FinetuneConfig.workers)
WORKERS_DEFAULT = 2
_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_device(value: str) -> str:
    """The device to run on for ``--device`` VALUE: ``auto`` picks CUDA, then MPS, then the CPU.

    Raises:
        click.BadParameter: not one of auto, cpu, cuda, cuda:N, mps, or not available on this machine.
    """
    text = value.strip().lower()
    if not _DEVICE_RE.fullmatch(text):
        raise click.BadParameter(f"{value!r} is not a device; choose from {DEVICES}", param_hint="--device")
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if text == "mps" and not has_mps:
        raise click.BadParameter("mps is not available on this machine; use --device cpu (or auto)",
                                 param_hint="--device")
    if text.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(text.partition(":")[2] or 0)
        if count == 0:
            raise click.BadParameter(f"{text} asked for, but torch sees no CUDA device; use --device cpu (or auto)",
                                     param_hint="--device")
        if index >= count:
            raise click.BadParameter(f"{text} asked for, but torch sees {count} CUDA device(s) (cuda:0 to "
                                     f"cuda:{count - 1})", param_hint="--device")
    return text


def device_callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_device(value)


def device_option(func):
    """``--device``: auto (default), cpu, cuda, cuda:N or mps; checked against this machine before any work."""
    return click.option("--device", default="auto", show_default=True, callback=device_callback, metavar="DEVICE",
                        help=f"Where to run: {DEVICES} (auto: CUDA, then MPS, then CPU).")(func)


def workers_option(func):
    """``-j/--workers``: DataLoader worker processes, the same default everywhere."""
    return click.option("-j", "--workers", type=click.IntRange(min=0), default=None,
                        help=f"DataLoader worker processes.  [default: {WORKERS_DEFAULT}]")(func)
