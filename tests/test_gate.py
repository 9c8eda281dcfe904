"""mask.gate=stage: recipe setting, gate insertion, and the property the sparse runtime relies on."""
import gc

import pytest
import torch
from torch import nn

import ersm_surgery
from ersm_surgery.errors import RecipeError
from ersm_surgery.layers import StageGate, pool_mask
from ersm_surgery.layers.gate import kept_tokens
from ersm_surgery.recipe import Recipe
from tests.sparse_helpers import fix_masks, randomise_norms

SIZE = (3, 64, 64)


def _gated(name="test_resnet", stages=(2, 3), gate="stage", pool="sample"):
    model = ersm_surgery.inject(name, stages=list(stages), config={"gate": gate, "gate_pool": pool},
                                input_size=SIZE).eval()
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


def _stage_outputs(model, x, perturb):
    """layer3's output and layer2's mask, with every conv/norm output inside layer3 perturbed at the
    tokens the mask switches off (on that output's grid) when ``perturb``."""
    seen = {}
    hooks = [model.layer3.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))]
    if perturb:
        def noise(module, args, out):
            keep = pool_mask(model.layer2.ersm_mask.state.mask, out.shape[-2:], model.ersm_recipe.mask.gate_pool)
            return out + 5 * torch.randn_like(out) * (1 - keep)
        hooks += [m.register_forward_hook(noise) for name, m in model.layer3.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) and "ersm" not in name]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen["out"], model.layer2.ersm_mask.state.mask


@pytest.mark.parametrize("pool", ["any", "sample"])
def test_switched_off_tokens_cannot_reach_kept_ones(pool):
    model = _gated(pool=pool)
    x = torch.randn(4, *SIZE)
    out, mask = _stage_outputs(model, x, perturb=False)
    changed, _ = _stage_outputs(model, x, perturb=True)
    assert 0 < float(mask.mean()) < 1
    keep = pool_mask(mask, out.shape[-2:], pool)
    # values put at switched-off tokens after any conv or BatchNorm (biases included) reach no kept token
    assert torch.equal(out * keep, changed * keep)
    assert torch.equal(out * (1 - keep), torch.zeros_like(out))


def test_without_the_gate_switched_off_tokens_leak():
    model = _gated(gate="features")
    x = torch.randn(4, *SIZE)
    out, mask = _stage_outputs(model, x, perturb=False)
    changed, _ = _stage_outputs(model, x, perturb=True)
    keep = pool_mask(mask, out.shape[-2:], "any")
    assert not torch.allclose(out * keep, changed * keep)


def test_pool_mask_samples_the_token_a_strided_conv_centres_on():
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 2, 4] = 1
    assert pool_mask(mask, (4, 4))[0, 0].nonzero().tolist() == [[1, 2]]
    assert pool_mask(mask, (7, 7)) is mask
    assert pool_mask(torch.ones(2, 1, 28, 28), (14, 14)).shape == (2, 1, 14, 14)


@pytest.mark.parametrize("size,target", [(7, 4), (28, 14), (14, 7), (11, 7), (9, 4), (5, 5), (6, 2), (3, 2)])
def test_pool_mask_sample_reads_token_min_s_i_of_the_fine_grid(size, target):
    # the rule as written in pool_mask's docstring; a strided view where no sampled row or column is clamped
    mask = (torch.rand(2, 1, size, size + 1, generator=torch.Generator().manual_seed(size)) > 0.5).float()
    step_h, step_w = round(size / target), round((size + 1) / (target + 1))
    rows = [min(step_h * i, size - 1) for i in range(target)]
    cols = [min(step_w * j, size) for j in range(target + 1)]
    assert torch.equal(pool_mask(mask, (target, target + 1)), mask[:, :, rows][:, :, :, cols])


def test_pool_mask_any_keeps_a_coarse_token_when_any_token_of_its_block_is_kept():
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 3, 5] = 1  # an odd position: "sample" loses it, "any" keeps block (1, 2)
    assert pool_mask(mask, (4, 4), "any")[0, 0].nonzero().tolist() == [[1, 2]]
    assert pool_mask(mask, (4, 4), "sample").sum() == 0
    mask[0, 0, 6, 6] = 1  # the last, partial block of a 7-wide grid
    assert pool_mask(mask, (4, 4), "any")[0, 0].nonzero().tolist() == [[1, 2], [3, 3]]
    with pytest.raises(ValueError, match="mask.gate_pool must be one of sample, any"):
        pool_mask(mask, (4, 4), "mean")


def test_recipes_record_the_gate_pool_and_old_gated_recipes_keep_sampling():
    gated = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage"}, input_size=SIZE)
    assert gated.ersm_recipe.to_dict()["mask"]["gate_pool"] == "sample" and gated.layer3.ersm_gate.pool == "sample"
    chosen = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage", "gate_pool": "any"},
                                 input_size=SIZE)
    assert chosen.layer3.ersm_gate.pool == "any"
    assert Recipe.from_dict(chosen.ersm_recipe.to_dict()).mask.gate_pool == "any"
    old = Recipe.from_dict({"version": 3, "model": "test_resnet", "mask": {"gate": "stage"}})
    assert old.mask.gate_pool == "sample" and Recipe.from_dict(old.to_dict()).mask.gate_pool == "sample"
    plain = ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE)
    assert "gate_pool" not in plain.ersm_recipe.to_dict()["mask"]  # meaningless without the gate
    with pytest.raises(RecipeError, match="mask.gate_pool must be one of sample, any"):
        Recipe.from_dict({"model": "test_resnet", "mask": {"gate": "stage", "gate_pool": "mean"}})


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


