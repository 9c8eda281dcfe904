"""Shared test set-up and the CLI helpers every command test uses (import them: ``from tests.conftest import run``).

One runner and one strict error check, so that every test holds the commands to the same rule
(DESIGN.md 4): a user-caused error ends with exactly one line ``Error: <problem>; <fix>``, a non-zero exit
code and no traceback.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from click.testing import CliRunner, Result

from ersm_surgery.cli.main import cli

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=UserWarning, module="timm")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def run(*args, quiet: bool = False) -> Result:
    """``ersm-surgery ARGS`` in-process (``-q`` first when ``quiet``); arguments may be paths or numbers."""
    return CliRunner().invoke(cli, [*(["-q"] if quiet else []), *[str(a) for a in args if not (quiet and a == "-q")]])


def run_quiet(*args) -> Result:
    """``ersm-surgery -q ARGS``: no progress bars or info messages."""
    return run(*args, quiet=True)


def ok(result: Result) -> Result:
    """The result, after asserting that the command succeeded (its output shown if not)."""
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result: Result, *fragments: str, code: int | None = None) -> str:
    """Assert the strict error rule and return the line: non-zero exit (or ``code``), exactly one non-blank line
    of output starting with ``Error: ``, no traceback, and every fragment in that line."""
    assert (result.exit_code != 0 if code is None else result.exit_code == code), result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
