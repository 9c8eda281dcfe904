"""fx surgery: anchors, node placements, train/eval parity, copies, rebuild, module-level fallback."""
import copy

import pytest
import timm
import torch
from torch import nn

import ersm_surgery
from ersm_surgery.errors import NotSpatialError, PlacementError
from ersm_surgery.surgery import DualGraphModule, analyse, is_mask_key

SIZE = (3, 64, 64)


def test_stage_anchors_are_meaningful_names():
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=SIZE)
    p2, p3 = model.ersm_recipe.placements
    assert (p2.stage, p2.module, p2.channels, p2.reduction, p2.method) == (2, "layer2", 48, 8, "fx")
    assert (p3.stage, p3.module, p3.channels, p3.reduction) == (3, "layer3", 192, 16)
    assert set(ersm_surgery.masks(model).names()) == {"layer2.ersm_mask", "layer3.ersm_mask"}
    # the timm model keeps its class, its head and timm's state-dict keys
    assert type(model).__name__ == "ResNet" and hasattr(model, "forward_head")
    plain = timm.create_model("test_resnet").state_dict()
    assert {k for k in model.state_dict() if not is_mask_key(k)} == set(plain)


def test_node_placement_masks_inside_a_block():
    model = ersm_surgery.inject("test_resnet", nodes=["layer3.0.add", "layer2.0.act2"], input_size=SIZE)
    add, act = model.ersm_recipe.placements
    assert (add.node, add.module, add.channels, add.reduction) == ("layer3.0.add", "layer3.0", 192, 16)
    assert (act.node, act.module) == ("layer2.0.act2", "layer2.0")
    assert isinstance(model.layer3[0], DualGraphModule)
    code = model.layer3[0].code
    assert code.index("add") < code.index("ersm_mask_add") < code.index("act3")
    model.eval()
    x = torch.randn(2, *SIZE)
    model(x)
    assert ersm_surgery.masks(model).states()["layer3.0.ersm_mask_add"].q.shape == (2, 1, 4, 4)


def test_a_stage_and_a_node_inside_it_nest():
    model = ersm_surgery.inject("test_resnet", stages=[3], nodes=["layer3.0.conv2"], input_size=SIZE)
    assert len(ersm_surgery.masks(model)) == 2
    model.eval()
    model(torch.randn(1, *SIZE))
    assert all(s is not None for s in ersm_surgery.masks(model).states().values())


def test_injection_preserves_the_function():
    base = timm.create_model("test_efficientnet", num_classes=7).eval()
    original = copy.deepcopy(base)
    model = ersm_surgery.inject(base, stages=[2, 3], input_size=SIZE).eval()
    x = torch.randn(64, *SIZE) * 3
    with torch.no_grad():
        a, b = original(x), model(x)
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.99
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("name, kwargs", [("test_convnext", {"drop_path_rate": 0.3}),
                                          ("test_resnet", {"drop_rate": 0.5, "drop_path_rate": 0.2})])
def test_stochastic_in_train_mode_deterministic_in_eval_mode_like_the_original(name, kwargs):
    model = ersm_surgery.inject(name, stages=[1, 2], input_size=SIZE, model_kwargs=kwargs)
    original = timm.create_model(name, **kwargs)
    x = torch.randn(2, *SIZE)
    for net in (original, model):
        net.train()
        with torch.no_grad():
            assert not torch.equal(net(x), net(x)), "train mode must stay stochastic"
        net.eval()
        with torch.no_grad():
            assert torch.equal(net(x), net(x)), "eval mode must be deterministic"
    model.train()  # and back: the train graph returns
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_deepcopy_keeps_both_graphs_and_the_weights():
    model = ersm_surgery.inject("test_convnext", stages=[1], input_size=SIZE, model_kwargs={"drop_path_rate": 0.2})
    model.train()
    model(torch.randn(2, *SIZE)).sum().backward()
    clone = copy.deepcopy(model).eval()
    model.eval()
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
    clone.train()
    assert clone.stages[1].graph is clone.stages[1].train_graph
    assert clone.stages[1].ersm_mask is not model.stages[1].ersm_mask


def test_not_traceable_stage_falls_back_to_a_module_hook_and_says_so():
    model = ersm_surgery.inject("selecsls42", stages=[2], input_size=SIZE)
    (p,) = model.ersm_recipe.placements
    assert p.method == "module"
    model.eval()
    model(torch.randn(1, *SIZE))
    assert ersm_surgery.masks(model).states()[p.path].hard.shape[-1] == 8