def test_evaluate_runs_on_a_gated_model_and_measures_its_sparse_latency():
    from ersm_surgery.data import create_dataset
    from ersm_surgery.eval.images import load_images
    from ersm_surgery.eval.runner import EvalSettings, evaluate

    model = ersm_surgery.inject("test_resnet", stages=[2, 3], config={"gate": "stage", "alpha": 0.5, "init_logit": 0.0},
                                input_size=(3, 32, 32), num_classes=4).eval()
    data = create_dataset("builtin:clutter", "validation", img_size=32, seed=0, num_classes=4, size=6)
    images = load_images(data, 6, seed=0, batch_size=3)
    settings = EvalSettings(batch_size=3, latency_repeats=1, occlusion_levels=(0.0, 0.3), occlusion_grid=4,
                            deletion_fractions=(0.0, 0.5), figure_images=1)
    r = evaluate(model, images, None, settings).results
    assert r["compute"]["model"]["sparse_latency"]["per_image_ms"] > 0
    for rankings in r["deletion"]["model"]["layers"].values():
        assert rankings["energy"]["lerf"]["accuracy"][0] == pytest.approx(r["accuracy"]["model"]["top1"])


def _loss_at_switched_off_tokens(gate):
    """Inject at stage 2, run a training pass and back-propagate a loss that reads layer3 only at the tokens
    layer2's mask switched off. Returns (layer2's mask state, layer3's output, the switched-off tokens)."""
    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": gate, "init_logit": 0.0,
                                "gate_pool": "sample"}, input_size=SIZE).train()  # a fresh head's blocks are mixed
    seen = {}
    model.layer3.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))
    model(torch.randn(4, *SIZE))
    state = model.layer2.ersm_mask.state
    state.q.retain_grad()
    off = 1 - pool_mask(state.hard, seen["out"].shape[-2:], "sample")
    assert 0 < float(off.mean()) < 1
    (seen["out"] * off).sum().backward()
    return state, seen["out"], off


@pytest.mark.parametrize("gate", ["stage", "features"])
def test_a_switched_off_token_is_priced_by_what_its_gated_stage_computes_there(gate):
    # under the gate the values read are zero whatever the features, so the only way the mask learns what
    # keeping those tokens would bring is the gate
    state, out, off = _loss_at_switched_off_tokens(gate)
    assert float((state.q.grad * (1 - state.hard)).abs().sum()) > 0
    # the values are still gated; without the gate the loss reads the leaked values through the features
    assert torch.equal(out * off, torch.zeros_like(out)) == (gate == "stage")


def test_gate_without_the_mask_gradient_path_gives_switched_off_tokens_no_gradient(monkeypatch):
    from ersm_surgery.layers import energy_mask

    monkeypatch.setattr(energy_mask, "remember_mask", lambda out, mask: None)  # the kept tokens off the data alone
    state, _, _ = _loss_at_switched_off_tokens("stage")
    assert float((state.q.grad * (1 - state.hard)).abs().sum()) == 0


def test_the_remembered_mask_lives_as_long_as_the_output():
    from ersm_surgery.layers import gate as gate_module

    model = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage"}, input_size=SIZE).train()
    # outputs of earlier tests' graphs that sit in reference cycles (a failed check's traceback) stay in the
    # weak table until the collector runs: counted out, so only this forward's entries are
    gc.collect()
    before = len(gate_module._TRAINING_MASKS)
    out = model(torch.randn(2, *SIZE))
    assert len(gate_module._TRAINING_MASKS) - before == 2  # layer2's masked output, and layer3's handed on
    out.sum().backward()
    del out
    model.layer2.ersm_mask.state = None
    assert len(gate_module._TRAINING_MASKS) == before
    with torch.no_grad():
        model.eval()(torch.randn(2, *SIZE))
    assert len(gate_module._TRAINING_MASKS) == 0  # nothing is remembered without gradients


@pytest.mark.parametrize("name,stages", [("test_resnet", (2, 3)), ("test_convnext", (1, 2)),
                                         ("test_efficientnet", (2, 3)), ("efficientnet_b0", (2,))])
def test_every_gated_stage_finds_the_mask_it_reads_in_training(name, stages):
    from ersm_surgery.layers import gate as gate_module

    model = ersm_surgery.inject(name, stages=list(stages), config={"gate": "stage"}, input_size=SIZE).train()
    gated = [m for m in model.modules() if isinstance(getattr(m, "ersm_gate", None), StageGate)]
    found = []
    remembered = gate_module._TRAINING_MASKS
    for m in gated:
        m.register_forward_pre_hook(lambda mod, args: found.append(remembered.get(args[0]) is not None))
    model(torch.randn(2, *SIZE))
    # the gradient path reaches every gated module, also the second of a stage gated in two (blocks.3, blocks.4)
    assert gated and found == [True] * len(gated)


def test_kept_tokens_are_the_tokens_with_any_nonzero_channel():
    # the sum of magnitudes stands for (x != 0).any(1): tiny, huge, negative, inf and NaN values all count
    x = torch.zeros(2, 5, 3, 4)
    x[0, 2, 0, 0] = 1e-38  # a subnormal-sized value alone
    x[0, 4, 1, 2] = -3.0
    x[1, :, 2, 3] = torch.tensor([3e38, 3e38, 3e38, 0.0, 0.0])  # the sum overflows to inf
    x[1, 0, 0, 1] = float("nan")
    x[1, 1, 1, 1] = float("-inf")
    x[1, 3, 0, 0] = -0.0
    expected = (x != 0).any(dim=1, keepdim=True).float()
    assert torch.equal(kept_tokens(x), expected)
    assert torch.equal(kept_tokens(x.contiguous(memory_format=torch.channels_last)), expected)
    assert int(expected.sum()) == 5
