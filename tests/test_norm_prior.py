"""The magnitude prior of the built-in head (``mask.norm_prior``) and the recipes that carry it."""
import pytest
import torch

from ersm_surgery.layers import EnergyMask, MaskConfig
from ersm_surgery.layers.heads import relative_log_norm


def test_the_relative_log_norm_is_scale_free_ranks_tokens_and_stays_finite():
    x = torch.randn(2, 8, 5, 5)
    z = relative_log_norm(x)
    assert z.shape == (2, 1, 5, 5)
    assert torch.allclose(relative_log_norm(1e6 * x), z, atol=1e-4)  # the features' scale does not matter
    norms = x.norm(dim=1, keepdim=True)
    order = norms.flatten(1).argsort(1)
    assert torch.equal(z.flatten(1).argsort(1), order)  # a stronger token ranks higher, per image
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(2, 1), atol=1e-4)
    x[0, :, 0, 0] = 0.0  # a token switched off earlier: at the floor, finite, clamped
    z = relative_log_norm(x)
    assert torch.isfinite(z).all() and z[0, 0, 0, 0] == z[0].min() and z.min() >= -3.0
    assert torch.equal(relative_log_norm(torch.ones(1, 3, 4, 4)), torch.zeros(1, 1, 4, 4))  # nothing to rank


def test_without_a_prior_the_head_and_its_state_dict_are_what_they_were():
    plain = EnergyMask(8, MaskConfig(), hidden=4)
    assert not any("norm_weight" in k for k in plain.state_dict())
    assert "norm_prior" not in MaskConfig().to_dict()


def test_with_a_prior_the_weakest_tokens_of_each_image_score_lowest_and_the_weight_learns():
    torch.manual_seed(0)
    layer = EnergyMask(8, MaskConfig(norm_prior=1.0, init_logit=1.0), hidden=4).train()
    x = torch.randn(2, 8, 6, 6)
    x[:, :, :3] *= 0.1  # the upper half of every image is weak
    s = layer.head(x)
    assert s[:, :, :3].max() < s[:, :, 3:].min()
    layer(x).sum().backward()
    assert layer.head.norm_weight.grad is not None
    assert MaskConfig(norm_prior=1.0).to_dict()["norm_prior"] == 1.0
    with pytest.raises(ValueError, match="norm_prior"):
        MaskConfig(norm_prior=float("nan"))


def test_the_head_reads_the_prior_off_its_norm_statistics_without_changing_the_score():
    # the head shares the LayerNorm's mean square with the prior in float32; the prior computed on its own
    # (its definition) gives the same score
    torch.manual_seed(1)
    layer = EnergyMask(16, MaskConfig(norm_prior=1.0, init_logit=1.0), hidden=4).eval()
    head = layer.head
    x = torch.randn(2, 16, 7, 5) * torch.rand(2, 1, 7, 5) * 10
    x[1, :, 2:4] = 0.0  # switched-off tokens sit at the floor either way
    with torch.no_grad():
        z, _ = head._reduce_normalised(x.flatten(2))
        hidden = head.act(z)
        plain = (torch.matmul(head.score.weight.flatten(1), hidden) + head.score.bias[:, None]).view(2, 1, 7, 5)
        expected = plain + head.norm_weight * relative_log_norm(x)
        assert torch.allclose(head(x), expected, atol=1e-5)


def test_run_injects_with_the_prior_and_the_settings_of_before_stay_reachable():
    from ersm_surgery.pipeline.run import _mask_config
    from ersm_surgery.pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS, build_settings, protocol_defaults

    defaults = protocol_defaults(None, RUN_EPOCHS, RUN_BASE_IMAGES, "out")
    config = _mask_config(build_settings("test_resnet", "2", defaults))
    assert (config.norm_prior, config.init_logit, config.alpha) == (2.0, 1.0, 0.42)
    assert config.norm_prior_stats == "running"
    before = ["mask.norm_prior=0", "mask.init_logit=3", "mask.alpha=0.2", "mask.norm_prior_stats=image"]
    assert _mask_config(build_settings("test_resnet", "2", defaults, overrides=before)) == MaskConfig()


def test_the_open_mask_warning_advises_the_injection_settings_run_uses():
    # the warning lives in train, which may not import the pipeline: its text is checked against run's values
    from ersm_surgery.pipeline.run import PIPELINE_MASK
    from ersm_surgery.train.mask_watch import MaskWatch

    line = MaskWatch(open_after=0, alphas={"a": 0.2}, without_prior={"a"}).check({"epoch": 1, "density/a": 1.0},
                                                                                 update=1)[0]
    for key in ("norm_prior", "init_logit"):
        assert f"--set mask.{key}={PIPELINE_MASK[key]:g} " in line + " "


def test_run_shares_the_price_over_its_masks_unless_the_user_names_one():
    from ersm_surgery.pipeline.run import _mask_config
    from ersm_surgery.pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS, build_settings, protocol_defaults

    defaults = protocol_defaults(None, RUN_EPOCHS, RUN_BASE_IMAGES, "out")
    one, two = (_mask_config(build_settings("test_resnet", s, defaults)).alpha for s in ("2", "2,3"))
    assert one == 0.42 and two == pytest.approx(0.42 / 2**0.5, abs=1e-4)
    assert _mask_config(build_settings("test_resnet", "2,3", defaults, overrides=["mask.alpha=0.42"])).alpha == 0.42


def test_a_recipe_without_the_key_has_no_prior_and_a_saved_prior_comes_back(tmp_path):
    import ersm_surgery
    from ersm_surgery.recipe import Recipe

    old = Recipe.from_dict({"model": "test_resnet", "version": 3, "mask": {"alpha": 0.2, "price": "absolute"}})
    assert old.mask.norm_prior == 0.0
    model = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 32, 32), num_classes=3,
                                config=MaskConfig(norm_prior=1.5, init_logit=1.0))
    ersm_surgery.save(model, tmp_path / "m")
    loaded = ersm_surgery.load(tmp_path / "m").eval()
    assert loaded.ersm_recipe.mask.norm_prior == 1.5
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_run_under_the_gate_pools_any_and_ranks_the_prior_per_picture_unless_told_otherwise():
    from ersm_surgery.pipeline.run import _mask_config
    from ersm_surgery.pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS, build_settings, protocol_defaults

    defaults = protocol_defaults(None, RUN_EPOCHS, RUN_BASE_IMAGES, "out")
    gated = _mask_config(build_settings("test_resnet", "2,3", defaults, overrides=["mask.gate=stage"]))
    assert (gated.gate, gated.gate_pool, gated.norm_prior_stats) == ("stage", "any", "image")
    assert gated.norm_prior == 2.0 and gated.norm_prior_zeros == "skip"
    told = _mask_config(build_settings("test_resnet", "2,3", defaults, overrides=[
        "mask.gate=stage", "mask.gate_pool=sample", "mask.norm_prior_stats=running"]))
    assert (told.gate_pool, told.norm_prior_stats) == ("sample", "running")
