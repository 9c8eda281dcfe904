"""load() never turns a field of the file's own header into a file read (pretrained, checkpoint_path, sources)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ersm_surgery
from ersm_surgery.errors import ArtifactError
from ersm_surgery.io import artifact
from ersm_surgery.io.artifact import RECIPE_KEY, SHA256_KEY, state_sha256


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 32, 32), num_classes=3)
    return ersm_surgery.save(model, tmp_path_factory.mktemp("src") / "m")


def _resigned(saved: Path, tmp_path: Path, edit) -> Path:
    """A copy whose recipe was edited and re-hashed: the unkeyed hash cannot stop this, the rule must."""
    tensors = load_file(str(saved / "model.safetensors"))
    meta = artifact.read_metadata(saved)
    recipe = json.loads(meta[RECIPE_KEY])
    edit(recipe)
    meta[RECIPE_KEY] = json.dumps(recipe, sort_keys=True)
    meta[SHA256_KEY] = state_sha256(tensors, meta[RECIPE_KEY].encode())
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(("field", "edit"), [
    ("model_kwargs.pretrained", lambda r: r["model_kwargs"].update(pretrained=True)),
    ("model_kwargs.checkpoint_path", lambda r: r["model_kwargs"].update(checkpoint_path="/etc/passwd")),
    ("model_kwargs.pretrained_cfg_overlay", lambda r: r["model_kwargs"].update(
        pretrained_cfg_overlay={"file": "/tmp/evil.pth"})),
    ("model=", lambda r: r.update(model="local-dir:/tmp/elsewhere")),
])  # fmt: skip
def test_file_reading_fields_are_refused(saved: Path, tmp_path: Path, field: str, edit, monkeypatch) -> None:
    import timm

    calls = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    path = _resigned(saved, tmp_path, edit)
    with pytest.raises(ArtifactError, match="rebuilt from its own weights only") as info:
        ersm_surgery.load(path)
    assert field in str(info.value)
    assert not calls  # refused before timm was asked for anything


def test_harmless_overlay_still_loads(saved: Path, tmp_path: Path) -> None:
    path = _resigned(saved, tmp_path, lambda r: r["model_kwargs"].update(pretrained_cfg_overlay={"mean": [0.5] * 3}))
    assert ersm_surgery.load(path) is not None
