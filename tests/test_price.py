"""The relative price (``mask.price=relative``): its unit, its scale invariance, the warning, old recipes."""
import logging

import pytest
import torch
import torch.nn.functional as F

from ersm_surgery.layers import EnergyMask, MaskConfig, energy_regularizer
from ersm_surgery.recipe import Recipe
from ersm_surgery.train.mask_watch import MaskWatch


def test_the_price_is_alpha_times_the_mean_task_gradient_on_the_mask():
    layer = EnergyMask(4, MaskConfig(alpha=0.5, beta=0.0, price="relative"), hidden=2).train()
    x = torch.randn(3, 4, 5, 5)
    weight = torch.randn(3, 4, 5, 5)
    (layer(x) * weight).sum().backward()  # dL/dm_i = sum_c x_ic * w_ic, exactly
    expected = (x * weight).sum(1).abs().sum()
    assert layer.task_scale.value().item() == pytest.approx(expected.item(), rel=1e-5)  # debiased after one step
    layer(x)
    q = layer.state.q.detach().requires_grad_()
    layer.state = layer.state._replace(q=q)
    energy_regularizer([layer]).backward()
    per_token = 0.5 * expected / q.numel()  # alpha * mean |dL/dm|
    assert torch.allclose(q.grad, torch.full_like(q, per_token.item()), rtol=1e-5)


def test_the_observed_scale_is_the_task_gradient_alone_also_in_soft_mode():
    for mode in ("soft", "straight_through"):
        layer = EnergyMask(4, MaskConfig(train_mode=mode, beta=0.0, price="relative"), hidden=2).train()
        x = torch.randn(2, 4, 4, 4)
        out = layer(x).sum() + 1000.0 * layer.state.q.sum()  # a term on q must not count as the task's
        out.backward()
        assert layer.task_scale.value().item() == pytest.approx(x.sum(1).abs().sum().item(), rel=1e-5), mode


def test_a_loss_multiplier_is_divided_out():
    layer = EnergyMask(4, MaskConfig(price="relative"), hidden=2).train()
    x = torch.randn(2, 4, 4, 4)
    layer.task_scale.set_multiplier(0.25)  # e.g. 4 accumulation steps: the loop backpropagates loss / 4
    (0.25 * layer(x).sum()).backward()
    assert layer.task_scale.value().item() == pytest.approx(x.sum(1).abs().sum().item(), rel=1e-5)


def test_nothing_is_observed_in_eval_or_without_grad_and_no_state_dict_entry():
    layer = EnergyMask(4, MaskConfig(price="relative"), hidden=2)
    with torch.no_grad():
        layer.train()(torch.randn(1, 4, 3, 3))
    layer.eval()(torch.randn(1, 4, 3, 3))
    assert layer.task_scale.seen.item() == 0
    assert not any("task_scale" in k for k in layer.state_dict())


def _toy_density(price: str, task_scale: float = 1.0, feature_scale: float = 1.0) -> float:
    """Equilibrium mean q of a toy regression whose target is carried by half of a 6x6 map's tokens.

    Channel 0 says the column; the target is the sum of channel 1 over columns 0-2, plus noise. The mask
    (soft, so the equilibrium is a fixed point rather than a straight-through flicker) is trained by Adam on
    task_scale * MSE + R, the prediction read from the masked map: a relative price should keep the
    informative half and drop the rest whatever the scale of the loss or of the features.
    """
    torch.manual_seed(0)
    layer = EnergyMask(4, MaskConfig(alpha=0.3, beta=0.0, price=price, train_mode="soft"), hidden=8).train()
    opt = torch.optim.Adam(layer.parameters(), lr=2e-2)
    column = (torch.arange(6).float() / 5).view(1, 1, 1, 6).expand(1, 1, 6, 6)
    informative = (column < 0.5).float()
    means = []
    for step in range(200):
        x = torch.randn(64, 4, 6, 6)
        x[:, :1] = column
        y = (informative * x[:, 1:2]).flatten(1).sum(1) + 0.5 * torch.randn(64)
        pred = (informative * layer(feature_scale * x)[:, 1:2]).flatten(1).sum(1) / feature_scale
        gamma = min(1.0, step / 50)
        (task_scale * F.mse_loss(pred, y) + gamma * energy_regularizer([layer])).backward()
        opt.step()
        opt.zero_grad()
        if step >= 150:
            means.append(layer.state.q.mean().item())
    return sum(means) / len(means)


def test_the_relative_price_equilibrium_does_not_move_with_the_loss_or_feature_scale():
    ref = _toy_density("relative")
    assert 0.4 < ref < 0.6  # it keeps the informative half
    for scale in (0.01, 100.0):
        assert _toy_density("relative", task_scale=scale) == pytest.approx(ref, abs=0.02), scale
    assert _toy_density("relative", feature_scale=10.0) == pytest.approx(ref, abs=0.02)
    # the absolute price moves with the loss scale (measured: 0.23 at 0.01, 0.999 at 100): what relative is for
    assert _toy_density("absolute", task_scale=0.01) < 0.3 and _toy_density("absolute", task_scale=100.0) > 0.9


