"""The magnitude prior standardised by the data's statistics (``mask.norm_prior_stats=running``)."""
import pytest
import torch

import ersm_surgery
from ersm_surgery.layers import EnergyMask, MaskConfig
from ersm_surgery.layers.heads import RunningLogNorm, log_norm, relative_log_norm
from ersm_surgery.recipe import Recipe

RUNNING = MaskConfig(norm_prior=1.0, init_logit=1.0, norm_prior_stats="running")


def test_training_standardises_by_the_batch_and_tracks_running_statistics():
    stats = RunningLogNorm().train()
    ln = torch.randn(4, 1, 5, 5) * 2 + 7
    z = stats(ln)
    expected = ((ln - ln.mean()) / (ln.var(correction=0).sqrt() + 1e-3)).clamp(-3, 3)
    assert torch.allclose(z, expected, atol=1e-6)
    assert stats.running_mean == pytest.approx(ln.mean().item()) and stats.num_batches_tracked == 1
    second = torch.randn(4, 1, 5, 5) + 9
    stats(second)
    assert stats.running_mean == pytest.approx(0.9 * ln.mean().item() + 0.1 * second.mean().item(), abs=1e-5)
    stats.eval()
    mean, std = stats.running_mean, stats.running_var.sqrt()
    assert torch.allclose(stats(second), ((second - mean) / (std + 1e-3)).clamp(-3, 3), atol=1e-6)


def test_before_any_statistics_it_ranks_within_each_picture():
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(RunningLogNorm().eval()(log_norm(x)), relative_log_norm(x))


def test_a_picture_with_stronger_tokens_than_usual_keeps_more_than_under_the_per_picture_rule():
    torch.manual_seed(0)
    data = torch.randn(16, 8, 6, 6) * torch.rand(16, 1, 6, 6)
    weak, strong = data[:1] * 0.3, data[:1] * 3.0
    image, running = (EnergyMask(8, MaskConfig(norm_prior=1.0, init_logit=1.0, norm_prior_stats=rule), hidden=4)
                      for rule in ("image", "running"))
    running.load_state_dict(image.state_dict(), strict=False)  # the same head; only the statistics differ
    running.train()(data)  # one training batch sets the statistics
    image.eval(), running.eval()
    with torch.no_grad():
        kept = {name: [_kept(layer, x) for x in (weak, strong)] for name, layer in (("image", image),
                                                                                     ("running", running))}
    assert kept["image"][0] == kept["image"][1]  # a fixed share of every picture, whatever its strength
    assert kept["running"][0] < kept["running"][1]


def _kept(layer: EnergyMask, x: torch.Tensor) -> float:
    layer(x)
    return layer.state.hard.mean().item()


def test_the_statistics_and_the_flag_come_back_with_the_model(tmp_path):
    model = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 32, 32), num_classes=3, config=RUNNING)
    head = next(iter(ersm_surgery.masks(model))).head
    assert not head.prior_stats.tracked
    ersm_surgery.save(model, tmp_path / "fresh")
    assert not next(iter(ersm_surgery.masks(ersm_surgery.load(tmp_path / "fresh")))).head.prior_stats.tracked
    model.train()(torch.randn(4, 3, 32, 32) * 5)
    assert head.prior_stats.tracked and head.prior_stats.num_batches_tracked == 1
    ersm_surgery.save(model, tmp_path / "m")
    loaded = ersm_surgery.load(tmp_path / "m").eval()
    assert next(iter(ersm_surgery.masks(loaded))).head.prior_stats.tracked
    assert loaded.ersm_recipe.mask.norm_prior_stats == "running"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_recipes_without_the_key_rank_per_picture_and_the_key_is_checked():
    old = Recipe.from_dict({"model": "test_resnet", "version": 4, "mask": {"alpha": 0.2, "norm_prior": 2.0}})
    assert old.mask.norm_prior_stats == "image"
    assert "norm_prior_stats" not in MaskConfig(norm_prior=2.0).to_dict()
    assert RUNNING.to_dict()["norm_prior_stats"] == "running"
    assert EnergyMask(8, MaskConfig(norm_prior=1.0), hidden=4).head.prior_stats is None
    with pytest.raises(ValueError, match="norm_prior_stats"):
        MaskConfig(norm_prior_stats="batch")


def _trained_once(config: dict, size=(3, 64, 64)) -> torch.nn.Module:
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=size,
                                config={"norm_prior": 2.0, "init_logit": 1.0, "norm_prior_stats": "running", **config})
    torch.manual_seed(0)
    model.eval()
    for layer in ersm_surgery.masks(model):
        layer.train()  # the masks alone: the backbone's BatchNorm keeps the statistics evaluation uses
    with torch.no_grad():
        model(torch.randn(8, *size) * torch.rand(8, 1, *size[1:]))  # sets the prior's statistics
    return model.eval()


def test_the_sparse_runtime_reads_the_running_statistics():
    model = _trained_once({"gate": "stage"})
    fast = ersm_surgery.sparse(model, break_even=1.0)
    x = torch.randn(4, 3, 64, 64) * torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    densities = [layer.state.hard.mean().item() for layer in ersm_surgery.masks(model)]
    assert all(0.0 < d < 1.0 for d in densities), densities  # the sparse path had tokens to skip


