"""Foundation coverage: every family of the list injects, trains, saves and rebuilds exactly."""
import pytest
import torch

import ersm_surgery
from ersm_surgery import plugins
from ersm_surgery.errors import NotSpatialError, PlacementError
from ersm_surgery.surgery import list_adapters
from tests.coverage_models import COVERAGE, TOKEN_COVERAGE


@pytest.mark.parametrize("family, name, size, stages", COVERAGE, ids=[c[0] for c in COVERAGE])
def test_inject_train_save_rebuild(tmp_path, family, name, size, stages):
    check_inject_train_save_rebuild(tmp_path, name, size, stages)


def _token_cases():
    for family, name, size, stages in TOKEN_COVERAGE:
        marks = [pytest.mark.slow] if size[1] >= 224 else []
        yield pytest.param(family, name, size, stages, id=family, marks=marks)


@pytest.mark.parametrize("family, name, size, stages", list(_token_cases()))
def test_token_and_channels_last_models_through_the_token_grid_plugin(tmp_path, family, name, size, stages):
    plugins.load_plugins()
    if "token_grid" not in list_adapters():
        pytest.skip("the token_grid adapter is not registered: pip install -e plugins/ersm-token-grid")
    # no batch norm in these: one 224 px image is enough, and halves the cost
    model = check_inject_train_save_rebuild(tmp_path, name, size, stages, batch=1 if size[1] >= 224 else 2)
    assert {p.adapter for p in model.ersm_recipe.placements} == {"token_grid"}
    assert model.ersm_recipe.plugins == {"adapter:token_grid": "ersm-token-grid"}


def check_inject_train_save_rebuild(tmp_path, name, size, stages, batch=2, num_classes=5):
    """Inject, train one step (every parameter gets a gradient), save, rebuild, load: same outputs."""
    model = ersm_surgery.inject(name, stages=list(stages), input_size=size, num_classes=num_classes)
    layers = ersm_surgery.masks(model)
    assert len(layers) == len(stages)
    x = torch.randn(batch, *size)

    model.train()
    out = model(x)
    (out.square().mean() + layers.regularizer()).backward()
    # every parameter is reached by autograd (timm zero-inits some branches, so values may be 0) ...
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"
    # ... and the masks' own parameters really learn
    assert all(p.grad.abs().sum() > 0 for p in layers.parameters())

    model.eval()
    with torch.no_grad():
        expected = model(x)
    ersm_surgery.save(model, tmp_path / "m")
    loaded = ersm_surgery.load(tmp_path / "m")
    with torch.no_grad():
        got = loaded(x)
    assert (got - expected).abs().max() <= 1e-5
    assert [p.to_dict() for p in loaded.ersm_recipe.placements] == [p.to_dict() for p in model.ersm_recipe.placements]
    return model


@pytest.mark.parametrize("name, size", [("test_vit", (3, 160, 160)), ("test_mambaout", (3, 64, 64))])
def test_models_whose_stages_are_not_spatial_get_a_clear_error(name, size):
    # without plugins (the token-grid plugin, when installed, makes these stages maskable)
    with plugins.disabled(), pytest.raises(NotSpatialError, match=r"not a \(B, C, H, W\) map.*token-grid adapter"):
        ersm_surgery.inject(name, stages=[1], input_size=size)


def test_a_headless_model_masks_saves_and_loads_and_finetune_asks_for_a_head(tmp_path):
    """num_classes=0 is timm's headless backbone (eva02_tiny's default): a valid recipe, not a refusal."""
    from ersm_surgery.errors import DataError
    from ersm_surgery.train import FinetuneConfig
    from ersm_surgery.train.finetune import _check_classes

    model = check_inject_train_save_rebuild(tmp_path, "test_resnet", (3, 64, 64), (2,), num_classes=0)
    assert model.ersm_recipe.num_classes == 0
    assert ersm_surgery.load(tmp_path / "m").num_classes == 0
    with pytest.raises(DataError, match="pass --num-classes 4"):
        _check_classes(model, FinetuneConfig(), 4)


@pytest.mark.slow
def test_two_stages_that_end_in_one_module_mask_their_own_elements():
    """CrossViT's blocks return both branches: stage 0 is element 0 (20x20 + class token), stage 3 element 1."""
    plugins.load_plugins()
    if "token_grid" not in list_adapters():
        pytest.skip("the token_grid adapter is not registered: pip install -e plugins/ersm-token-grid")
    model = ersm_surgery.inject("crossvit_tiny_240", stages=[0, 3], num_classes=3).eval()
    assert [(p.module, p.output) for p in model.ersm_recipe.placements] == [("blocks.0", 0), ("blocks.0", 1)]
    seen = {}
    for name, layer in ersm_surgery.masks(model).items():
        layer.register_forward_hook(lambda m, args, out, name=name: seen.update({name: tuple(args[0].shape)}))
    with torch.no_grad():
        model(torch.randn(1, 3, 240, 240))
    assert sorted(seen.values()) == [(1, 96, 20, 20), (1, 192, 14, 14)]  # the grids of elements 0 and 1


@pytest.mark.slow
def test_a_stage_whose_tokens_never_reach_the_head_is_refused():
    """CoaT's last parallel block: only its class tokens reach the head, and a mask leaves class tokens alone."""
    plugins.load_plugins()
    if "token_grid" not in list_adapters():
        pytest.skip("the token_grid adapter is not registered: pip install -e plugins/ersm-token-grid")
    with pytest.raises(PlacementError, match="does not reach the model's output"):
        ersm_surgery.inject("coat_tiny", stages=[1], num_classes=3)
