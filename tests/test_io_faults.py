"""Faults and hostile files: each one ends in a one-line error and a non-zero exit, and nothing half-written."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ersm_surgery
from ersm_surgery.errors import ArtifactError
from ersm_surgery.io import artifact, export, publish
from ersm_surgery.io.artifact import FORMAT_KEY, RECIPE_KEY, SHA256_KEY, state_sha256
from tests.conftest import one_line_error, run

SIZE = (3, 64, 64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE, num_classes=5)
    src = tmp_path_factory.mktemp("src") / "r-ersm"
    ersm_surgery.save(model, src)
    return src


def _split(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _write(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _copy(saved: Path, tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    path.write_bytes((saved / "model.safetensors").read_bytes())
    return path


def _each_command(path: Path, tmp_path: Path, match: str) -> None:
    """The same bad file is refused by info, export and load()."""
    one_line_error(run("info", path), match)
    one_line_error(run("export", path, "-o", tmp_path / "out"), match)
    with pytest.raises(ArtifactError, match=re.escape(match)):
        ersm_surgery.load(path)
    assert not (tmp_path / "out").exists()


# -- hostile and damaged files -------------------------------------------------------------------------------


def test_truncated_file(saved: Path, tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    path.write_bytes(path.read_bytes()[:-1000])
    _each_command(path, tmp_path, "truncated")


@pytest.mark.parametrize("kind", ["overlap", "out_of_range"])
def test_bad_offsets(saved: Path, tmp_path: Path, kind: str) -> None:
    header, data = _split(saved / "model.safetensors")
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    first, second = header[names[0]], header[names[1]]
    if kind == "overlap":  # the second tensor starts 4 bytes inside the first
        begin, end = second["data_offsets"]
        second["data_offsets"] = [begin - 4, end - 4]
        match = f"invalid offset for tensor `{names[1]}`"  # safetensors' reason, on our one line
    else:
        last = header[names[-1]]
        last["data_offsets"] = [last["data_offsets"][0] + 64, last["data_offsets"][1] + 64]
        match = f"invalid offset for tensor `{names[-1]}`"
    _each_command(_write(tmp_path / "model.safetensors", header, data), tmp_path, match)
    del first


def test_header_larger_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b'{"__metadata__": {}}')
    _each_command(path, tmp_path, "runs past the end")


def test_pickle_is_refused_with_the_conversion(saved: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(load_file(str(saved / "model.safetensors")), path)
    _each_command(path, tmp_path, "torch.load(path, weights_only=True)")
    folder = tmp_path / "folder"
    folder.mkdir()
    os.replace(path, folder / "model.safetensors")  # a pickle under the safetensors name
    one_line_error(run("export", folder, "-o", tmp_path / "out"), "PyTorch pickle")


def test_recipe_edited_after_export_is_refused_unless_no_verify(saved: Path, tmp_path: Path) -> None:
    header, data = _split(saved / "model.safetensors")
    recipe = json.loads(header["__metadata__"][RECIPE_KEY])
    recipe["mask"]["alpha"] = 0.1  # an edit that still builds the same shapes
    header["__metadata__"][RECIPE_KEY] = json.dumps(recipe, sort_keys=True)
    folder = tmp_path / "edited"
    folder.mkdir()
    _write(folder / "model.safetensors", header, data)
    one_line_error(run("export", folder, "-o", tmp_path / "out"), "sha256 mismatch")
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        ersm_surgery.load(folder)
    one_line_error(run("info", folder, "--verify"), "sha256 mismatch")
    assert run("info", str(folder)).exit_code == 0  # the header alone is fine
    # --no-verify (verify=False) loads it anyway, with the edited setting
    assert ersm_surgery.load(folder, verify=False).ersm_recipe.mask.alpha == 0.1
    result = run("export", str(folder), "-o", str(tmp_path / "out"), "--format", "safetensors",
                 "--no-verify")
    assert result.exit_code == 0, result.output
    assert ersm_surgery.load(tmp_path / "out").ersm_recipe.mask.alpha == 0.1  # re-signed by the export


def test_tensor_data_edited_is_refused(saved: Path, tmp_path: Path) -> None:
    path = _copy(saved, tmp_path)
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    one_line_error(run("export", path, "-o", tmp_path / "out"), "sha256 mismatch")


def test_tensor_shapes_that_do_not_match_the_recipe(saved: Path, tmp_path: Path) -> None:
    tensors = load_file(str(saved / "model.safetensors"))
    meta = artifact.read_metadata(saved)
    recipe = json.loads(meta[RECIPE_KEY])
    recipe["placements"][0]["hidden"] += 4  # the recipe now asks for a wider mask head than the file holds
    meta[RECIPE_KEY] = json.dumps(recipe, sort_keys=True)
    meta[SHA256_KEY] = state_sha256(tensors, meta[RECIPE_KEY].encode())  # consistently signed: only shapes differ
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=meta)
    line = one_line_error(run("export", tmp_path / "model.safetensors", "-o", tmp_path / "out"),
                          "do not match the recipe")
    assert "layer2.ersm_mask.head.reduce.weight is [8, 48, 1, 1] in the file but [12, 48, 1, 1]" in line
    with pytest.raises(ArtifactError, match="shape mismatch"):
        ersm_surgery.load(tmp_path / "model.safetensors")


def test_plain_safetensors_is_not_a_masked_model(tmp_path: Path) -> None:
    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    one_line_error(run("export", tmp_path / "plain.safetensors", "-o", tmp_path / "out"), "no ersm recipe")


def test_old_file_without_sha256_loads_with_one_warning(saved: Path, tmp_path: Path, caplog) -> None:
    meta = artifact.read_metadata(saved)
    del meta[SHA256_KEY], meta[FORMAT_KEY]  # as written before the format version existed
    save_file(load_file(str(saved / "model.safetensors")), str(tmp_path / "old.safetensors"), metadata=meta)
    with caplog.at_level(logging.WARNING, logger="ersm_surgery.io.tensor_hash"):
        ersm_surgery.load(tmp_path / "old.safetensors")
        ersm_surgery.load(tmp_path / "old.safetensors")
    assert caplog.text.count("no sha256") == 1


def test_current_file_without_its_sha256_is_refused(saved: Path, tmp_path: Path) -> None:
    meta = artifact.read_metadata(saved)
    del meta[SHA256_KEY]  # tampering: the weights were edited and the digest deleted
    tensors = load_file(str(saved / "model.safetensors"))
    tensors[next(iter(tensors))] += 1
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata=meta)
    with pytest.raises(ArtifactError, match="claims file format 2 but its ersm_sha256 is missing"):
        ersm_surgery.load(tmp_path / "model.safetensors")
    one_line_error(run("export", tmp_path / "model.safetensors", "-o", tmp_path / "out"), "ersm_sha256 is missing")
    assert not (tmp_path / "out").exists()  # no fresh, valid hash written over the edited weights
    one_line_error(run("info", tmp_path / "model.safetensors", "--verify"), "ersm_sha256")


# -- output location -------------------------------------------------------------------------------------------


def test_existing_folder_without_force(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    one_line_error(run("export", saved, "-o", out), "exists and is not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def _export_once(saved: Path, out: Path) -> dict[str, bytes]:
    result = run("export", str(saved), "-o", str(out), "--format", "safetensors",
                 "--no-validate")
    assert result.exit_code == 0, result.output
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_disk_full_midway_leaves_the_old_export_untouched(saved: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    before = _export_once(saved, out)
    calls = []

    def full(path, text):  # recipe.yaml is written after model.safetensors: fail in the middle of the export
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "atomic_write_text", full)
    line = one_line_error(run("export", saved, "-o", out, "--format", "safetensors,onnx", "--force"),
                          "No space left on device")
    assert "nothing was changed" in line and calls
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_failure_while_moving_into_place_rolls_back(saved: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    before = _export_once(saved, out)
    real = os.replace

    def flaky(src, dst):
        if Path(dst) == out and str(src).endswith(".partial"):  # the old folder is aside; the new one cannot go in
            raise OSError(errno.EACCES, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(publish.os, "replace", flaky)
    one_line_error(run("export", saved, "-o", out, "--format", "safetensors", "--no-validate", "--force"),
                   "Permission denied")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_output_location(saved: Path, tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes (the monkeypatched faults above cover it)")
        one_line_error(run("export", saved, "-o", parent / "out"), "Permission denied")
        assert not list(parent.iterdir())
    finally:
        parent.chmod(0o755)


def test_unwritable_output_location_simulated(saved: Path, tmp_path: Path, monkeypatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(publish.tempfile, "mkdtemp", denied)
    one_line_error(run("export", saved, "-o", tmp_path / "out"), "Permission denied")
    assert not (tmp_path / "out").exists()
