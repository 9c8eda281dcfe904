"""Max pools of the dense parts computed in channels-last layout: the same values, layout and gradients."""
import pytest
import torch
from torch import nn

import ersm_surgery
from ersm_surgery.sparse import rewrite_dense, sparse_regions
from ersm_surgery.sparse.max_pool import ChannelsLastMaxPool2d, channels_last_max_pools
from tests.sparse_helpers import fix_masks


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", [
    (3, 2, 1, 1, False), (3, 2, 1, 1, True), (2, 2, 0, 1, True), (3, 1, 1, 2, False),
    ((3, 2), (2, 1), (1, 0), 1, False),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_max_pool_equals_max_pool(kernel, stride, padding, dilation, ceil_mode, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 15, 17, dtype=dtype)
    x[0, 0, 0, 0] = float("nan")
    x[1, 2, 3:6, 3:6] = float("-inf")
    plain = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    rewritten = ChannelsLastMaxPool2d.from_module(plain)
    expected, out = plain(x), rewritten(x)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=0, atol=0)
    assert out.is_contiguous() and out.stride() == expected.stride()


def test_channels_last_max_pool_keeps_a_channels_last_input_channels_last_and_the_gradient():
    torch.manual_seed(0)
    plain = nn.MaxPool2d(3, 2, 1)
    rewritten = ChannelsLastMaxPool2d.from_module(plain)
    cl = torch.randn(2, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    assert rewritten(cl).is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    (plain(x) * torch.arange(100.0).reshape(1, 4, 5, 5)[:, :, :5, :5]).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    (rewritten(x) * torch.arange(100.0).reshape(1, 4, 5, 5)[:, :, :5, :5]).sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_a_pool_returning_indices_or_a_subclass_is_left_alone():
    class Custom(nn.MaxPool2d):
        pass

    model = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(2, return_indices=True), Custom(2))
    assert channels_last_max_pools(model) == 1
    assert [type(m) for m in model] == [ChannelsLastMaxPool2d, nn.MaxPool2d, Custom]


def test_sparse_rewrites_the_stem_pool_not_the_pools_inside_its_regions():
    size = (3, 64, 64)
    model = ersm_surgery.inject("dla34", stages=[2, 3], config={"gate": "stage"}, input_size=size).eval()
    fix_masks(model)
    fast = ersm_surgery.sparse(model, break_even=1.0)
    inside = {id(m) for r in sparse_regions(fast).values() for m in r.modules()}
    pools = [m for m in fast.modules() if isinstance(m, nn.MaxPool2d)]
    assert any(type(m) is ChannelsLastMaxPool2d for m in pools)  # level2's downsample, before the masks
    assert all(type(m) is nn.MaxPool2d for m in pools if id(m) in inside)  # the row programs run these on rows
    assert not any(type(m) is ChannelsLastMaxPool2d for m in model.modules())  # the user's model is untouched
    assert not any(type(m) is ChannelsLastMaxPool2d for m in ersm_surgery.sparse(model, fold=False).modules())
    x = torch.randn(2, *size)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_rewrite_dense_of_a_timm_model_counts_its_rewrites_and_keeps_its_logits():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        count = rewrite_dense(model)
        out = model(x)
    assert type(model.maxpool) is ChannelsLastMaxPool2d
    assert count == 1 + sum(1 for m in model.modules() if type(m).__name__ == "FoldedConv")
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
