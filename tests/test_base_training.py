"""The base of `run`/`reproduce`: settings chosen by rule from the model, and the gate before injection."""
import json

import numpy as np
import pytest
import timm
from PIL import Image
from rich.console import Console

from ersm_surgery.cli.run_cmd import render_summary
from ersm_surgery.pipeline import judge_claims
from ersm_surgery.pipeline.base_training import (
    base_gate,
    choose_base_settings,
    gate_threshold,
    model_traits,
    refuse,
    zero_head_if_loud,
)
from tests.conftest import run


def test_rule_gives_a_batchnorm_cnn_and_a_layernorm_model_different_settings():
    bn = model_traits(timm.create_model("test_resnet", num_classes=4))
    ln = model_traits(timm.create_model("test_convnext", num_classes=4))
    assert (bn.norm, ln.norm) == ("batch", "layer")
    assert ln.depthwise > 0 and bn.depthwise == 0
    s_bn, s_ln = choose_base_settings(bn, 32, 4), choose_base_settings(ln, 32, 4)
    # LayerNorm: warm-up over a tenth of the updates; BatchNorm starts at full rate
    assert s_bn.warmup_epochs == 0 and s_ln.warmup_epochs == pytest.approx(0.4)
    # BatchNorm CNNs train with LAMB (layer-wise trust ratio), LayerNorm models with AdamW an order lower
    assert (s_bn.opt, s_ln.opt) == ("lamb", "adamw") and s_ln.lr == pytest.approx(s_bn.lr / 10)
    assert s_bn.finetune_keys()["opt"] == "lamb" and s_bn.weight_decay < s_ln.weight_decay
    # square-root scaling of an adaptive optimizer's lr with the batch size
    assert choose_base_settings(bn, 128, 4).lr == pytest.approx(2 * s_bn.lr)
    assert all(isinstance(r, str) and r for r in s_bn.reasons + s_ln.reasons)
    # grouped (here depthwise) convolutions train channels-last; the dense resnet stays contiguous
    assert ln.grouped >= ln.depthwise > 0 and bn.grouped == 0
    assert s_ln.channels_last and s_ln.finetune_keys()["channels_last"] and not s_bn.channels_last
    assert any("channels-last" in r for r in s_ln.reasons)


def test_rule_zeroes_a_classifier_that_starts_from_large_random_logits():
    # timm's EfficientNet init scales the head by its output count: with 4 classes its gain is ~10
    eff = timm.create_model("test_efficientnet", num_classes=4)
    traits = model_traits(eff)
    assert traits.head_gain > 1 and traits.squeeze_excite > 0
    settings = choose_base_settings(traits, 32, 4)
    assert settings.zero_head
    zero_head_if_loud(eff, settings)
    assert float(eff.get_classifier().weight.detach().abs().sum()) == 0.0
    resnet = model_traits(timm.create_model("test_resnet", num_classes=4))
    assert resnet.head_gain < 1 and not choose_base_settings(resnet, 32, 4).zero_head


def test_gate_threshold_is_clearly_above_chance_and_beyond_the_noise():
    assert gate_threshold(4, 500) == pytest.approx(0.4375)  # a quarter of the way from 25% to 100%
    assert gate_threshold(10, 500) == pytest.approx(0.2)  # twice chance
    assert gate_threshold(2, 10_000) == pytest.approx(0.625)
    assert gate_threshold(2, 16) == pytest.approx(0.5 + 3 * 0.125)  # 16 images: three standard errors
    assert not base_gate(0.308, 4, 500).passed and base_gate(0.85, 4, 500).passed
    # the stop names what the budget bought when it chose the pictures
    line = str(refuse(base_gate(0.256, 4, 500), "convnext_atto", 4, 64, pictures=12000))
    assert "after 4 epoch(s) of 12000 pictures" in line and "needs 43.8%" in line and "\n" not in line


def _noise_folder(root, classes=("a", "b"), per_class=(24, 16), size=32):
    """A real ImageFolder whose labels carry no signal: every image is independent uniform noise."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "validation"), per_class, strict=True):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


ARGS = ["--stages", "2,3", "--base-epochs", "2", "--epochs", "1", "--img-size", "32", "--num-images", "16",
        "-b", "16"]


def test_gate_stops_a_base_at_chance_in_one_line_and_injects_nothing(tmp_path):
    data = _noise_folder(tmp_path / "noise")
    out = tmp_path / "run"
    result = run("run", "test_resnet", *ARGS, "--data-dir", str(data), "-o", str(out))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    line = lines[-1]
    assert line.startswith("Error:") and "did not learn" in line and "chance 50.0%" in line, result.output
    assert "--base-epochs" in line and "--img-size" in line and "--pretrained-path" in line
    assert not any("Traceback" in x for x in lines)
    assert not (out / "injected").exists() and not (out / "ersm").exists()
    record = json.loads((out / "base" / "base_settings.json").read_text())
    assert record["gate"]["passed"] is False and record["gate"]["chance"] == 0.5
    assert record["settings"]["opt"] == "lamb" and record["traits"]["norm"] == "batch"


def test_without_base_epochs_a_folder_gets_the_epochs_its_budget_affords(tmp_path):
    from ersm_surgery.pipeline.base_budget import MAX_EPOCHS

    data = _noise_folder(tmp_path / "noise")
    out = tmp_path / "run"
    args = [a for a in ARGS if a not in ("--base-epochs", "2")]
    result = run("run", "test_resnet", *args, "--data-dir", str(data), "-o", str(out))
    # a tiny model's epoch of 48 pictures costs milliseconds: the most epochs (a folder cannot draw more pictures)
    record = json.loads((out / "base" / "base_settings.json").read_text())
    plan = record["epochs"]
    assert plan["chosen_by"] == "budget" and plan["epochs"] == MAX_EPOCHS and plan["train_images"] is None
    assert record["last"]["epoch"] == MAX_EPOCHS
    # noise labels still stop at the gate, and the line says how long the base trained
    line = result.output.strip().splitlines()[-1]
    assert result.exit_code != 0 and f"after {MAX_EPOCHS} epoch(s) (chance" in line, result.output


def test_force_base_continues_and_marks_every_figure(tmp_path):
    data = _noise_folder(tmp_path / "noise")
    out = tmp_path / "run"
    result = run("-q", "run", "test_resnet", *ARGS, "--data-dir", str(data), "-o", str(out),
                 "--force-base", "--json", "--set", "mask.alpha=0.2")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["summary"]["base.untrained"] is True and summary["summary"]["base.chance"] == 0.5
    assert summary["base"]["untrained"] is True
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["summary"]["base.untrained"] is True and "UNTRAINED BASE" in results["notes"][0]
    report = (out / "eval" / "report.html").read_text()
    assert "UNTRAINED BASE" in report and "chance 50.0%" in report
    assert "after 2 epoch(s) (given)" in report  # how long the base trained, and who said so
    assert summary["base"]["epochs"]["chosen_by"] == "caller"
    assert all(r["untrained_base"] and r["verdict"].endswith("(untrained base)") for r in judge_claims(results))
    # the summary the run command prints carries the mark too
    console = Console(record=True, width=200)
    render_summary(console, summary)
    text = console.export_text()
    assert "UNTRAINED BASE" in text and "base.top1" in text and "base.chance" in text