def test_watch_warns_once_on_a_closing_and_on_an_open_mask():
    watch = MaskWatch(open_after=10, alphas={"a": 0.5, "b": 0.5})
    assert watch.check({"epoch": 1, "density/a": 0.99, "density/b": 0.5}, update=5) == []  # still warming up
    lines = watch.check({"epoch": 2, "density/a": 0.99, "density/b": 0.02}, update=10)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "a stays open" in lines[0] and "--alpha" in lines[0] and "mask.alpha is 0.5" in lines[0]
    assert "b is closing" in lines[1] and "--alpha" in lines[1]
    assert watch.check({"epoch": 3, "density/a": 0.99, "density/b": 0.01}, update=20) == []  # said once
    assert "norm_prior" not in lines[0]  # this mask has the prior: the injection advice would not help
    plain = MaskWatch(open_after=0, alphas={"a": 0.2}, without_prior={"a"})
    assert "--set mask.norm_prior=2" in plain.check({"epoch": 1, "density/a": 1.0}, update=1)[0]
    free = MaskWatch(open_after=0, alphas={"a": 0.0}).check({"epoch": 1, "density/a": 1.0}, update=1)[0]
    assert "mask.alpha is 0" in free and "twice" not in free and "e.g. 0.2" in free  # twice 0 is still 0


@pytest.mark.parametrize("alpha,word", [(200.0, "is closing"), (0.0, "stays open")])
def test_finetune_warns_on_a_collapsing_and_a_never_closing_run(tmp_path, caplog, alpha, word):
    import ersm_surgery
    from ersm_surgery.data import create_dataset
    from ersm_surgery.train import FinetuneConfig, fit

    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=(3, 32, 32), num_classes=4,
                                config=MaskConfig(alpha=alpha, price="relative"))
    data = {"num_classes": 4, "size": 16}
    train = create_dataset("builtin:clutter", "train", img_size=32, seed=0, **data)
    val = create_dataset("builtin:clutter", "validation", img_size=32, seed=0, **data)
    # a mask learning rate that lets 12 updates move the heads all the way (the price at work, fast)
    config = FinetuneConfig(epochs=3, batch_size=4, lr=1e-3, mask_lr_scale=300.0, workers=0, gamma_warmup=0.3)
    with caplog.at_level(logging.WARNING, logger="ersm_surgery.train.loop"):
        result = fit(model, train, val, config, None)
    lines = result.warnings
    assert lines and all(word in line and "mask.alpha is" in line for line in lines), lines
    assert any(word in r.getMessage() for r in caplog.records)


def test_old_recipes_keep_the_absolute_price_and_new_ones_write_theirs():
    old = Recipe.from_dict({"version": 2, "model": "resnet18", "mask": {"alpha": 0.2}})
    assert old.mask.price == "absolute" and old.mask.alpha == 0.2
    assert Recipe.from_dict({"model": "resnet18", "mask": {}}).mask.price == "absolute"  # version 1
    new = Recipe(model="resnet18")
    assert new.version >= 3 and new.mask.price == "absolute" and new.to_dict()["mask"]["price"] == "absolute"
    relative = Recipe.from_dict({"version": 3, "model": "resnet18", "mask": {"price": "relative"}})
    again = Recipe.from_dict(relative.to_dict())
    assert again.mask.price == "relative" and again.to_dict()["mask"]["price"] == "relative"
    kept = Recipe.from_dict(old.to_dict())  # an old model re-saved says what it meant
    assert kept.mask.price == "absolute"
    with pytest.raises(Exception, match="mask.price"):
        Recipe.from_dict({"version": 3, "model": "resnet18", "mask": {"price": "budget"}})


def test_the_brake_eases_gamma_off_as_the_task_loss_rises_and_never_reads_the_density():
    from ersm_surgery.train.loss_brake import LossBrake

    brake = LossBrake(tolerance=1.0, total_updates=30)
    for update in range(3):  # the reference: the first max(3, 10%) updates
        brake.observe(0.5, update)
        assert brake.factor() == 1.0
    assert brake.reference == pytest.approx(0.5)
    for update in range(3, 200):
        brake.observe(0.75, update)  # halfway to twice the starting loss
    assert brake.factor() == pytest.approx(0.5, abs=1e-6)
    for update in range(200, 400):
        brake.observe(1.2, update)  # past twice the starting loss: the price is off
    assert brake.factor() == 0.0
    for update in range(400, 600):
        brake.observe(0.3, update)  # better than at the start: fully on
    assert brake.factor() == 1.0
    restored = LossBrake(tolerance=1.0, total_updates=30)
    restored.load_state(brake.state())
    assert restored.factor() == brake.factor() and restored.reference == brake.reference
    assert LossBrake(None, 30).factor() == 1.0


def test_the_brake_is_off_by_default_and_validated():
    from ersm_surgery.train import FinetuneConfig

    assert FinetuneConfig().loss_brake is None
    assert FinetuneConfig.from_sources({"loss_brake": 1.0}).loss_brake == 1.0
    with pytest.raises(Exception, match="loss_brake"):
        FinetuneConfig.from_sources({"loss_brake": -1.0})
