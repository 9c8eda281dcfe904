"""Preprocessing from the model's own timm config: fine-tuning, evaluation, export, old recipes, boxes.

test_resnet's pretrained config is not ImageNet's (mean = std = 0.5, crop_pct 0.95), so a run that still used
ImageNet statistics or a crop fraction of 1.0 on folder data would show here.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import ersm_surgery
from ersm_surgery.data import (
    CLUTTER_MEAN,
    CLUTTER_STD,
    Preprocessing,
    _render,
    base_preprocessing,
    create_dataset,
    resolve_preprocessing,
)
from ersm_surgery.errors import DataError
from ersm_surgery.recipe import RECIPE_VERSION, Recipe
from tests.conftest import ok
from tests.conftest import run_quiet as run

IMAGENET_MEAN = (0.485, 0.456, 0.406)


def _folder(root, size=(40, 30)):
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """test_resnet injected at 32 px, fine-tuned one epoch on a folder with the model's own preprocessing."""
    root = tmp_path_factory.mktemp("pre")
    data = _folder(root / "data")
    ok(run("inject", "test_resnet", "--stages", "2", "--input-size", "3,32,32", "--num-classes", "2",
           "-o", root / "inj"))
    ok(run("finetune", root / "inj", "--data-dir", data, "--epochs", "1", "-b", "4", "-j", "0", "-o", root / "ft"))
    return root, data


def test_finetune_records_the_models_own_preprocessing(trained):
    root, _ = trained
    recipe = ersm_surgery.load(root / "ft").ersm_recipe
    assert recipe.version == RECIPE_VERSION
    assert recipe.data_config == {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
                                  "std": [0.5, 0.5, 0.5], "crop_pct": 0.95, "crop_mode": "center"}


def test_evaluate_and_export_use_the_recorded_preprocessing(trained, tmp_path):
    root, data = trained
    ok(run("evaluate", root / "ft", "--data-dir", data, "--metrics", "accuracy", "--num-images", "4",
           "-o", tmp_path / "ev"))
    used = json.loads((tmp_path / "ev" / "results.json").read_text())["data"]["preprocessing"]
    assert used["mean"] == [0.5, 0.5, 0.5] and used["crop_pct"] == 0.95 and used["input_size"] == [3, 32, 32]
    ok(run("export", root / "ft", "--format", "safetensors", "-o", tmp_path / "ex"))
    cfg = json.loads((tmp_path / "ex" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["mean"] == [0.5, 0.5, 0.5] and cfg["std"] == [0.5, 0.5, 0.5]
    assert cfg["crop_pct"] == 0.95 and cfg["input_size"] == [3, 32, 32]
    meta = ersm_surgery.io.read_metadata(tmp_path / "ex")
    assert json.loads(meta["input_config"])["mean"] == [0.5, 0.5, 0.5]
    card = (tmp_path / "ex" / "README.md").read_text()  # the Hugging Face model card (Markdown-escaped)
    assert "mean [0.5, 0.5, 0.5]" in card and "crop\\_pct 0.95" in card
    # evaluating the export uses the preprocessing recorded in it
    ok(run("evaluate", tmp_path / "ex", "--data-dir", data, "--metrics", "accuracy", "--num-images", "4",
           "-o", tmp_path / "ev2"))
    assert json.loads((tmp_path / "ev2" / "results.json").read_text())["data"]["preprocessing"] == used


def test_flags_override_and_are_recorded_then_reused(trained, tmp_path):
    root, data = trained
    ok(run("finetune", root / "inj", "--data-dir", data, "--epochs", "1", "-b", "4", "-j", "0", "-o", tmp_path / "ft",
           "--mean", "0.1", "0.2", "0.3", "--std", "0.3", "0.2", "0.1", "--crop-pct", "0.8",
           "--interpolation", "bicubic", "--img-size", "40"))
    cfg = ersm_surgery.load(tmp_path / "ft").ersm_recipe.data_config
    assert cfg == {"input_size": [3, 40, 40], "interpolation": "bicubic", "mean": [0.1, 0.2, 0.3],
                   "std": [0.3, 0.2, 0.1], "crop_pct": 0.8, "crop_mode": "center"}
    # evaluate without flags: the recorded preprocessing; with a flag: the override
    ok(run("evaluate", tmp_path / "ft", "--data-dir", data, "--metrics", "accuracy", "--num-images", "2",
           "-o", tmp_path / "ev", "--crop-pct", "1.0"))
    used = json.loads((tmp_path / "ev" / "results.json").read_text())["data"]["preprocessing"]
    assert used["mean"] == [0.1, 0.2, 0.3] and used["crop_pct"] == 1.0 and used["interpolation"] == "bicubic"


def test_bad_preprocessing_flags_end_in_one_line(trained, tmp_path):
    root, data = trained
    result = run("finetune", root / "inj", "--data-dir", data, "--epochs", "1", "-o", tmp_path / "x",
                 "--crop-pct", "1.5")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "crop_pct" in result.output.strip().splitlines()[-1]
    result = run("evaluate", root / "ft", "--data-dir", data, "-o", tmp_path / "y", "--interpolation", "cubic")
    assert result.exit_code != 0 and "interpolation must be one of" in result.output.strip().splitlines()[-1]


def test_old_recipes_keep_their_old_preprocessing(tmp_path):
    model = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 48, 48), num_classes=10)
    old = Recipe.from_dict({k: v for k, v in model.ersm_recipe.to_dict().items() if k != "data_config"}
                           | {"version": 1})
    assert old.version == 1 and old.data_config is None
    model.ersm_recipe = old
    folder, source = base_preprocessing(model, "DATA")
    assert source == "legacy" and folder.mean == IMAGENET_MEAN and folder.crop_pct == 1.0
    assert folder.interpolation == "bilinear" and folder.input_size == (3, 48, 48)
    assert base_preprocessing(model, "builtin:clutter")[0].mean == CLUTTER_MEAN
    # a current recipe without a record gets the model's own config (crop 1.0 on generated data)
    model.ersm_recipe.version = 2
    own, source = base_preprocessing(model, "DATA")
    assert source == "model" and own.mean == (0.5, 0.5, 0.5) and own.crop_pct == 0.95
    assert base_preprocessing(model, "builtin:clutter")[0].crop_pct == 1.0
    # a saved version-1 model is evaluated as it was trained then
    model.ersm_recipe.version = 1
    ersm_surgery.save(model, tmp_path / "v1")
    ok(run("evaluate", tmp_path / "v1", "--dataset", "builtin:clutter", "--metrics", "accuracy", "--num-images", "2",
           "-o", tmp_path / "ev"))
    used = json.loads((tmp_path / "ev" / "results.json").read_text())["data"]["preprocessing"]
    assert used["mean"] == list(CLUTTER_MEAN) and used["std"] == list(CLUTTER_STD) and used["crop_pct"] == 1.0


