"""Foundation coverage: every family of the list injects, trains, saves and rebuilds exactly."""
import pytest
import torch

import ersm_surgery
from ersm_surgery.errors import NotSpatialError
from tests.coverage_models import COVERAGE


@pytest.mark.parametrize("family, name, size, stages", COVERAGE, ids=[c[0] for c in COVERAGE])
def test_inject_train_save_rebuild(tmp_path, family, name, size, stages):
    model = ersm_surgery.inject(name, stages=list(stages), input_size=size, num_classes=5)
    layers = ersm_surgery.masks(model)
    assert len(layers) == len(stages)
    x = torch.randn(2, *size)

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


@pytest.mark.parametrize("name, size", [("test_vit", (3, 160, 160)), ("test_mambaout", (3, 64, 64))])
def test_models_whose_stages_are_not_spatial_get_a_clear_error(name, size):
    with pytest.raises(NotSpatialError, match=r"not a \(B, C, H, W\) map.*token-grid adapter"):
        ersm_surgery.inject(name, stages=[1], input_size=size)
