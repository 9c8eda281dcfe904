"""The sparse runtime: each row op against its dense counterpart, whole models against the dense gated model."""
import dataclasses

import pytest
import torch
from torch import nn

import ersm_surgery
from ersm_surgery.errors import SparseError
from ersm_surgery.layers import GATE_POOLS, pool_mask
from ersm_surgery.sparse import conv as sparse_conv
from ersm_surgery.sparse import sparse_regions
from ersm_surgery.sparse.conv import RowConv, avg_pool_rows, out_size
from ersm_surgery.sparse.fold import fold_bn
from ersm_surgery.sparse.grid import GridSet, Rows
from ersm_surgery.sparse.rowops import group_norm_rows, segment_mean, to_row_operand
from tests.sparse_helpers import blob_masks, fix_masks, randomise_norms

SIZE = (3, 64, 64)


def _rows(batch=5, channels=6, height=9, width=11, seed=0, pool="sample"):
    """A gated map, its stage mask and the rows of its kept tokens (coarser grids by the rule ``pool``)."""
    gen = torch.Generator().manual_seed(seed)
    mask = blob_masks(batch, height, width, gen)
    x = torch.randn(batch, channels, height, width, generator=gen) * mask
    grids = GridSet(mask, pool)
    grid = grids.at(height, width)
    return x, mask, grids, Rows(grid.gather(x), grid)


@pytest.mark.parametrize("kernel,stride,padding,dilation,groups", [
    (1, 1, 0, 1, 1), (1, 2, 0, 1, 1), (3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (3, 1, 2, 2, 1), (5, 2, 2, 1, 1),
    (3, 1, 1, 1, 6), (7, 1, 3, 1, 6), (3, 2, 1, 1, 6), (3, 1, 1, 1, 3), (2, 2, 0, 1, 1), ((1, 3), 1, (0, 1), 1, 2),
])
@pytest.mark.parametrize("pool", GATE_POOLS)
def test_conv_on_rows_equals_dense_conv(kernel, stride, padding, dilation, groups, pool):
    x, mask, grids, rows = _rows(pool=pool)
    conv = nn.Conv2d(6, 12, kernel, stride, padding, dilation, groups=groups)
    dense = conv(x)
    out = RowConv.from_module(conv)(rows, grids)
    assert out.grid.height == dense.shape[2] and out.grid.width == dense.shape[3]
    keep = pool_mask(mask, dense.shape[-2:], pool)
    torch.testing.assert_close(out.dense(), dense * keep, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel,dilation,padding,groups", [
    (3, 1, "same", 1), (5, 2, "same", 6), ((1, 7), 1, "same", 1), (3, 1, "valid", 1), (7, 1, "same", 6)])
def test_conv_with_padding_by_name_on_rows_equals_dense_conv(kernel, dilation, padding, groups):
    # convmixer's depthwise convolutions pad "same": they ran densely before
    x, mask, grids, rows = _rows(seed=2)
    conv = nn.Conv2d(6, 6, kernel, 1, padding, dilation, groups=groups)
    assert sparse_conv.conv_supported(conv)
    dense = conv(x)
    out = RowConv.from_module(conv)(rows, grids)
    torch.testing.assert_close(out.dense(), dense * pool_mask(mask, dense.shape[-2:]), atol=1e-5, rtol=1e-5)


def test_same_padding_of_an_even_kernel_runs_densely():
    # torch pads an even dilated kernel's extra row at the end only: not a symmetric padding the taps know
    assert not sparse_conv.conv_supported(nn.Conv2d(6, 6, 4, 1, "same"))
    assert sparse_conv.conv_padding(nn.Conv2d(6, 6, 4, 1, "same", dilation=2)) == (3, 3)