def test_onnx_parity_with_the_running_prior(tmp_path):
    from ersm_surgery.io.onnx_export import export_onnx
    from ersm_surgery.io.onnx_validation import validate_onnx

    pytest.importorskip("onnxruntime")
    model = _trained_once({})
    size = (3, 64, 64)
    export_onnx(model, tmp_path / "m.onnx", size, with_masks=True)
    parity = validate_onnx(model, tmp_path / "m.onnx", torch.randn(3, *size), size, with_masks=True)
    assert parity["max_abs_diff"] <= 1e-4 and not any(parity["mask_flips"].values()), parity


def test_the_features_scale_does_not_move_the_running_prior():
    # a model whose features are k times larger trains the statistics on them: the same scores come out
    torch.manual_seed(0)
    x = torch.randn(8, 16, 6, 6) * torch.rand(8, 1, 6, 6)
    scores = []
    for k in (1.0, 1e4):
        torch.manual_seed(1)  # the same head weights for both scales
        layer = EnergyMask(16, RUNNING, hidden=4)
        with torch.no_grad():
            train = layer.head.train()(k * x)
            layer.head.eval()
            scores.append((train, layer.head(k * x[:2])))
    torch.testing.assert_close(scores[0][0], scores[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores[0][1], scores[1][1], atol=1e-4, rtol=1e-4)


def test_a_mask_closed_in_evaluation_but_not_in_training_gets_the_advice_for_its_statistics():
    from ersm_surgery.train.mask_watch import MaskWatch

    row = {"epoch": 1, "density/a": 0.0, "train_density/a": 0.62}
    (line,) = MaskWatch(open_after=0, alphas={"a": 0.3}, running_prior={"a"}).check(row, update=2)
    assert "0.0% of the tokens in evaluation but 62.0% in training" in line
    assert "--set mask.norm_prior_stats=image" in line
    # the price's advice where the statistics are not the question: no running prior, or closed in training too
    closed_in_training = {**row, "train_density/a": 0.01}
    for watch, r in ((MaskWatch(open_after=0, alphas={"a": 0.3}), row),
                     (MaskWatch(open_after=0, alphas={"a": 0.3}, running_prior={"a"}), closed_in_training)):
        (line,) = watch.check(r, update=2)
        assert "is closing" in line and "lower the price" in line


def _with_switched_off_tokens(seed: int = 0) -> torch.Tensor:
    """Features of a gated stage's output: exactly zero at the tokens it did not compute."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 8, 6, 6, generator=gen) * torch.rand(3, 1, 6, 6, generator=gen) * 5
    x[:, :, :3] = 0.0
    x[2] = 0.0  # a picture the mask before emptied
    return x


def test_the_prior_leaves_tokens_that_are_exactly_zero_out_of_its_statistics():
    # a gated stage's zeros sat at the log-norm floor inside the mean and variance: they widened the variance and
    # squeezed the computed tokens' standardised norms together (a gated last mask kept 0.66 instead of 0.42)
    x = _with_switched_off_tokens()
    ln, carries = log_norm(x), x.abs().sum(1, keepdim=True) > 0
    kept = ln[0][carries[0]]
    expected = ((ln[0] - kept.mean()) / (kept.std(correction=0) + 1e-3)).clamp(-3, 3)
    assert torch.allclose(relative_log_norm(x)[0], expected, atol=1e-5)
    assert (relative_log_norm(x)[0][~carries[0]] == -3).all()  # the zeros at the floor
    assert (relative_log_norm(x)[2] == -3).all()  # a picture with no computed token: every token at the floor
    stats = RunningLogNorm().train()
    stats(ln, carries)
    assert stats.running_mean == pytest.approx(ln[carries].mean().item(), abs=1e-5)
    assert stats.running_var == pytest.approx(ln[carries].var(correction=0).item(), rel=1e-4)


@pytest.mark.parametrize("rule", ["image", "running"])
def test_skipping_or_counting_zeros_differs_only_where_a_token_is_zero(rule):
    torch.manual_seed(0)
    skip, count = (EnergyMask(8, MaskConfig(norm_prior=1.0, init_logit=1.0, norm_prior_stats=rule,
                                            norm_prior_zeros=zeros), hidden=4) for zeros in ("skip", "count"))
    count.load_state_dict(skip.state_dict())
    dense, gated = torch.randn(4, 8, 6, 6), _with_switched_off_tokens()
    if rule == "running":
        skip.train()(dense)
        count.train()(dense)
    skip.eval(), count.eval()
    with torch.no_grad():
        assert torch.allclose(skip.head(dense), count.head(dense), atol=1e-5)  # no zero token: the same prior
        if rule == "image":  # per picture: counting the zeros changes the computed tokens' scores
            assert not torch.allclose(skip.head(gated), count.head(gated), atol=1e-3)


def test_gated_recipes_with_a_prior_written_before_version_6_count_the_zeros():
    gated = {"gate": "stage", "norm_prior": 2.0}
    assert Recipe.from_dict({"model": "test_resnet", "version": 5, "mask": gated}).mask.norm_prior_zeros == "count"
    assert Recipe.from_dict({"model": "test_resnet", "version": 6, "mask": gated}).mask.norm_prior_zeros == "skip"
    plain = Recipe.from_dict({"model": "test_resnet", "version": 5, "mask": {"norm_prior": 2.0}})
    assert plain.mask.norm_prior_zeros == "skip"  # no gate, no zero token: the key stays out of its file
    assert "norm_prior_zeros" not in plain.mask.to_dict()
    assert MaskConfig(norm_prior_zeros="count").to_dict()["norm_prior_zeros"] == "count"
    with pytest.raises(ValueError, match="norm_prior_zeros"):
        MaskConfig(norm_prior_zeros="ignore")
