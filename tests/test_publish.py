"""Whole-folder publish and the output lock: no mixed folder, leftovers recovered, one writer at a time."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import ersm_surgery
from ersm_surgery.cli.main import cli
from ersm_surgery.errors import OutputExistsError
from ersm_surgery.io import publish
from ersm_surgery.io.publish import output_lock, recover, staging_dir, swap_in


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 32, 32), num_classes=3)


def _folder(path: Path, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_swap_replaces_the_whole_folder(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", a="old", b="old")
    staging = _folder(staging_dir(out), a="new")
    swap_in(staging, out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_crash_between_the_two_renames_is_recovered(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", a="published")
    # what kill -9 after the first rename leaves: the old folder aside, the new one still staged
    os.replace(out, tmp_path / ".out.123-ab.previous")
    _folder(staging_dir(out), a="half")
    assert not out.exists()
    with output_lock(out):
        assert (out / "a").read_text() == "published"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .partial, .previous or .lock left


def test_leftovers_beside_an_intact_folder_are_removed(tmp_path: Path) -> None:
    out = _folder(tmp_path / "out", a="current")
    _folder(tmp_path / ".out.1-aa.previous", a="older")
    _folder(tmp_path / ".out.x1.partial", a="half")
    _folder(tmp_path / ".other.x1.partial", a="not ours")
    assert len(recover(out)) == 2
    assert (out / "a").read_text() == "current"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x1.partial", "out"]


def test_save_keeps_foreign_entries_and_replaces_its_own(model, tmp_path: Path) -> None:
    out = ersm_surgery.save(model, tmp_path / "run")
    _folder(out / "last", note="kept")
    (out / "summary.csv").write_text("epoch\n")
    first = (out / "model.safetensors").stat().st_ino
    ersm_surgery.save(model, out, force=True)
    assert (out / "last" / "note").read_text() == "kept" and (out / "summary.csv").exists()
    assert (out / "model.safetensors").stat().st_ino != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    ersm_surgery.load(out)


def test_a_failed_save_leaves_the_old_folder(model, tmp_path: Path, monkeypatch) -> None:
    out = ersm_surgery.save(model, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    from ersm_surgery.io import artifact

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact, "timm_config", boom)  # after the weights were staged
    with pytest.raises(OSError):
        ersm_surgery.save(model, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


_HOLDER = """
import sys
from ersm_surgery.io.publish import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture()
def held(tmp_path: Path):
    """Another process holding the lock of tmp_path/out until the test ends."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out
    proc.stdin.close()
    proc.wait(timeout=30)


@pytest.mark.skipif(publish.fcntl is None and publish.msvcrt is None, reason="no OS lock on this platform")
def test_second_writer_fails_in_one_line(held: Path, model) -> None:
    with pytest.raises(OutputExistsError, match="being written by another ersm-surgery process"):
        ersm_surgery.save(model, held, force=True)
    result = CliRunner().invoke(cli, ["-q", "inject", "test_resnet", "--stages", "2", "--input-size", "3,32,32",
                                      "-o", str(held), "--force"])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and "another ersm-surgery process" in lines[0], result.output
    assert not held.exists()


def test_lock_is_reentrant_and_released(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out), output_lock(out):
        assert (tmp_path / ".out.lock").exists()
    assert not (tmp_path / ".out.lock").exists()
    with output_lock(out):  # released: taken again
        pass