@pytest.mark.parametrize("path", ["taps", "dense"])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, 1, 1), (7, 1, 3, 1), (5, 2, 2, 1), (3, 1, 2, 2)])
def test_depthwise_conv_on_rows_either_path_equals_dense_conv(kernel, stride, padding, dilation, path, monkeypatch):
    monkeypatch.setattr(sparse_conv, "DEPTHWISE_PATH", path)
    x, mask, grids, rows = _rows(batch=3, channels=6, height=10, width=7, seed=1)
    conv = nn.Conv2d(6, 6, kernel, stride, padding, dilation, groups=6)
    out = RowConv.from_module(conv)(rows, grids)
    dense = conv(x)
    torch.testing.assert_close(out.dense(), dense * pool_mask(mask, dense.shape[-2:]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prepacked", [True, False])
@pytest.mark.parametrize("batch,stride,dilation", [(1, 1, 1), (3, 2, 1), (2, 1, 2)])
def test_the_dense_depthwise_kernel_equals_torch_either_way(batch, stride, dilation, prepacked, monkeypatch):
    from ersm_surgery.sparse import onednn

    monkeypatch.setattr(onednn, "ENABLED", prepacked)
    conv = nn.Conv2d(8, 8, 5, stride, 2 * dilation, dilation, groups=8)
    kernel = onednn.DepthwiseKernel(conv.weight.detach(), conv.bias.detach(), conv.stride, conv.padding,
                                    conv.dilation, conv.groups)
    with torch.no_grad():
        for b in (batch, batch + 2):  # a weight laid out for one batch size serves another
            for x in (torch.randn(b, 8, 11, 9), torch.randn(b, 8, 11, 9).contiguous(memory_format=torch.channels_last)):
                torch.testing.assert_close(kernel(x), conv(x), atol=1e-5, rtol=1e-5)


def test_the_dense_depthwise_kernel_falls_back_to_torch_where_onednn_refuses(monkeypatch):
    from ersm_surgery.sparse import onednn

    def refuse(*args, **kwargs):  # a torch built without the operator, or one that rejects the arguments
        raise NotImplementedError("no oneDNN here")

    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", refuse)
    conv = nn.Conv2d(6, 6, 3, 1, 1, groups=6)
    kernel = onednn.DepthwiseKernel(conv.weight.detach(), None, (1, 1), (1, 1), (1, 1), 6)
    x = torch.randn(2, 6, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(kernel(x), nn.functional.conv2d(x, conv.weight, None, 1, 1, 1, 6))
    assert kernel._failed  # and it does not try again at every call


def test_a_pointwise_convolution_of_per_image_vectors_is_one_gemm_with_its_norm_and_activation():
    conv, bn = nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8).eval()
    randomise_norms(bn)
    folded = dataclasses.replace(fold_bn(RowConv.from_module(conv), bn), activation="silu")
    v = torch.randn(3, 6, 1, 1)  # squeeze-excite's pooled vectors
    assert folded.takes_vectors(v) and not folded.takes_vectors(torch.randn(3, 6, 2, 1))
    with torch.no_grad():
        torch.testing.assert_close(folded.on_vectors(v), nn.functional.silu(bn(conv(v))), atol=1e-5, rtol=1e-5)


def test_folded_batchnorm_equals_conv_then_bn():
    x, mask, grids, rows = _rows()
    conv, bn = nn.Conv2d(6, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8).eval()
    randomise_norms(bn)
    dense = bn(conv(x)) * pool_mask(mask, (5, 6))
    out = fold_bn(RowConv.from_module(conv), bn)(rows, grids)
    torch.testing.assert_close(out.dense(), dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "regnety_002"])
def test_fold_model_folds_every_conv_norm_pair_and_keeps_both_modes(name):
    import copy

    import timm

    from ersm_surgery.sparse import fold_model
    from ersm_surgery.sparse.fold import FoldedConv

    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    randomise_norms(model)
    folded = copy.deepcopy(model)
    pairs = fold_model(folded)
    assert pairs == sum(isinstance(m, FoldedConv) for m in folded.modules())
    assert pairs == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # every norm follows a conv here
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
        assert not torch.equal(folded(x), model(x))  # the folded convolutions ran, not conv + norm
    model.train()
    folded.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(folded(x), a)  # train mode: batch statistics, as before the fold


def test_fold_model_leaves_a_conv_with_another_user_and_a_norm_the_forward_reads():
    from ersm_surgery.sparse import fold_model

    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

            self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            z = self.bn3(self.conv3(y)) * self.bn3.weight.mean()  # the forward reads bn3's weight itself
            return self.bn(y) + y + self.bn2(self.conv2(y)) + z

    model = TwoUsers().eval()
    randomise_norms(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    assert fold_model(model) == 1  # conv2 -> bn2 only
    assert isinstance(model.bn, nn.BatchNorm2d) and type(model.conv) is nn.Conv2d
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_sparse_without_fold_keeps_the_dense_modules():
    from ersm_surgery.sparse.fold import FoldedConv

    model = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage"}, input_size=SIZE).eval()
    assert any(isinstance(m, FoldedConv) for m in ersm_surgery.sparse(model).modules())
    assert not any(isinstance(m, FoldedConv) for m in ersm_surgery.sparse(model, fold=False).modules())
    assert not any(isinstance(m, FoldedConv) for m in model.modules())  # the user's model is untouched


@pytest.mark.parametrize("ceil_mode,include_pad,padding", [(True, False, 0), (False, True, 0), (True, True, 1),
                                                            (False, False, 1)])
@pytest.mark.parametrize("rule", GATE_POOLS)
def test_avg_pool_on_rows_equals_dense_pool(ceil_mode, include_pad, padding, rule):
    x, mask, grids, rows = _rows(pool=rule)
    pool = nn.AvgPool2d(2 + padding, 2, padding, ceil_mode=ceil_mode, count_include_pad=include_pad)
    dense = pool(x)
    out = avg_pool_rows(pool, rows, grids)
    torch.testing.assert_close(out.dense(), dense * pool_mask(mask, dense.shape[-2:], rule), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", [
    (2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 1, True), (3, 2, 0, 2, True),
    (2, 1, 0, 1, False),
])
def test_max_pool_on_rows_equals_dense_pool(kernel, stride, padding, dilation, ceil_mode):
    from ersm_surgery.sparse.conv import max_pool_rows

    x, mask, grids, rows = _rows()
    x = x - 5 * mask  # kept values mostly negative: a switched-off token's zero, or a padded tap, would win the max
    rows = Rows(rows.grid.gather(x), rows.grid)
    pool = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    dense = pool(x)
    out = max_pool_rows(pool, rows, grids)
    torch.testing.assert_close(out.dense(), dense * pool_mask(mask, dense.shape[-2:]))


@pytest.mark.parametrize("op", [nn.Conv2d(6, 12, 3, 2, 1, groups=3), nn.Conv2d(6, 6, 3, 1, 1, groups=6),
                                nn.Conv2d(6, 12, 3, 2, 1), nn.AvgPool2d(2, 2), nn.MaxPool2d(3, 2, 1)])
def test_a_batch_with_every_token_off_gives_empty_rows_not_an_error(op):
    # every picture of the batch switched off at the stage's input: zero rows in, zero rows out, an all-zero map
    from ersm_surgery.sparse.conv import max_pool_rows

    mask = torch.zeros(2, 1, 9, 11)
    x = torch.randn(2, 6, 9, 11) * mask
    grids = GridSet(mask, "sample")
    grid = grids.at(9, 11)
    rows = Rows(grid.gather(x), grid)
    pool_rows = {nn.AvgPool2d: avg_pool_rows, nn.MaxPool2d: max_pool_rows}.get(type(op))
    out = pool_rows(op, rows, grids) if pool_rows else RowConv.from_module(op)(rows, grids)
    dense = op(x)
    assert out.data.shape == (0, dense.shape[1])
    assert torch.equal(out.dense(), torch.zeros_like(dense))


@pytest.mark.parametrize("groups", [1, 3, 6])
def test_group_norm_on_rows_equals_dense_group_norm(groups):
    # poolformer's GroupNorm1 (one group): each image's statistics over every token, the switched-off zeros counted
    x, mask, grids, rows = _rows(seed=3)
    norm = nn.GroupNorm(groups, 6)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    out = group_norm_rows(rows, groups, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(Rows(out, rows.grid).dense(), norm(x) * mask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [5, 1])
def test_segment_mean_and_per_image_operands(batch):
    x, mask, grids, rows = _rows(batch=batch)
    torch.testing.assert_close(segment_mean(rows, keepdim=True), x.mean((2, 3), keepdim=True))
    torch.testing.assert_close(segment_mean(rows, keepdim=False), x.mean((2, 3)))
    scale = torch.randn(batch, 6, 1, 1)  # squeeze-excite's per-image vector
    got = rows.like(rows.data * to_row_operand(scale, rows)).dense()
    torch.testing.assert_close(got, x * scale)
    gamma = torch.randn(6).reshape(1, -1, 1, 1)  # layer scale
    torch.testing.assert_close(rows.like(rows.data * to_row_operand(gamma, rows)).dense(), x * gamma)


def test_all_off_batch_gives_empty_rows():
    mask = torch.zeros(2, 1, 6, 6)
    grids = GridSet(mask)
    rows = Rows(grids.at(6, 6).gather(torch.randn(2, 4, 6, 6)), grids.at(6, 6))
    out = RowConv.from_module(nn.Conv2d(4, 5, 3, 2, 1))(rows, grids)
    assert out.data.shape == (0, 5) and torch.equal(out.dense(), torch.zeros(2, 5, 3, 3))
    assert out_size(6, 3, 2, 1, 1) == 3


FAMILIES = [
    ("test_resnet", (2, 3)),  # BasicBlock, downsample, resnet-d avg-pool shortcut
    ("resnet50d", (2, 3)),  # Bottleneck, avg-pool downsample
    ("test_convnext", (1, 2)),  # depthwise 7x7, LayerNorm, MLP, layer scale
    ("test_efficientnet", (2, 3)),  # depthwise, squeeze-excite, BatchNormAct2d
    ("mobilenetv3_small_050", (2, 3)),  # hard-swish, hard-sigmoid SE, regions of several blocks
    ("regnety_002", (2, 3)),  # grouped 3x3, SE
    ("resnext26ts", (1, 2)),  # grouped 3x3 bottleneck (byobnet)
    ("cspresnet50", (2, 3)),  # channel split into halves, cat
    ("ghostnet_100", (2, 3)),  # channel slices x[:, :c], cat
    ("densenet121", (2, 3)),  # dense blocks' channel cat, a traced BatchNormAct2d (F.batch_norm, x.shape)
    ("dla34", (2, 3)),  # Tree traced with shortcut=None, children=None fixed; roots' cat; max-pool downsample
    ("inception_v3", (2, 3)),  # branches pooled with F.avg_pool2d / F.max_pool2d (needs more than 64 px)
    ("poolformerv2_s12", (1, 2)),  # F.group_norm of one group (timm's GroupNorm1, traced), StarReLU's pow
]
FAMILY_SIZE = {"inception_v3": (3, 96, 96)}


def _sparse_against_dense(name, stages, size, pool="sample"):
    """(sparse regions, sparse logits, dense gated logits) of a model with chosen masks, sparse forced."""
    model = ersm_surgery.inject(name, stages=list(stages), config={"gate": "stage", "gate_pool": pool},
                                input_size=size).eval()
    randomise_norms(model)
    fix_masks(model)
    fast = ersm_surgery.sparse(model, break_even=1.0)
    x = torch.randn(4, *size)
    with torch.no_grad():
        dense, out = model(x), fast(x)
    regions = sparse_regions(fast)
    assert regions and all(r.stats.ran_sparse and r.pool == pool for r in regions.values())
    # float rounding, relative to the logits' size (random norm statistics grow dla's to ~250)
    torch.testing.assert_close(out, dense, atol=max(1e-4, 1e-5 * float(dense.abs().max())), rtol=1e-4)
    return regions


@pytest.mark.parametrize("name,stages", FAMILIES)
def test_sparse_model_equals_dense_gated_model(name, stages):
    regions = _sparse_against_dense(name, stages, FAMILY_SIZE.get(name, SIZE))
    assert all(r.dense_ops() == [] for r in regions.values()), {k: r.dense_ops() for k, r in regions.items()}


@pytest.mark.parametrize("name,stages", [("test_resnet", (2, 3)), ("test_efficientnet", (2, 3)), ("resnet26d", (1, 2))])
def test_sparse_model_equals_dense_gated_model_when_the_gate_pools_any(name, stages):
    _sparse_against_dense(name, stages, SIZE, pool="any")


def test_above_break_even_runs_dense_and_matches():
    model = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage"}, input_size=SIZE).eval()
    fast = ersm_surgery.sparse(model)  # a fresh mask keeps ~every token: above the break-even
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x))
    assert not sparse_regions(fast)["layer3"].stats.ran_sparse


