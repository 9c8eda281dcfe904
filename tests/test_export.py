"""Export: safetensors with metadata and sha256, config.json, model card, ONNX parity, stripped backbone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import ersm_surgery
from ersm_surgery.io.artifact import (
    RECIPE_KEY,
    SHA256_KEY,
    input_config,
    state_sha256,
    state_to_save,
    weights_metadata,
    write_weights,
)
from ersm_surgery.io.export import BACKBONE, ONNX, VALIDATION, backbone_state_dict
from ersm_surgery.io.onnx_export import export_onnx
from ersm_surgery.io.onnx_validation import validate_onnx
from ersm_surgery.io.safetensors_header import read_header
from ersm_surgery.io.tensor_hash import file_sha256
from tests.conftest import run
from tests.coverage_models import COVERAGE

SIZE = (3, 64, 64)
# families for the ONNX parity check at 64 px: (model, stages)
ONNX_FAMILIES = [
    ("test_resnet", (2, 3)),
    ("test_convnext", (1, 2)),
    ("test_efficientnet", (2, 3)),
    ("mobilenetv3_small_050", (2, 3)),
    ("regnetx_002", (2, 3)),
    ("test_byobnet", (2, 3)),
]
# five families in the normal suite; regnetx_002 (the slowest to trace) with -m slow, resnet50 too (below)
ONNX_PARAMS = [pytest.param(name, stages, id=name, marks=pytest.mark.slow if name == "regnetx_002" else ())
               for name, stages in ONNX_FAMILIES]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """test_resnet with masks after stages 2 and 3, 5 classes, saved with labels and results beside it."""
    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE, num_classes=5)
    src = tmp_path_factory.mktemp("src") / "r-ersm"
    ersm_surgery.save(model, src)
    (src / "labels.txt").write_text("cat\ndog\nbird\nfish\nfrog\n")
    (src / "results.json").write_text(json.dumps({"accuracy": {"masked": 0.8123, "plain": 0.8201},
                                                  "density": 0.41}))
    return src


def _x(batch: int = 2, size=SIZE) -> torch.Tensor:
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(1))


# -- the sha256 ----------------------------------------------------------------------------------------------


def test_in_memory_hash_is_the_file_hash_for_every_dtype(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(4, 3, 3, generator=g), "h": torch.randn(5, generator=g).half(),
        "b": torch.randn(2, 3, generator=g).bfloat16(), "keep": torch.rand(7, generator=g) > 0.5,
        "n": torch.tensor(7, dtype=torch.int64), "empty": torch.zeros(0, 4), "u8": torch.arange(9, dtype=torch.uint8),
        "f8": torch.randn(6, generator=g).to(torch.float8_e4m3fn), "d": torch.randn(3, dtype=torch.float64),
        "é/unicode": torch.ones(2, dtype=torch.int32),
    }  # fmt: skip
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    header = read_header(path)
    for extra in (b"", b'{"model": "x"}'):
        assert state_sha256(tensors, extra) == file_sha256(path, header, extra)
    assert state_sha256(tensors, b"a") != state_sha256(tensors, b"b")


def test_save_writes_metadata_and_a_verifiable_sha256(saved: Path) -> None:
    header = read_header(saved / "model.safetensors")
    meta = header.metadata
    assert meta[SHA256_KEY] == file_sha256(header.path, header, meta[RECIPE_KEY].encode())
    assert meta["format"] == "pt" and meta["model"] == "test_resnet" and meta["num_classes"] == "5"
    assert {"ersm_surgery", "torch", "timm", "input_config", "mask_mode", "model_kwargs"} <= set(meta)
    assert set(json.loads(meta["input_config"])) >= {"input_size", "mean", "std", "interpolation"}
    assert json.loads(meta[RECIPE_KEY])["placements"][0]["stage"] == 2


# test_coverage.py already saves and loads every family (now with the sha256 checked); here the export
# writer is checked against the file hash and the stripped backbone: a few fast families in the normal suite
# (selecsls is masked by a forward hook), every family with -m slow.
_FAST = ("resnet", "convnext", "selecsls")
ROUND_TRIP = [pytest.param(*c, id=c[0], marks=() if c[0] in _FAST else pytest.mark.slow) for c in COVERAGE]


@pytest.mark.parametrize("family, name, size, stages", ROUND_TRIP)
def test_safetensors_round_trip_every_family(tmp_path: Path, family, name, size, stages) -> None:
    model = ersm_surgery.inject(name, stages=list(stages), input_size=size, num_classes=5).eval()
    x = torch.randn(2, *size)
    with torch.no_grad():
        expected = model(x)
    path = tmp_path / "model.safetensors"
    meta = write_weights(model, path, weights_metadata(model, labels=[f"c{i}" for i in range(5)]))
    header = read_header(path)
    assert meta[SHA256_KEY] == header.metadata[SHA256_KEY]
    assert meta[SHA256_KEY] == file_sha256(path, header, meta[RECIPE_KEY].encode())
    loaded = ersm_surgery.load(path)
    with torch.no_grad():
        assert (loaded(x) - expected).abs().max() <= 1e-5
    backbone = backbone_state_dict(model)
    assert not any("ersm_mask" in k for k in backbone) and len(backbone) < len(state_to_save(model))
    timm.create_model(name, num_classes=5).load_state_dict(backbone, strict=True)


# -- the export command --------------------------------------------------------------------------------------


def test_export_writes_every_file_and_validates(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("export", saved, "-o", out, "--format", "safetensors,onnx", "--strip-masks", "--with-masks",
                 "--mask-mode", "soft", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    names = {"model.safetensors", "recipe.yaml", "config.json", "README.md", ONNX, BACKBONE, VALIDATION}
    assert {p.name for p in out.iterdir()} == names  # no temporary file left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    report = json.loads((out / VALIDATION).read_text())
    assert report["safetensors"]["max_abs_diff"] == 0.0 and report["safetensors"]["ok"]
    assert report["onnx"]["ok"] and report["onnx"]["max_abs_diff"] <= 1e-4 and report["backbone"]["ok"]
    assert set(report["onnx"]["outputs"]) == {"logits", "mask:layer2.ersm_mask", "mask:layer3.ersm_mask"}
    assert summary["validation"] == report and summary["mask_mode"] == "soft"

    meta = read_header(out / "model.safetensors").metadata
    assert json.loads(meta["label_names"]) == ["cat", "dog", "bird", "fish", "frog"]  # from labels.txt
    assert meta["mask_mode"] == "soft" and json.loads(meta[RECIPE_KEY])["mask"]["eval_mode"] == "soft"
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 5
    assert config["label_names"][0] == "cat" and config["ersm"]["mask"]["eval_mode"] == "soft"
    assert "pretrained_cfg" in config and config["ersm"]["versions"]["timm"]
    card = (out / "README.md").read_text()
    for text in ("test\\_resnet", "layer2.ersm\\_mask", "stage 3 (layer3)", "accuracy.masked", "0.8123", "timm "):
        assert text in card

    # the export loads back as the model it came from, with the exported mask mode
    source = ersm_surgery.load(saved)
    ersm_surgery.masks(source).set_mode(eval_mode="soft")
    exported = ersm_surgery.load(out)
    with torch.no_grad():
        assert (exported(_x()) - source(_x())).abs().max() <= 1e-5


def test_stripped_backbone_loads_in_plain_timm(saved: Path, tmp_path: Path) -> None:
    """backbone/ opens with timm.create_model("local-dir:...", pretrained=True) and nothing else, and its
    outputs equal the masked model's with the masks switched off (and differ with them on)."""
    out = tmp_path / "out"
    assert run("export", saved, "-o", out, "--format", "safetensors", "--strip-masks").exit_code == 0
    assert {p.name for p in (out / BACKBONE).iterdir()} == {"config.json", "model.safetensors", "README.md"}
    from_timm = timm.create_model(f"local-dir:{out / BACKBONE}", pretrained=True).eval()
    masked = ersm_surgery.load(saved)
    ersm_surgery.masks(masked).set_mode(eval_mode="soft")  # fresh masks are open but not exactly 1
    x = _x()
    with torch.no_grad():
        with ersm_surgery.masks(masked).switched_off():
            unmasked = masked(x)
        assert from_timm.num_classes == 5 and (from_timm(x) - unmasked).abs().max() <= 1e-5
        assert not torch.equal(masked(x), unmasked)  # the masks do act when switched on
    recorded = input_config(masked)  # the preprocessing the export records is what timm resolves for backbone/
    resolved = timm.data.resolve_model_data_config(from_timm)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()} == recorded
    assert json.loads((out / BACKBONE / "config.json").read_text())["label_names"][0] == "cat"
    assert run("info", out / BACKBONE / "model.safetensors").output.count("plain safetensors") == 1