def test_rebuild_resolves_the_anchors_again(tmp_path):
    model = ersm_surgery.inject("test_resnet", stages=[2], nodes=["layer3.0.add"], input_size=SIZE)
    ersm_surgery.save(model, tmp_path)
    rebuilt = ersm_surgery.build_model(model.ersm_recipe)
    assert ersm_surgery.masks(rebuilt).names() == ersm_surgery.masks(model).names()


def test_stage_table_matches_feature_info():
    result = analyse(timm.create_model("test_resnet"), SIZE)
    assert [s.module for s in result.stages] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert all(s.status == "ok" for s in result.stages)
    assert result.stages[2].node == "layer2.0.act2" and result.stages[2].shape == (1, 48, 8, 8)
    assert any(c.name == "layer3.0.add" and c.stride == 16 for c in result.candidates)


def test_channels_last_stages_are_reported_not_spatial():
    result = analyse(timm.create_model("test_mambaout"), SIZE)
    assert not any(s.spatial for s in result.stages)


@pytest.mark.parametrize("kwargs, match", [
    ({"stages": [9]}, "out of range 0..4"),
    ({"stages": [2, 2]}, "given twice"),
    ({"nodes": ["layer3.0.ad"]}, "did you mean layer3.0.add"),
    ({"nodes": ["fc"]}, r"not a \(B, C, H, W\) map"),
    ({}, "no placement"),
])
def test_bad_placements_name_the_problem(kwargs, match):
    with pytest.raises(PlacementError, match=match):
        ersm_surgery.inject("test_resnet", input_size=SIZE, **kwargs)


def test_not_spatial_node_is_a_not_spatial_error():
    with pytest.raises(NotSpatialError):
        ersm_surgery.inject("test_resnet", nodes=["fc"], input_size=SIZE)


def test_masks_param_overhead_stays_within_one_percent():
    for name in ("resnet50", "test_resnet", "test_efficientnet"):
        base = timm.create_model(name)
        n = sum(p.numel() for p in base.parameters())
        model = ersm_surgery.inject(base, stages=[2, 3], input_size=SIZE)
        extra = sum(p.numel() for p in ersm_surgery.masks(model).parameters())
        assert extra <= 0.01 * n, (name, extra / n)


def test_masks_looks_through_wrappers():
    model = ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE)
    wrapped = nn.Module()
    wrapped._orig_mod = model  # what torch.compile's OptimizedModule holds
    assert len(ersm_surgery.masks(wrapped)) == 1


def test_a_tensor_made_inside_forward_survives_the_dual_graph():
    """fx stores such a tensor on the traced root as _tensor_constantN (SwinV2-CR's attention mask)."""
    from ersm_surgery.surgery._tracer import trace

    class AddConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) + torch.arange(3.0).view(1, 3, 1, 1)

    root = AddConstant()
    (train_graph, _), (eval_graph, _) = trace(root, True), trace(root, False)
    assert any(n.op == "get_attr" for n in eval_graph.nodes)
    dual = DualGraphModule(root, train_graph, eval_graph).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(dual(x), root(x))
        assert torch.equal(copy.deepcopy(dual)(x), root(x))
        assert dual.double()(x.double()).dtype == torch.float64  # the constant follows .to()
    assert not any("_tensor_constant" in k for k in dual.state_dict())


def test_feature_info_names_modules_that_run():
    """Twins and MViTv2 list `block.N`; Twins' stage is a ModuleList, which is never called itself."""
    from ersm_surgery.surgery.analysis import feature_info

    class Listed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.ModuleList([nn.Identity(), nn.Identity()])])
            self.stages = nn.Sequential(nn.Identity())
            self.encoder = nn.Module()
            self.encoder.layers = nn.Sequential(nn.Identity())
            self.feature_info = [{"module": "block.0", "num_chs": 3, "reduction": 4},
                                 {"module": "stages.0", "num_chs": 3, "reduction": 8},
                                 {"module": "nowhere.3", "num_chs": 3, "reduction": 16},
                                 {"module": "layers.0", "num_chs": 3, "reduction": 16}]  # Gemma4: in the encoder

    assert [d["module"] for d in feature_info(Listed())] == ["blocks.0.1", "stages.0", "nowhere.3", "encoder.layers.0"]