@pytest.mark.parametrize("name,stages", [("test_resnet", (2,)), ("test_efficientnet", (2, 3))])
def test_dense_gated_path_runs_folded_and_matches(name, stages):
    from ersm_surgery.sparse.fold import FoldedConv

    model = ersm_surgery.inject(name, stages=list(stages), config={"gate": "stage"}, input_size=SIZE).eval()
    randomise_norms(model)
    fix_masks(model)  # some tokens off: the gated graph, not the graph without gates
    fast = ersm_surgery.sparse(model, break_even=0.0)
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    for region in sparse_regions(fast).values():
        assert not region.stats.ran_sparse
        assert any(isinstance(m, FoldedConv) for m in region._dense().modules())
        assert not any(isinstance(m, FoldedConv) for m in region.gated.modules())  # the row programs' source


def _layer3_swapped_and_checked(attribute: str, module: nn.Module):
    """test_resnet gated after stage 2 with ``layer3[0].<attribute>`` replaced; the sparse copy, checked equal."""
    import timm

    base = timm.create_model("test_resnet")
    setattr(base.layer3[0], attribute, module)
    model = ersm_surgery.inject(base, stages=[2], config={"gate": "stage"}, input_size=SIZE).eval()
    randomise_norms(model)
    fix_masks(model)
    fast = ersm_surgery.sparse(model, break_even=1.0)
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    return fast


