"""The base's epochs of `run`: fitted to a time budget from a measured epoch, or fixed by the caller."""
import json

import pytest
import timm
import torch

from ersm_surgery.pipeline.base_budget import (
    MAX_EPOCHS,
    MIN_EPOCHS,
    MIN_PICTURE_SHARE,
    measure_epoch_seconds,
    plan_epochs,
)


def test_plan_fits_the_budget_between_the_bounds():
    assert plan_epochs(None, 40.0, budget=160).epochs == 4
    assert plan_epochs(None, 26.0, budget=160).epochs == 6  # floor(6.15): never over the budget
    assert plan_epochs(None, 19.0, budget=160).epochs == 8
    assert plan_epochs(None, 0.01, budget=160).epochs == MAX_EPOCHS
    slow = plan_epochs(None, 100.0, budget=160)
    assert slow.epochs == MIN_EPOCHS and "the least" in slow.reason and slow.chosen_by == "budget"
    assert slow.seconds_per_epoch == 100.0 and slow.budget_seconds == 160
    more = plan_epochs(None, 19.0, train_images=4000, budget=160)  # data that can draw more pictures
    assert (more.epochs, more.train_images) == (MIN_EPOCHS, 8000)
    most = plan_epochs(None, 0.01, train_images=4000, budget=160)
    assert (most.epochs, most.train_images) == (MIN_EPOCHS, 4000 * MAX_EPOCHS // MIN_EPOCHS)
    assert plan_epochs(None, 40.0, train_images=4000, budget=160).train_images == 4000
    # a slower machine: fewer pictures (never fewer epochs), in proportion, down to MIN_PICTURE_SHARE of them
    slower = plan_epochs(None, 55.0, train_images=4000, budget=160)
    assert (slower.epochs, slower.train_images) == (MIN_EPOCHS, int(4000 * 160 / (55.0 * MIN_EPOCHS)))
    assert "fewer pictures" in slower.reason
    crawling = plan_epochs(None, 500.0, train_images=4000, budget=160)
    assert (crawling.epochs, crawling.train_images) == (MIN_EPOCHS, int(4000 * MIN_PICTURE_SHARE))
    given = plan_epochs(7)
    assert given.epochs == 7 and given.chosen_by == "caller" and given.seconds_per_epoch is None
    with pytest.raises(ValueError):
        plan_epochs(None, None)


@pytest.mark.parametrize("opt", ["adamw", "lamb"])
def test_measuring_an_epoch_leaves_the_model_and_the_random_generators_as_they_were(opt):
    model = timm.create_model("test_resnet", num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    seconds = measure_epoch_seconds(model, 8, 32, train_images=64, val_images=16, opt=opt)
    assert torch.equal(torch.rand(3), expected)  # the training after it draws what it would have drawn
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and seconds > 0


def test_an_epoch_estimate_is_the_measured_steps_scaled_by_the_step_counts(monkeypatch):
    # the clock is fixed (two timings compared on a loaded 2-core machine say nothing); the steps still run
    import ersm_surgery.eval.compute as compute
    from ersm_surgery.pipeline import base_budget

    monkeypatch.setattr(base_budget, "_timed", lambda fn, steps, device: (fn(), 0.01)[1])
    monkeypatch.setattr(compute, "measure_latency", lambda model, x, repeats, warmup: {"batch_ms": 5.0})
    model = timm.create_model("test_resnet", num_classes=4)
    one = measure_epoch_seconds(model, 8, 32, train_images=64, val_images=16)
    assert one == pytest.approx(8 * 0.01 + 2 * 0.005)
    assert measure_epoch_seconds(model, 8, 32, train_images=640, val_images=160) == pytest.approx(10 * one)
    # a last, partial batch is a step of its own
    assert measure_epoch_seconds(model, 8, 32, train_images=65, val_images=17) == pytest.approx(9 * 0.01 + 3 * 0.005)


@pytest.mark.parametrize("draws_more", [False, True])
def test_run_without_base_epochs_records_the_budget_plan(tmp_path, draws_more):
    from ersm_surgery.pipeline.base_training import train_base
    from ersm_surgery.pipeline.run import PipelineSettings, _config

    settings = PipelineSettings(model="test_resnet", stages=[2], output=tmp_path, batch_size=16, img_size=32,
                                data_options={"num_classes": 4, "size": 16})
    assert settings.base_epochs is None
    # built-in data given a base train size can draw more pictures; without one, the data are what they are
    config = _config(settings, 1, 1e-3, no_masks=True, data_options={"train_size": 16} if draws_more else {},
                     base=True)
    lines = []
    record = train_base(settings, config, tmp_path / "base", 4, lines.append)
    plan = record["epochs"]
    # a tiny model's epoch of 16 images costs milliseconds: the most the budget allows
    assert plan["chosen_by"] == "budget" and plan["seconds_per_epoch"] > 0
    if draws_more:  # the same updates as MAX_EPOCHS epochs, as MIN_EPOCHS epochs of more unique pictures
        assert plan["epochs"] == MIN_EPOCHS and plan["train_images"] == 16 * MAX_EPOCHS // MIN_EPOCHS
        assert record["config"]["data_options"]["train_size"] == plan["train_images"]
        assert "unique pictures" in lines[0]
    else:
        assert plan["epochs"] == MAX_EPOCHS and plan["train_images"] is None
    epochs = plan["epochs"]
    assert record["config"]["epochs"] == epochs and record["last"]["epoch"] == epochs
    assert len(lines) == 1 and f"{epochs} epoch(s)" in lines[0] and "--base-epochs" in lines[0]
    saved = json.loads((tmp_path / "base" / "base_settings.json").read_text())
    assert saved["epochs"] == plan and plan["reason"] in saved["settings"]["reasons"]
