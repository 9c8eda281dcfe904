"""Token and channels-last timm models, end to end with the token_grid adapter: inject, train, save, load.

vit, deit, eva, swin and mambaout are in the root coverage check (tests/coverage_models.py,
TOKEN_COVERAGE); this file adds timm's other small ViTs, a dynamic-size input, and the command line.
"""
import json

import pytest
import torch

pytest.importorskip("ersm_token_grid", reason="the plugin is not installed: pip install -e plugins/ersm-token-grid")

from click.testing import CliRunner  # noqa: E402

import ersm_surgery  # noqa: E402
from ersm_surgery import plugins  # noqa: E402
from ersm_surgery.cli.main import cli  # noqa: E402
from ersm_surgery.errors import PluginError  # noqa: E402
from ersm_surgery.layers import AdaptedMask  # noqa: E402
from ersm_surgery.surgery import list_adapters  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _registered():
    plugins.load_plugins()
    if "token_grid" not in list_adapters():
        pytest.skip("the token_grid entry point is not registered: pip install -e plugins/ersm-token-grid")
    torch.manual_seed(0)


@pytest.mark.parametrize("name, stages", [("test_vit2", [1, 6]), ("test_vit3", [2])])
def test_small_vits_inject_train_save_and_load(tmp_path, name, stages):
    model = ersm_surgery.inject(name, stages=stages, input_size=(3, 160, 160), num_classes=4)
    layers = ersm_surgery.masks(model)
    assert layers.names() == [p.path for p in model.ersm_recipe.placements] == [f"blocks.{s}.ersm_mask" for s in stages]
    assert all(isinstance(model.get_submodule(p), AdaptedMask) for p in layers.names())
    x = torch.randn(2, 3, 160, 160)
    model.train()
    (model(x).square().mean() + layers.regularizer()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(p.grad.abs().sum() > 0 for p in layers.parameters())
    assert layers.states()[f"blocks.{stages[0]}.ersm_mask"].hard.shape == (2, 1, 10, 10)

    model.eval()
    with torch.no_grad():
        expected = model(x)
    ersm_surgery.save(model, tmp_path / "m")
    loaded = ersm_surgery.load(tmp_path / "m")
    with torch.no_grad():
        assert (loaded(x) - expected).abs().max() <= 1e-5
    assert all(".ersm_mask." in k for k in loaded.state_dict() if "ersm_mask" in k)


def test_a_dynamic_size_vit_takes_another_square_input():
    model = ersm_surgery.inject("test_vit", stages=[2], input_size=(3, 160, 160)).eval()  # dynamic_img_size
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    assert ersm_surgery.masks(model).states()["blocks.2.ersm_mask"].hard.shape == (1, 1, 8, 8)


def test_cli_inject_records_the_adapter_and_a_rebuild_without_the_plugin_names_it(tmp_path):
    runner = CliRunner()
    out = tmp_path / "vit"
    result = runner.invoke(cli, ["inject", "test_vit", "--stages", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["top1_agreement"] == 1.0 and summary["max_logit_diff"] == 0.0  # injection preserves the model
    placement = summary["recipe"]["placements"][0]
    assert placement["adapter"] == "token_grid" and placement["adapter_args"]["grid"] == [10, 10]
    assert summary["recipe"]["plugins"] == {"adapter:token_grid": "ersm-token-grid"}

    inspect = runner.invoke(cli, ["inspect", "test_mambaout", "--input-size", "3,64,64", "--json"])
    assert [s["adapter"] for s in json.loads(inspect.output)["stages"]] == ["token_grid"] * 4

    with plugins.disabled(), pytest.raises(PluginError, match="'ersm-token-grid'.*plugins are turned off"):
        ersm_surgery.load(out)
    refused = runner.invoke(cli, ["--no-plugins", "inject", "test_vit", "--stages", "1", "-o", str(tmp_path / "no")])
    assert refused.exit_code == 1 and "token-grid adapter" in refused.output