def test_unknown_op_runs_dense_is_listed_and_changes_nothing():
    fast = _layer3_swapped_and_checked("act1", nn.Softmax2d())  # a module the runtime has no row form for
    assert sparse_regions(fast)["layer3"].dense_ops() == ["layer3.0.act1"]


class _SqueezeExcite(nn.Module):
    """A ReLU, then a squeeze-excite branch written one of the ways timm's models write it."""

    def __init__(self, channels: int, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce, self.expand = nn.Conv2d(channels, 8, 1), nn.Conv2d(8, channels, 1)
        self.norm = nn.BatchNorm2d(8).eval()
        randomise_norms(self.norm)

    def forward(self, x):
        x = torch.relu(x)
        if self.variant == "mean":  # efficientnet, mobilenetv3: x * gate(expand(act(reduce(mean))))
            return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(x.mean((2, 3), keepdim=True)))))
        if self.variant == "pool":  # the gate first, a method for the activation
            return self.expand(self.reduce(self.pool(x)).relu()).sigmoid() * x
        if self.variant == "functional":
            return x * nn.functional.hardsigmoid(self.expand(self.reduce(nn.functional.adaptive_avg_pool2d(x, 1))))
        # a norm inside the branch: not a chain the fused step takes; it runs node by node
        return x * torch.sigmoid(self.expand(self.norm(self.reduce(x.mean((2, 3), keepdim=True)))))