def test_force_replaces_an_export_and_drops_its_stale_files(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("export", saved, "-o", out, "--format", "onnx", "--no-validate", "--strip-masks").exit_code == 0
    assert (out / ONNX).exists() and not (out / VALIDATION).exists() and (out / BACKBONE / "config.json").exists()
    (out / "notes.txt").write_text("mine")
    for old in ("model_card.md", "backbone.safetensors"):  # what exports before README.md and backbone/ wrote
        (out / old).write_text("old")
    result = run("export", saved, "-o", out, "--format", "safetensors", "--force")
    assert result.exit_code == 0, result.output
    assert not (out / ONNX).exists() and (out / VALIDATION).exists() and (out / "model.safetensors").exists()
    assert not (out / "model_card.md").exists() and not (out / "backbone.safetensors").exists()
    assert not (out / BACKBONE).exists()  # the old export's backbone/ folder went with it
    assert (out / "notes.txt").read_text() == "mine"  # files that are not the export's are kept


def test_validation_over_tolerance_fails_in_one_line_and_writes_nothing(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("export", saved, "-o", out, "--format", "onnx", "--rtol", "0", "--atol", "0")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: validation failed: model.onnx: output 'logits' differs")
    assert "more than 0 = atol 0 + rtol 0" in lines[0] and "top-1 agreement" in lines[0]
    assert "--no-validate" in lines[0] and "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_with_masks_needs_onnx(saved: Path, tmp_path: Path) -> None:
    result = run("export", saved, "-o", tmp_path / "o", "--format", "safetensors", "--with-masks")
    assert result.exit_code == 2 and "add onnx to --format" in result.output


def test_help_is_fast_and_lists_the_commands() -> None:
    result = run("--help")
    assert "export" in result.output and "info" in result.output
    for command in ("export", "info"):
        assert run(command, "--help").exit_code == 0


# -- ONNX --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, stages", ONNX_PARAMS)
def test_onnx_parity_hard_and_soft(tmp_path: Path, name: str, stages) -> None:
    model = ersm_surgery.inject(name, stages=list(stages), input_size=SIZE).eval()
    for mode in ("hard", "soft"):
        ersm_surgery.masks(model).set_mode(eval_mode=mode)
        path = tmp_path / f"{mode}.onnx"
        with_masks = mode == "hard"
        assert export_onnx(model, path, SIZE, with_masks=with_masks)["exporter"] == "torchscript"
        # batch 3, traced at 2: dynamic axis
        parity = validate_onnx(model, path, _x(3), SIZE, with_masks=with_masks)
        assert parity["max_abs_diff"] <= 1e-4, (mode, parity)
        if with_masks:
            assert len(parity["outputs"]) == 1 + len(stages) and not any(parity["mask_flips"].values())


def test_onnx_parity_with_the_magnitude_prior(tmp_path: Path) -> None:
    # run's masks: the prior's log, standardisation and clamp export
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE,
                                config={"norm_prior": 1.0, "init_logit": 1.0}).eval()
    path = tmp_path / "prior.onnx"
    export_onnx(model, path, SIZE, with_masks=True)
    parity = validate_onnx(model, path, _x(3), SIZE, with_masks=True)
    assert parity["max_abs_diff"] <= 1e-4 and not any(parity["mask_flips"].values()), parity


def test_onnx_export_is_deterministic(tmp_path: Path) -> None:
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE).eval()
    export_onnx(model, tmp_path / "a.onnx", SIZE)
    export_onnx(model, tmp_path / "b.onnx", SIZE)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_onnx_parity_resnet50(tmp_path: Path, mode: str) -> None:
    size = (3, 128, 128)
    model = ersm_surgery.inject("resnet50", stages=[2, 3], input_size=size).eval()
    ersm_surgery.masks(model).set_mode(eval_mode=mode)
    export_onnx(model, tmp_path / "m.onnx", size)
    assert validate_onnx(model, tmp_path / "m.onnx", _x(2, size), size)["max_abs_diff"] <= 1e-4


def test_dynamo_exporter_writes_one_self_contained_file(tmp_path: Path) -> None:
    # torch.onnx.export(dynamo=True) puts the weights in "<file>.data" unless told not to; written under a
    # temporary name, that file would be lost (and the graph would point to it)
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE).eval()
    info = export_onnx(model, tmp_path / "m.onnx", SIZE, exporter="dynamo")
    assert info["exporter"] == "dynamo" and info["files"] == ["m.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert validate_onnx(model, tmp_path / "m.onnx", _x(3), SIZE, exporter="dynamo")["max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_dynamo_external_data_is_named_after_the_final_file(tmp_path: Path, monkeypatch) -> None:
    from ersm_surgery.io import onnx_export

    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE).eval()
    monkeypatch.setattr(onnx_export, "_EXTERNAL_DATA_BYTES", 0)  # as if the model were over 2 GB
    info = export_onnx(model, tmp_path / "m.onnx", SIZE, exporter="dynamo")
    assert info["files"] == ["m.onnx.data", "m.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert validate_onnx(model, tmp_path / "m.onnx", _x(3), SIZE, exporter="dynamo")["max_abs_diff"] <= 1e-4