def test_a_hooked_sequential_stage_does_not_run_its_mask_as_a_layer():
    """HRNet's stages are SequentialLists that fx cannot trace: the hook's mask child stays out of the loop."""
    size = (3, 64, 64)
    base = timm.create_model("hrnet_w18_small", num_classes=3).eval()
    original = copy.deepcopy(base)
    layers = len(base.stage2)
    model = ersm_surgery.inject(base, stages=[2], input_size=size).eval()
    assert model.ersm_recipe.placements[0].method == "module"
    assert len(model.stage2) == layers and all(m is not model.stage2.ersm_mask for m in model.stage2)
    x = torch.randn(2, *size)
    with torch.no_grad():
        assert (model(x) - original(x)).abs().max() <= 1e-5
        assert torch.equal(copy.deepcopy(model)(x), model(x))


def test_the_element_of_a_tuple_output_is_chosen_by_width_scale_and_rank():
    from ersm_surgery.surgery.resolve import _element

    size = (3, 224, 224)
    two_branches = [{"module": "b", "num_chs": 96, "reduction": 12}, {"module": "b", "num_chs": 192, "reduction": 17}]
    assert _element([(1, 401, 96), (1, 197, 192)], two_branches, 1, (3, 240, 240)) == 1  # 240 // 17 = 14
    scales = [{"module": "p", "num_chs": 8, "reduction": r} for r in (8, 16)]  # one width: the token count decides
    assert [_element([(1, 3137, 8), (1, 785, 8), (1, 197, 8)], scales, s, size) for s in (0, 1)] == [1, 2]
    assert _element([(1, 8, 28, 28)], scales, 0, size) == 0  # a single output
    assert _element([(1, 5, 28, 28), None], scales, 0, size) == 0  # nothing fits: the first, as before


def test_a_placement_on_a_later_element_round_trips_and_old_recipes_mean_element_0():
    from ersm_surgery.surgery.placement import Placement

    p = Placement(module="blocks.0", channels=192, stage=3, method="module", output=1)
    assert p.to_dict()["output"] == 1 and p.attr == "ersm_mask_output1"
    assert Placement.from_dict(p.to_dict()) == p
    old = Placement(module="layer2", channels=8, stage=2)
    assert "output" not in old.to_dict() and Placement.from_dict(old.to_dict()).output == 0
    with pytest.raises(ValueError, match="element index"):
        Placement.from_dict({**p.to_dict(), "output": -1})


def test_a_stage_whose_output_never_reaches_the_loss_is_refused_in_one_line():
    """A mask there would get no task gradient: its price alone would shut it."""

    class DeadBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.side = nn.Conv2d(8, 8, 3, padding=1)  # computed, then dropped
            self.head = nn.Linear(8, 2)
            nn.init.zeros_(self.head.weight)  # a zero-initialised head (Hiera's) hides no path from the probe
            self.feature_info = [{"module": "stem", "num_chs": 8, "reduction": 1},
                                 {"module": "side", "num_chs": 8, "reduction": 1}]

        def forward(self, x):
            x = self.stem(x)
            self.side(x)
            return self.head(x.mean((2, 3)))

    from ersm_surgery.surgery.reach import unreached_masks

    live = ersm_surgery.inject(DeadBranch(), stages=[0], input_size=(3, 8, 8))  # the live stage injects
    rng = torch.get_rng_state()
    assert unreached_masks(live, dict(ersm_surgery.masks(live).items()), (3, 8, 8)) == []
    assert torch.equal(torch.get_rng_state(), rng)  # the check does not move the user's random stream
    assert not live.head.weight.any()  # and leaves the zeros as they were
    with pytest.raises(PlacementError, match="does not reach the model's output") as info:
        ersm_surgery.inject(DeadBranch(), stages=[1], input_size=(3, 8, 8))
    assert "inspect" in info.value.fix


def test_a_gated_mask_that_starts_closing_a_small_map_is_not_called_unreached():
    # run's masks (a magnitude prior, init_logit 1) switch some tokens off at injection; at 32 px the map after
    # stage 3 is 2 x 2 and the gated stage 4's 1 x 1: the probe used to see no gradient and refuse the placement
    config = {"norm_prior": 2.0, "init_logit": 1.0, "gate": "stage"}
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=(3, 32, 32), config=config)
    assert {layer.config.train_mode for layer in ersm_surgery.masks(model)} == {"straight_through"}  # restored


def test_a_headless_model_ending_in_a_layernorm_is_not_refused():
    """The sum of a LayerNorm's output does not depend on its input: the probe projects at random instead."""

    class Headless(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.norm = nn.LayerNorm(8)
            self.feature_info = [{"module": "stem", "num_chs": 8, "reduction": 1}]

        def forward(self, x):
            return self.norm(self.stem(x).mean((2, 3)))

    assert len(ersm_surgery.masks(ersm_surgery.inject(Headless(), stages=[0], input_size=(3, 8, 8)))) == 1