@pytest.mark.parametrize("variant,fused", [("mean", True), ("pool", True), ("functional", True), ("norm", False)])
def test_squeeze_excite_runs_as_one_step_on_rows(variant, fused):
    fast = _layer3_swapped_and_checked("act1", _SqueezeExcite(48, variant))
    region = sparse_regions(fast)["layer3"]
    program = next(iter(region._programs.values()))
    assert bool(program._squeeze_excites) == fused
    assert region.dense_ops() == []
    if fused:  # the branch's own nodes take no step
        se = next(iter(program._squeeze_excites.values()))
        assert len(program._program) < len(program.steps) - len(se.nodes) + 1


def test_a_squeeze_excite_step_on_a_dense_map_runs_its_own_nodes():
    fast = _layer3_swapped_and_checked("act1", _SqueezeExcite(48, "mean"))
    program = next(iter(sparse_regions(fast)["layer3"]._programs.values()))
    node, se = next(iter(program._squeeze_excites.items()))
    handler = dict(program.steps)[node]
    x = torch.relu(torch.randn(2, 48, 5, 5))
    with torch.no_grad():
        expected = fast.layer3.gated.get_submodule("0.act1")(x)  # the module itself: relu (idempotent) then the branch
        torch.testing.assert_close(handler([x], {}, None), expected)


