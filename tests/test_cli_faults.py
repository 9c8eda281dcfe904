"""CLI fault handling: --debug shows the traceback, ordinary OS conditions end in one line with the fix."""
from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ersm_surgery.cli._errors import _os_line
from ersm_surgery.cli.main import cli
from ersm_surgery.errors import ArtifactError


def _bad_file(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return bad


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = _bad_file(tmp_path)
    quiet = subprocess.run([sys.executable, "-m", "ersm_surgery.cli.main", "info", str(bad)],
                           capture_output=True, text=True, check=False)
    assert quiet.returncode != 0 and "Traceback" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "ersm_surgery.cli.main", "--debug", "info", str(bad)],
                          capture_output=True, text=True, check=False)
    assert loud.returncode != 0
    assert "Traceback" in loud.stderr and "ArtifactError" in loud.stderr, loud.stderr


def test_debug_in_process_reraises(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--debug", "info", str(_bad_file(tmp_path))])
    assert isinstance(result.exception, ArtifactError)


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.ENOTDIR, "not a folder"),
    (errno.EACCES, "permission denied"),
])  # fmt: skip
def test_os_errors_are_one_line_with_the_fix(code: int, words: str) -> None:
    try:
        try:
            raise OSError(code, "os says no", "/some/where")
        except OSError as inner:
            raise RuntimeError("wrapped by a library") from inner
    except RuntimeError as exc:
        line = _os_line(exc)
    assert line is not None and words in line and "/some/where" in line and ";" in line
    assert "report it" not in line and "\n" not in line


def test_rust_io_error_text_is_recognised() -> None:
    line = _os_line(RuntimeError("Error while serializing: IoError(Os { code: 28 }) No space left on device "
                                 "(os error 28)"))
    assert line is not None and line.startswith("no space left")


def test_unknown_errors_still_point_to_debug(monkeypatch, tmp_path: Path) -> None:
    import ersm_surgery.io.file_info as fi

    def boom(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(fi, "read_header", boom)
    result = CliRunner().invoke(cli, ["info", str(_bad_file(tmp_path))])
    assert result.exit_code != 0
    assert "no space left on the device" in result.output and "report it" not in result.output, result.output
    assert "Traceback" not in result.output