def test_legacy_transforms_are_pixel_identical_to_the_old_ones(tmp_path):
    """Recipe version 1 meant Resize + CenterCrop + ImageNet for folders, the rendered pixels for clutter."""
    data = _folder(tmp_path / "d", size=(50, 37))
    ds = create_dataset(data, "validation", img_size=32)
    old = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor(),
                              transforms.Normalize(IMAGENET_MEAN, (0.229, 0.224, 0.225))])
    image = Image.open(ds.samples[0][0]).convert("RGB")
    assert torch.equal(ds[0][0], old(image))
    clutter = create_dataset("builtin:clutter", "validation", img_size=48, size=3)
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CLUTTER_MEAN, CLUTTER_STD)])
    assert torch.equal(clutter[1][0], plain(clutter.sample(1).image))


def test_generated_data_is_never_resampled_and_boxes_follow_the_crop():
    model = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 64, 64))
    pre = resolve_preprocessing(model, "builtin:clutter")
    ds = create_dataset("builtin:clutter", "validation", preprocessing=pre, size=4)
    assert ds.render_size == 64 and pre.crop_pct == 1.0
    plain = transforms.Compose([transforms.ToTensor(), transforms.Normalize(pre.mean, pre.std)])
    assert torch.equal(ds[0][0], plain(ds.sample(0).image))  # only normalised: no resize, no blur
    cropped = create_dataset("builtin:clutter", "validation", preprocessing=pre.with_overrides(crop_pct=0.8), size=4)
    assert cropped.render_size == 80 and cropped[0][0].shape == (3, 64, 64)
    for i in range(4):
        alpha = cropped._alpha(i, cropped._rngs(i)[0])  # rendered at 80 px; the crop keeps the centre 64
        want = _render.alpha_box(alpha[8:72, 8:72])
        assert np.allclose(cropped.box(i), want, atol=1.5 / 64), (i, cropped.box(i), want)


def test_map_box_matches_the_eval_transform_on_a_non_square_photo():
    pixels = np.zeros((60, 90, 3), dtype=np.uint8)
    pixels[10:40, 20:70] = 255  # box x 20..70 of 90, y 10..40 of 60
    pre = Preprocessing(input_size=(3, 32, 32), crop_pct=0.875, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = pre.transform()(Image.fromarray(pixels))[0] > 0.5
    ys, xs = torch.nonzero(out, as_tuple=True)
    seen = (xs.min() / 32, ys.min() / 32, (xs.max() + 1) / 32, (ys.max() + 1) / 32)
    mapped = pre.map_box((20 / 90, 10 / 60, 70 / 90, 40 / 60), 90, 60)
    assert np.allclose([float(v) for v in seen], mapped, atol=2 / 32), (seen, mapped)


def test_preprocessing_checks_its_values():
    with pytest.raises(DataError, match="mean needs 3 value"):
        Preprocessing(input_size=(3, 32, 32), mean=(0.5, 0.5))
    with pytest.raises(DataError, match="auto-augment"):
        Preprocessing(input_size=(3, 32, 32)).transform(train=True, auto_augment="not-a-policy")