class _FunctionalConv(nn.Conv2d):
    """A convolution fx traces through: ``F.conv2d`` on the module's own weight (a ``get_attr`` in the graph), as
    vgg's gated ``features.16`` becomes when it is a gated module by itself."""

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                          self.groups)


@pytest.mark.parametrize("kernel,padding,groups", [(3, 1, 1), (5, 2, 4), (3, 1, 48)])
def test_a_traced_functional_convolution_runs_on_rows(kernel, padding, groups):
    # in place of test_resnet's layer3.0.conv2 (48 -> 48 channels, stride 2)
    conv = _FunctionalConv(48, 48, kernel, 2, padding, groups=groups)
    fast = _layer3_swapped_and_checked("conv2", conv)
    assert sparse_regions(fast)["layer3"].dense_ops() == []


def test_sparse_from_a_loaded_export(tmp_path):
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], config={"gate": "stage"}, input_size=SIZE).eval()
    ersm_surgery.save(model, tmp_path / "m")
    loaded = ersm_surgery.load(tmp_path / "m").eval()
    fix_masks(loaded)
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ersm_surgery.sparse(loaded, break_even=1.0)(x), loaded(x), atol=1e-4, rtol=1e-4)


def test_models_that_cannot_run_sparsely_get_one_clear_error():
    import timm

    with pytest.raises(SparseError, match="no ERSM masks"):
        ersm_surgery.sparse(timm.create_model("test_resnet"))
    features = ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE)
    with pytest.raises(SparseError, match="mask.gate=features.*--set mask.gate=stage"):
        ersm_surgery.sparse(features)


def test_a_map_stacked_into_five_dimensions_is_refused_at_injection():
    # skresnet's selective kernel stacks its branches, (B, 2, C, H, W): the gate's (B, 1, H, W) mask broadcast
    # against it only at batch 1 and crashed at any other batch (found by benchmarks/bench_sparse_coverage.py)
    from ersm_surgery.errors import PlacementError

    with pytest.raises(PlacementError, match="'stack'.*use mask.gate=features"):
        ersm_surgery.inject("skresnet18", stages=[2, 3], config={"gate": "stage"}, input_size=SIZE)


def test_a_gate_on_a_channels_last_map_runs_sparse_and_matches():
    # tiny_vit gates channels-last maps inside its attention blocks: planning the gated graph read the kept
    # tokens as a channels-first map and refused the gate as mixing layouts, at the first sparse forward
    regions = _sparse_against_dense("tiny_vit_5m_224", (1, 2), SIZE)
    assert regions


