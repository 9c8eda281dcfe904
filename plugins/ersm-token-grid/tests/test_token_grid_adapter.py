"""The token_grid adapter on its own: exact layouts, prefix tokens untouched, what it claims."""
import pytest
import torch

pytest.importorskip("ersm_token_grid", reason="the plugin is not installed: pip install -e plugins/ersm-token-grid")

from ersm_token_grid.adapter import TokenGridAdapter  # noqa: E402
from torch import nn  # noqa: E402

from ersm_surgery.layers import AdaptedMask, EnergyMask, MaskConfig  # noqa: E402

torch.set_num_threads(2)


class Constant(nn.Module):
    """A unary head with a fixed importance everywhere."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x[:, :1], self.value)


def test_patch_tokens_lie_row_major_on_the_grid_and_come_back_exactly():
    adapter = TokenGridAdapter("tokens", prefix_tokens=2, grid=[3, 4])
    x = torch.randn(2, 2 + 12, 5)
    y, context = adapter.to_spatial(x)
    assert y.shape == (2, 5, 3, 4)
    assert torch.equal(y[:, :, 1, 2], x[:, 2 + 1 * 4 + 2])  # patch token k sits at (k // W, k % W)
    assert torch.equal(adapter.from_spatial(y, context), x)


def test_channels_last_maps_are_permuted_and_come_back_contiguous():
    adapter = TokenGridAdapter("nhwc")
    x = torch.randn(2, 3, 4, 5)
    y, context = adapter.to_spatial(x)
    assert y.shape == (2, 5, 3, 4) and torch.equal(y[:, :, 2, 1], x[:, 2, 1])
    back = adapter.from_spatial(y * 1.0, context)
    assert torch.equal(back, x) and back.is_contiguous()


def test_other_square_inputs_work_and_a_misfit_is_named():
    adapter = TokenGridAdapter("tokens", prefix_tokens=1, grid=[10, 10])
    assert adapter.to_spatial(torch.randn(1, 1 + 49, 8))[0].shape == (1, 8, 7, 7)
    with pytest.raises(ValueError, match="50 patch tokens do not fit the 10x10 grid"):
        adapter.to_spatial(torch.randn(1, 1 + 50, 8))
    with pytest.raises(ValueError, match="layout must be one of tokens, nhwc"):
        TokenGridAdapter("nchw")


def test_a_closed_mask_zeroes_the_patch_tokens_and_leaves_the_prefix_alone():
    mask = EnergyMask(8, MaskConfig(eval_mode="hard")).eval()
    mask.head = Constant(-10.0)  # no token is worth its price
    layer = AdaptedMask(TokenGridAdapter("tokens", prefix_tokens=1, grid=[4, 4]), mask)
    x = torch.randn(2, 17, 8)
    out = layer(x)
    assert torch.equal(out[:, 0], x[:, 0]) and out[:, 1:].abs().sum() == 0
    assert mask.state.hard.shape == (2, 1, 4, 4)


def test_it_claims_tokens_and_channels_last_but_not_nchw_or_pooled_tokens():
    import timm

    vit = timm.create_model("test_vit3")  # fixed image size, one class token
    tokens = "tokens (B, N, C)"
    assert TokenGridAdapter.match(vit, "blocks.1", (1, 101, 96), tokens, (3, 160, 160)) == {
        "layout": "tokens", "prefix_tokens": 1, "grid": [10, 10]}
    assert TokenGridAdapter.match(vit, "blocks.1", (1, 50, 96), tokens, (3, 160, 160)) is None  # not the patch grid
    assert TokenGridAdapter.match(nn.Linear(1, 1), "x", (1, 50, 96), tokens, (3, 160, 160)) is None
    assert TokenGridAdapter.match(vit, "x", (1, 8, 8, 32), "channels-last (B, H, W, C)", (3, 64, 64)) == {
        "layout": "nhwc"}
    assert TokenGridAdapter.match(vit, "x", (1, 32, 8, 8), "NCHW", (3, 64, 64)) is None


class _Embed(nn.Module):
    """What the adapter reads of a timm patch embedding: patch_size and grid_size."""

    def __init__(self, grid):
        super().__init__()
        self.patch_size, self.grid_size = (16, 16), grid


class _TokenModel(nn.Module):
    def __init__(self, feature_info, prefix=1, embed_name="patch_embed", grid=(14, 14)):
        super().__init__()
        self.feature_info, self.num_prefix_tokens = feature_info, prefix
        self.add_module(embed_name, _Embed(grid))


SIZE = (3, 224, 224)


def test_a_stage_before_the_class_token_joins_is_claimed_without_prefix():
    """CaiT and ConViT add their class token late: early blocks hold patch tokens only."""
    model = _TokenModel([{"module": "blocks.3", "num_chs": 8, "reduction": 16}])
    assert TokenGridAdapter.match(model, "blocks.3", (1, 196, 8), None, SIZE) == {
        "layout": "tokens", "prefix_tokens": 0, "grid": [14, 14]}
    assert TokenGridAdapter.match(model, "blocks.3", (1, 197, 8), None, SIZE)["prefix_tokens"] == 1
    assert TokenGridAdapter.match(model, "blocks.3", (1, 199, 8), None, SIZE) is None  # not a known count


def test_a_pooled_token_stage_gets_the_grid_of_its_own_reduction():
    """LeViT-style stages shrink the token grid; feature_info's reduction names it."""
    model = _TokenModel([{"module": "stages.1", "num_chs": 8, "reduction": 32}], prefix=0, embed_name="stem")
    assert TokenGridAdapter.match(model, "stages.1", (1, 49, 8), None, SIZE)["grid"] == [7, 7]


def test_a_patch_embedding_under_another_name_is_found():
    """MLP-Mixer's patch embedding is its stem."""
    model = _TokenModel([], prefix=0, embed_name="stem", grid=(7, 7))
    assert TokenGridAdapter.match(model, "blocks.5", (1, 49, 8), None, SIZE)["grid"] == [7, 7]


@pytest.mark.slow
def test_hiera_tokens_are_laid_out_as_timms_reroll_lays_them_and_go_back_unrolled():
    """Hiera's blocks hold tokens in unrolled order: a grid view of them as they lie would be scrambled."""
    import timm

    model = timm.create_model("hiera_tiny_224", num_classes=3).eval()
    feats = {}
    for name in ("blocks.2", "blocks.9"):  # the ends of stages 1 and 2, before each pooling
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: feats.update({name: out}))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for name, grid in (("blocks.2", [28, 28]), ("blocks.9", [14, 14])):
        args = TokenGridAdapter.match(model, name, tuple(feats[name].shape), None, (3, 224, 224))
        assert args["grid"] == grid and args["unroll"]
        adapter = TokenGridAdapter(**args)
        y, context = adapter.to_spatial(feats[name])
        assert torch.equal(y, model.reroll(feats[name], int(name.split(".")[1])).permute(0, 3, 1, 2))
        assert torch.equal(adapter.from_spatial(y, context), feats[name])
        assert "order" not in adapter.state_dict()
