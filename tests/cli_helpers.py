"""The quiet CLI runner the command tests share (the stricter one-line-error helpers are #11's to unify)."""
from __future__ import annotations

from click.testing import CliRunner, Result

from ersm_surgery.cli.main import cli


def run(*args) -> Result:
    """``ersm-surgery -q ARGS`` in-process; arguments may be paths or numbers."""
    return CliRunner().invoke(cli, ["-q", *[str(a) for a in args if a != "-q"]])


def ok(result: Result) -> Result:
    """The result, after asserting that the command succeeded (its output shown if not)."""
    assert result.exit_code == 0, result.output
    return result
