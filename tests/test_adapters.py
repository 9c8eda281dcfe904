"""The core's model-adapter hook points, exercised with a tiny adapter registered by code (no plugin)."""
import pytest
import torch

import ersm_surgery
from ersm_surgery import plugins
from ersm_surgery.errors import NotSpatialError, PluginError
from ersm_surgery.layers import AdaptedMask
from ersm_surgery.recipe import Recipe
from ersm_surgery.surgery import ModelAdapter, Placement, list_adapters, register_adapter, unregister_adapter


class Permute(ModelAdapter):
    """(B, H, W, C) <-> (B, C, H, W), for channels-last stages only."""

    @classmethod
    def match(cls, model, module, shape, layout, input_size):
        return {"note": "nhwc"} if (layout or "").startswith("channels-last") else None

    def to_spatial(self, x):
        return x.permute(0, 3, 1, 2), None

    def from_spatial(self, y, context):
        return y.permute(0, 2, 3, 1).contiguous()


@pytest.fixture
def permute():
    """Only this adapter is registered (plugins' adapters are hidden) while the test runs."""
    with plugins.disabled():
        register_adapter("test_permute")(Permute)
        try:
            yield
        finally:
            unregister_adapter("test_permute")


def test_an_adapter_makes_a_channels_last_model_maskable_and_rebuildable(tmp_path, permute):
    model = ersm_surgery.inject("test_mambaout", stages=[1, 2], input_size=(3, 64, 64), num_classes=3)
    recipe = model.ersm_recipe
    assert [(p.adapter, p.adapter_args, p.method, p.channels) for p in recipe.placements] == [
        ("test_permute", {"note": "nhwc"}, "module", 32), ("test_permute", {"note": "nhwc"}, "module", 48)]
    assert recipe.plugins == {}  # registered by code, not by a plugin
    layers = ersm_surgery.masks(model)
    assert layers.names() == ["stages.1.ersm_mask", "stages.2.ersm_mask"]
    assert isinstance(model.get_submodule("stages.1.ersm_mask"), AdaptedMask)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    (model(x).square().mean() + layers.regularizer()).backward()
    assert all(p.grad.abs().sum() > 0 for p in layers.parameters())
    model.eval()
    with torch.no_grad():
        expected = model(x)
    ersm_surgery.save(model, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(ersm_surgery.load(tmp_path / "m")(x), expected)
    assert unregister_adapter("test_permute") is Permute
    with pytest.raises(PluginError, match="unknown model adapter 'test_permute'"):
        ersm_surgery.load(tmp_path / "m")


def test_without_an_adapter_the_stage_is_refused(permute):
    assert list_adapters() == ["test_permute"]
    with pytest.raises(NotSpatialError, match="tokens"):
        ersm_surgery.inject("test_vit", stages=[1], input_size=(3, 160, 160))  # Permute does not claim tokens


def test_placements_and_recipes_without_adapters_keep_their_old_form():
    old = {"module": "layer2", "channels": 48, "reduction": 8, "stage": 2, "node": None, "hidden": 8, "method": "fx"}
    assert Placement.from_dict(old).to_dict() == old
    assert Placement.from_dict({**old, "adapter": "x", "adapter_args": {"k": 1}}).to_dict()["adapter_args"] == {"k": 1}
    with pytest.raises(ValueError, match="adapter_args"):
        Placement.from_dict({**old, "adapter_args": {"k": 1}})
    data = Recipe(model="test_resnet", placements=[Placement.from_dict(old)]).to_dict()
    assert "plugins" not in data and "adapter" not in data["placements"][0]
    assert Recipe.from_dict(data).plugins == {}


def test_pair_weights_match_a_brute_force_sum_over_neighbour_pairs():
    from ersm_surgery.layers.energy import neighbour_differences, neighbour_offsets, pair_weights

    h, w = 4, 5
    f = torch.randn(3, h, w)
    q = torch.rand(1, 1, h, w)
    for k in (4, 8):
        offsets = neighbour_offsets(k)
        weights = torch.zeros(1, k, h, w)
        brute = 0.0
        for d, (dy, dx) in enumerate(offsets):
            for r in range(h):
                for c in range(w):
                    if 0 <= r + dy < h and 0 <= c + dx < w:
                        weights[0, d, r, c] = (f[:, r, c] - f[:, r + dy, c + dx]).norm()
                        brute += float(weights[0, d, r, c] * (q[0, 0, r, c] - q[0, 0, r + dy, c + dx]).abs()) / 2
        pairs = zip(pair_weights(weights, k), neighbour_differences(q, k), strict=True)
        assert abs(sum(float((a * b).sum()) for a, b in pairs) - brute) < 1e-4
