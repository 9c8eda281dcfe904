"""mask.gate=stage: recipe setting, gate insertion, and the property the sparse runtime relies on."""
import pytest
import torch
from torch import nn

import ersm_surgery
from ersm_surgery.errors import RecipeError
from ersm_surgery.layers import StageGate, pool_mask
from ersm_surgery.recipe import Recipe
from tests.sparse_helpers import fix_masks, randomise_norms

SIZE = (3, 64, 64)


def _gated(name="test_resnet", stages=(2, 3), gate="stage"):
    model = ersm_surgery.inject(name, stages=list(stages), config={"gate": gate}, input_size=SIZE).eval()
    randomise_norms(model)
    fix_masks(model)
    return model


def test_default_recipe_is_unchanged_and_gate_is_recorded():
    plain = ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE)
    assert "gate" not in plain.ersm_recipe.to_dict()["mask"]  # older readers understand it
    assert Recipe.from_dict(plain.ersm_recipe.to_dict()).mask.gate == "features"
    gated = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage"}, input_size=SIZE)
    assert gated.ersm_recipe.to_dict()["mask"]["gate"] == "stage"
    assert Recipe.from_yaml(gated.ersm_recipe.to_yaml()).mask.gate == "stage"
    assert not any(isinstance(m, StageGate) for m in plain.modules())
    assert isinstance(gated.layer3.ersm_gate, StageGate) and not hasattr(gated.layer4, "ersm_gate")


def test_bad_gate_value_is_one_clear_error():
    with pytest.raises(RecipeError, match="mask.gate must be one of features, stage"):
        Recipe.from_dict({"model": "test_resnet", "mask": {"gate": "everything"}})


def test_rebuilt_model_has_the_same_gates(tmp_path):
    model = _gated()
    ersm_surgery.save(model, tmp_path / "m")
    again = ersm_surgery.load(tmp_path / "m").eval()
    assert {n for n, m in again.named_modules() if isinstance(m, StageGate)} == {"layer3.ersm_gate", "layer4.ersm_gate"}
    assert set(again.state_dict()) == set(model.state_dict())  # the gate holds no weights


def test_switched_off_tokens_cannot_reach_kept_ones():
    model = _gated()
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        model(x)
        stage_in = torch.randn(4, 48, 8, 8)
        mask = model.layer2.ersm_mask.state.mask
        assert 0 < mask.mean() < 1
        changed = stage_in + 10 * torch.randn_like(stage_in) * (1 - mask)  # only at switched-off tokens
        out, out_changed = model.layer3(stage_in), model.layer3(changed)
    keep = pool_mask(mask, out.shape[-2:])
    assert torch.equal(out * keep, out_changed * keep)
    # every map inside the stage is zero at the switched-off tokens, 3x3 convs and BN biases included
    assert torch.equal(out * (1 - keep), torch.zeros_like(out))


def test_without_the_gate_switched_off_tokens_leak():
    model = _gated(gate="features")
    with torch.no_grad():
        model(torch.randn(4, *SIZE))
        stage_in = torch.randn(4, 48, 8, 8)
        mask = model.layer2.ersm_mask.state.mask
        changed = stage_in + 10 * torch.randn_like(stage_in) * (1 - mask)
        out, out_changed = model.layer3(stage_in), model.layer3(changed)
    keep = pool_mask(mask, out.shape[-2:])
    assert not torch.allclose(out * keep, out_changed * keep)


def test_pool_mask_samples_the_token_a_strided_conv_centres_on():
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 2, 4] = 1
    assert pool_mask(mask, (4, 4))[0, 0].nonzero().tolist() == [[1, 2]]
    assert pool_mask(mask, (7, 7)) is mask
    assert pool_mask(torch.ones(2, 1, 28, 28), (14, 14)).shape == (2, 1, 14, 14)


@pytest.mark.parametrize("name,stages,gated", [
    ("test_convnext", (1, 2), {"stages.2", "stages.3"}),
    ("test_efficientnet", (2,), {"blocks.3"}),
])
def test_gates_cover_the_modules_up_to_the_next_stage(name, stages, gated):
    model = ersm_surgery.inject(name, stages=list(stages), config={"gate": "stage"}, input_size=SIZE)
    assert {n.rpartition(".")[0] for n, m in model.named_modules() if isinstance(m, StageGate)} == gated


def test_gate_trains_through_the_straight_through_mask():
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], config={"gate": "stage"}, input_size=SIZE).train()
    out = model(torch.randn(2, *SIZE))
    out.sum().backward()
    head = next(m for m in model.layer2.ersm_mask.modules() if isinstance(m, nn.Conv2d))
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
