"""``ersm-surgery info``: header-only description of a safetensors file, no torch, sha256 only on request."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import ersm_surgery
from ersm_surgery.io import safetensors_header
from ersm_surgery.io.file_info import file_info, mask_groups
from tests.conftest import run

SIZE = (3, 64, 64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE, num_classes=5)
    model.ersm_recipe.finetune = {"label_names": ["a", "b", "c", "d", "e"], "epochs": 2}
    src = tmp_path_factory.mktemp("src") / "r-ersm"
    ersm_surgery.save(model, src)
    return src


def test_describes_a_masked_model(saved: Path) -> None:
    info = file_info(saved)  # a folder: its model.safetensors
    assert info["kind"] == "ersm" and info["model"] == "test_resnet" and info["num_classes"] == 5
    assert info["path"].endswith("model.safetensors") and info["input_size"] == [3, 64, 64]
    assert [m["path"] for m in info["masks"]] == ["layer2.ersm_mask", "layer3.ersm_mask"]
    assert [m["anchor"] for m in info["masks"]] == ["stage 2 (layer2)", "stage 3 (layer3)"]
    model = ersm_surgery.load(saved)
    assert info["mask_params"] == sum(p.numel() for p in ersm_surgery.masks(model).parameters())
    assert info["tensors"]["count"] == len(model.state_dict())
    assert info["tensors"]["params"] == sum(t.numel() for t in model.state_dict().values())
    assert info["versions"]["timm"] and info["versions"]["torch"] and info["versions"]["ersm_surgery"]
    assert info["labels"] == {"count": 5, "names": ["a", "b", "c", "d", "e"]}  # from recipe.finetune
    assert info["input_config"]["mean"] and info["mask_mode"] == "hard"
    assert info["sha256"]["state"] == "present" and "computed" not in info["sha256"]
    assert info["problems"] == []


def test_verify_reads_the_data(saved: Path) -> None:
    assert file_info(saved, verify=True)["sha256"]["state"] == "verified"
    result = run("info", saved, "--verify")
    code, out = result.exit_code, result.output
    assert code == 0 and "verified" in out


def test_reads_only_the_header_without_verify(saved: Path, monkeypatch) -> None:
    read = []

    class Counting(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            read.append(len(data))
            return data

        def readinto(self, buffer) -> int:
            raise AssertionError("info must not read tensor data")

    monkeypatch.setattr(safetensors_header, "open", lambda path, *a, **k: Counting(path, "r"), raising=False)
    info = file_info(saved)
    assert sum(read) == 8 + info["header_bytes"] < info["file_bytes"]


def test_imports_neither_torch_nor_timm(saved: Path) -> None:
    code = ("import sys; from ersm_surgery.io.file_info import file_info; "
            f"file_info({str(saved)!r}); print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plain_safetensors_is_shown_as_plain(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2, 3), "b": torch.zeros(3, dtype=torch.float16)}, str(path))
    info = file_info(path)
    assert info["kind"] == "plain" and "recipe" not in info and "sha256" not in info
    assert info["tensors"] == {"count": 2, "bytes": 30, "dtypes": {"F32": 1, "F16": 1}, "params": 9}
    result = run("info", path)
    code, out = result.exit_code, result.output
    assert code == 0 and "plain safetensors (no ersm metadata)" in out


def test_json_output(saved: Path) -> None:
    result = run("info", str(saved), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["kind"] == "ersm" and len(data["masks"]) == 2


def test_text_output(saved: Path) -> None:
    result = run("info", saved)
    code, out = result.exit_code, result.output
    assert code == 0
    for text in ("ersm masked model", "test_resnet", "layer2.ersm_mask", "stage 3", "present", "timm"):
        assert text in out


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    result = run("info", tmp_path / "nope.safetensors")
    code, out = result.exit_code, result.output
    assert code != 0 and len(out.strip().splitlines()) == 1 and out.startswith("Error:")
    result = run("info", tmp_path)  # a folder without model.safetensors
    code, out = result.exit_code, result.output
    assert code != 0 and len(out.strip().splitlines()) == 1 and "no model.safetensors" in out


def test_mask_groups() -> None:
    names = ["layer2.ersm_mask.head.w", "layer2.ersm_mask.head.b", "stages.1.ersm_mask_blocks_0_act.x", "fc.weight"]
    assert mask_groups(names) == {"layer2.ersm_mask": names[:2], "stages.1.ersm_mask_blocks_0_act": [names[2]]}