def test_train_mode_runs_the_dense_gated_graph():
    model = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage"}, input_size=SIZE)
    fast = ersm_surgery.sparse(model).train()
    out = fast(torch.randn(2, *SIZE))
    out.sum().backward()
    assert not sparse_regions(fast)["layer3"].stats.ran_sparse


def test_evaluate_measures_sparse_latency_of_gated_models_only():
    from ersm_surgery.eval.compute import measure_sparse_latency

    x = torch.randn(2, *SIZE)
    gated = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage"}, input_size=SIZE).eval()
    features = ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE).eval()
    assert measure_sparse_latency(gated, x, repeats=1)["per_image_ms"] > 0
    assert measure_sparse_latency(features, x, repeats=1) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (not in CI)")
def test_sparse_runs_on_cuda():
    model = ersm_surgery.inject("test_efficientnet", stages=[2, 3], config={"gate": "stage"}, input_size=SIZE)
    model = model.eval().cuda()
    randomise_norms(model)
    fix_masks(model)
    x = torch.randn(4, *SIZE, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ersm_surgery.sparse(model, break_even=1.0)(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pool,expected", [("sample", 0.0), ("any", 1.0)])
def test_bench_reports_what_a_strided_gated_stage_computes_on_its_output_grid(pool, expected):
    from ersm_surgery.sparse.measure import kept_fractions, region_io

    model = ersm_surgery.inject("test_resnet", stages=[2], config={"gate": "stage", "gate_pool": pool},
                                input_size=SIZE).eval()
    fast = ersm_surgery.sparse(model, break_even=1.0)
    with torch.no_grad():
        _, inputs, sizes = region_io(fast, torch.randn(2, *SIZE))
        inp = inputs["layer3"]
        assert sizes["layer3"] == tuple(model.layer3(inp).shape[-2:])  # the region's own output grid
        # one kept token per 2 x 2 block, never the one a stride-2 sample reads
        kept = torch.zeros(inp.shape[-2:])
        kept[1::2, 1::2] = 1.0
        fractions = kept_fractions(inp * kept, sizes["layer3"], sparse_regions(fast)["layer3"].pool)
    assert fractions == (0.25, expected)


def test_the_row_program_reads_values_inside_nested_arguments_and_slices():
    from torch import fx

    from ersm_surgery.sparse.executor import _reader

    graph = fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    slots, vals = {a: 0, b: 1}, [10, 3]
    template = (a, [b, 2], {"k": b}, slice(None, b), (1, (a,)))
    assert _reader(template, slots)(vals) == (10, [3, 2], {"k": 3}, slice(None, 3), (1, (10,)))
    assert _reader((1, slice(0, 2)), slots)(vals) == (1, slice(0, 2))


def test_identities_take_no_step_and_a_dropout_that_drops_keeps_its_own():
    fast = _layer3_swapped_and_checked("drop_block", nn.Dropout(0.5))  # the identity in eval only: keeps its step
    program = next(iter(sparse_regions(fast)["layer3"]._programs.values()))
    identities = [n.target for n in program.graph.nodes if n.op == "call_module"
                  and isinstance(program.module.get_submodule(n.target), nn.Identity)]
    # a folded norm with nothing after its affine map, and a ReLU computed by the convolution, take none either
    folded_plain = [n for n in program._folded if n not in program._fused
                    and type(program.module.get_submodule(n.target)) is nn.BatchNorm2d]
    # every other node but the output has a slot of its own: the dropout of p 0.5 too
    assert identities and "0.drop_block" not in identities
    assert len(program._program) + len(program._constants) + len(program._inputs) \
        == len(list(program.graph.nodes)) - 1 - len(identities) - len(folded_plain) - len(program._fused)


def test_an_activation_after_a_folded_norm_runs_in_the_convolution_on_rows_and_densely():
    region = _sparse_against_dense("resnet26d", (1, 2), SIZE)["layer2"]
    program = next(iter(region._programs.values()))
    fused = {n.target for n in program._fused}
    assert {"0.act1", "0.act2", "1.act1", "1.act2"} <= fused  # conv -> bn -> (drop_block) -> act
    assert not any(t.endswith("act3") for t in fused)  # after the residual add: a step of its own
    step_targets = {n.target for n, handler in program.steps if any(h is handler for _, h, _, _ in program._program)}
    assert not fused & step_targets
    # a convolution that gets a dense map (its operand not rows) computes the norm and the ReLU densely too
    conv_node = next(n for n in program.graph.nodes if n.target == "1.conv1")
    handler = dict(program.steps)[conv_node]
    block = region.gated.get_submodule("1")
    dense_in = torch.randn(2, block.conv1.in_channels, 4, 4)
    with torch.no_grad():
        expected = block.act1(block.bn1(block.conv1(dense_in)))
        torch.testing.assert_close(handler([dense_in], {}, None), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,stages,act", [("test_efficientnet", (2, 3), nn.SiLU),
                                             ("mobilenetv3_small_050", (2, 3), nn.Hardswish)])
def test_silu_and_hard_swish_of_a_batchnorm_act_run_in_the_convolution(name, stages, act):
    from ersm_surgery.sparse.fold import AfterFold

    regions = _sparse_against_dense(name, stages, SIZE)  # the whole model still equals the dense gated one
    fused = [AfterFold(p.module.get_submodule(n.target)).act for r in regions.values() for p in r._programs.values()
             for n in p._fused if n in p._folded]
    assert fused and any(type(a) is act for a in fused)


@pytest.mark.parametrize("path", ["taps", "dense"])
@pytest.mark.parametrize("name,stages", [("test_efficientnet", (2, 3)), ("test_convnext", (1, 2))])
def test_whole_models_equal_the_dense_gated_model_on_either_depthwise_path(name, stages, path, monkeypatch):
    # the cost rule sends a tiny test model's depthwise convolutions dense: the taps get their whole-model check here
    monkeypatch.setattr(sparse_conv, "DEPTHWISE_PATH", path)
    _sparse_against_dense(name, stages, SIZE)


def test_the_depthwise_cost_rule_weighs_the_per_tap_cost_against_the_dense_kernel():
    def picks_dense(batch, channels, side, kernel, stride, density):
        mask = torch.zeros(batch * side * side)
        mask[torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(0))[:int(density * mask.numel())]] = 1
        grids = GridSet(mask.reshape(batch, 1, side, side))
        conv = RowConv.from_module(nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels))
        src = grids.at(side, side)
        return conv._dense_is_cheaper(conv.out_grid(src, grids), src)

    # batch 1, efficientnet_b0's 5x5 on 7 x 7: 25 taps of a few rows cost more than the dense kernel
    assert picks_dense(1, 672, 7, 5, 1, 0.4)
    # a 3x3 on a large map of which a fifth is kept: the taps read far less than the dense kernel
    assert not picks_dense(1, 144, 56, 3, 2, 0.2)
    # batch 16: a strided 5x5 at 0.2 on taps, a 7x7 at 0.4 dense (at scale the gathered work decides)
    assert not picks_dense(16, 672, 14, 5, 2, 0.2)
    assert picks_dense(16, 320, 14, 7, 1, 0.4)


def test_interleaved_timings_reverse_the_order_every_other_repetition():
    from ersm_surgery.sparse.measure import interleaved_samples

    seen: list[str] = []
    samples = interleaved_samples({k: (lambda k=k: seen.append(k)) for k in "abc"}, repeat=4, warmup=1)
    assert seen == list("abc" + "abc" + "cba" + "abc" + "cba")  # the warm-up, then the four repetitions
    assert all(len(s["wall_s"]) == 4 for s in samples.values())
