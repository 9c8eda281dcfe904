"""finetune.mask_pull: the mask layers are pulled towards the values they started the run with."""
import pytest
import timm
import torch

import ersm_surgery
from ersm_surgery.data import create_dataset
from ersm_surgery.layers import MaskConfig
from ersm_surgery.train import FinetuneConfig, fit
from ersm_surgery.train.mask_pull import MaskPull
from tests.conftest import ok
from tests.conftest import run_quiet as run


def _inject():
    torch.manual_seed(0)
    return ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=(3, 32, 32), num_classes=4,
                               config=MaskConfig(alpha=0.6, init_logit=1.0, norm_prior=1.0))


def _mask_params(model) -> dict[str, torch.Tensor]:
    return {f"{name}.{p}": t.detach().clone() for name, layer in ersm_surgery.masks(model).items()
            for p, t in layer.named_parameters()}


def _distance(a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def test_the_penalty_is_the_weighted_squared_distance_to_the_start_and_its_gradient_pulls_back():
    model = _inject()
    layers = ersm_surgery.masks(model)
    pull = MaskPull(0.5, layers)
    assert float(pull.penalty().detach()) == 0.0
    params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.add_(0.1)
    count = sum(p.numel() for p in params)
    penalty = pull.penalty()
    assert float(penalty.detach()) == pytest.approx(0.5 * 0.01 * count, rel=1e-4)
    penalty.backward()
    for p in params:  # d/dtheta of w * (theta - theta0)^2 = 2 w (theta - theta0): towards the start
        assert torch.allclose(p.grad, torch.full_like(p, 2 * 0.5 * 0.1), atol=1e-6)


def test_off_means_no_term_and_no_anchor():
    model = _inject()
    for weight in (None, 0.0):
        pull = MaskPull(weight, ersm_surgery.masks(model))
        assert pull.penalty() is None and pull.state() == {}
    assert MaskPull(1.0, ersm_surgery.masks(timm.create_model("test_resnet"))).penalty() is None  # no masks


def _fit(pull: float | None, epochs: int = 2):
    model = _inject()
    data = {"num_classes": 4, "size": 16}
    train = create_dataset("builtin:clutter", "train", img_size=32, seed=0, **data)
    val = create_dataset("builtin:clutter", "validation", img_size=32, seed=0, **data)
    start = _mask_params(model)
    config = FinetuneConfig(epochs=epochs, batch_size=4, lr=3e-3, workers=0, gamma_warmup=0.0, mask_pull=pull)
    fit(model, train, val, config, None)
    return start, _mask_params(model)


def test_the_pull_holds_the_masks_near_their_start_while_they_still_learn():
    start, free = _fit(None)
    _, pulled = _fit(5.0)
    moved_free, moved_pulled = _distance(start, free), _distance(start, pulled)
    assert 0 < moved_pulled < 0.5 * moved_free, (moved_pulled, moved_free)


def test_mask_pull_is_off_by_default_and_validated():
    assert FinetuneConfig().mask_pull is None
    assert FinetuneConfig.from_sources({"mask_pull": 1}).mask_pull == 1.0
    assert isinstance(FinetuneConfig.from_sources({"mask_pull": 1}).mask_pull, float)
    for bad in (-0.1, "strong", float("nan"), True):
        with pytest.raises(Exception, match="mask_pull"):
            FinetuneConfig.from_sources({"mask_pull": bad})


DATA = ["--dataset", "builtin:clutter", "--data-opt", "size=12 num_classes=4", "--img-size", "32", "-b", "4",
        "-j", "0", "--seed", "3", "--epochs", "3", "--alpha", "0.6", "--set", "finetune.mask_pull=2.0"]


def test_a_resumed_run_is_pulled_towards_the_first_start_and_ends_with_the_same_weights(tmp_path):
    injected = tmp_path / "inj"
    ok(run("inject", "test_resnet", "--stages", "2,3", "--input-size", "3,32,32", "--num-classes", "4", "-o", injected))
    full, part = tmp_path / "full", tmp_path / "part"
    ok(run("finetune", injected, *DATA, "-o", full, "-q"))
    ok(run("finetune", injected, *DATA, "-o", part, "--stop-after", "1", "-q"))
    state = torch.load(part / "last" / "train_state.pt", weights_only=True)
    start = _mask_params(ersm_surgery.load(injected))
    assert state["mask_pull_anchor"].keys() == start.keys()
    assert all(torch.equal(state["mask_pull_anchor"][k], start[k]) for k in start)  # the injected values
    ok(run("finetune", injected, *DATA, "--resume", part, "-q"))
    a = ersm_surgery.load(full / "last").state_dict()
    b = ersm_surgery.load(part / "last").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_run_pulls_the_masks_and_leaves_their_phase_uncapped_unless_told_otherwise():
    from ersm_surgery.pipeline.run import PipelineSettings, _config

    settings = PipelineSettings(model="test_resnet", stages=[2], data_options={"num_classes": 4, "size": 8})
    config = _config(settings, 2, 3e-4)
    assert config.mask_pull == 0.1 and config.mask_freeze is None and config.mask_updates is None
    settings.finetune = {"mask_pull": None, "mask_freeze": 0.5, "mask_updates": 63}  # the fine-tuning of before
    config = _config(settings, 2, 3e-4)
    assert config.mask_pull is None and config.mask_freeze == 0.5 and config.mask_updates == 63
    assert _config(settings, 2, 3e-4, base=True).mask_pull is None  # base training has no masks to pull


def _toy_densities(pull: float | None, steps: int = 300) -> list[float]:
    """The mean density of one mask that nothing but the price acts on, every 100 Adam steps (the loop's lr)."""
    from ersm_surgery.layers import EnergyMask, energy_regularizer
    from ersm_surgery.mask_set import MaskSet

    torch.manual_seed(0)
    layer = EnergyMask(4, MaskConfig(alpha=0.3, beta=0.0, init_logit=1.0, train_mode="soft"), hidden=8).train()
    holder = MaskPull(pull, MaskSet({"m": layer}))
    opt = torch.optim.Adam(layer.parameters(), lr=3e-3)
    out = []
    for step in range(1, steps + 1):
        layer(torch.randn(16, 4, 6, 6))
        loss = energy_regularizer([layer])
        term = holder.penalty()
        (loss if term is None else loss + term).backward()
        opt.step()
        opt.zero_grad()
        if step % 100 == 0:
            out.append(layer.state.q.mean().item())
    return out


def test_the_price_alone_closes_the_mask_for_as_long_as_it_learns_and_the_pull_makes_it_settle():
    free = _toy_densities(None)
    assert free[0] - free[2] > 0.1 and free[2] < 0.3  # still closing after 300 updates
    pulled = _toy_densities(0.1)
    assert pulled[2] > 0.5 and abs(pulled[2] - pulled[1]) < 0.02, pulled  # twice the updates, the same density
