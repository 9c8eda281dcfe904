"""Residual adds written in place in the dense eval graphs of a sparse model (sparse.inplace)."""
import pytest
import torch
from torch import fx, nn

import ersm_surgery
from ersm_surgery.sparse.inplace import add_into_first, adds_in_place
from ersm_surgery.surgery.graph_module import DualGraphModule
from tests.sparse_helpers import fix_masks, randomise_norms

SIZE = (3, 64, 64)


class Block(nn.Module):
    """A residual block whose adds read: a fresh map (converted), the input, a map read twice, a view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.drop(self.bn(self.conv(x))) + x  # fresh, passed on by dropout: in place
        y = self.act(y)
        z = x + y  # the input: never written
        w = self.conv(z)
        v = w + w.sum()  # w is read twice: out of place
        flat = z.flatten(1)
        u = flat + 1.0  # a view of z, which is read below
        return v, u, z


def _traced_eval(module: nn.Module) -> fx.GraphModule:
    module.eval()
    return fx.symbolic_trace(module)


def test_only_an_add_whose_first_operand_nothing_else_reads_is_written_in_place():
    torch.manual_seed(0)
    block = Block()
    graph_module = _traced_eval(block)
    assert adds_in_place(graph_module, graph_module.graph) == 1
    graph_module.recompile()
    converted = [n for n in graph_module.graph.nodes if n.target is add_into_first]
    assert [n.args[1].op for n in converted] == ["placeholder"]  # the first add, whose shortcut is x
    x = torch.randn(2, 4, 6, 6)
    kept = x.clone()
    with torch.no_grad():
        expected = block(x)
        got = graph_module(x)
    assert torch.equal(x, kept)  # the input is never written
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


def test_add_into_first_falls_back_to_a_new_tensor_when_writing_would_change_anything():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        out = add_into_first(a, b)
        assert out.data_ptr() == a.data_ptr()
        small = torch.randn(1, 3, 1, 1)
        assert add_into_first(small, b).shape == (2, 3, 4, 4)  # broadcasts beyond a: a new tensor
        ints = torch.ones(2, 3, dtype=torch.int64)
        assert add_into_first(ints, torch.full((2, 3), 0.5)).dtype == torch.float32  # promotes: a new tensor
        expanded = torch.randn(3, 1).expand(3, 4)
        before = expanded.clone()
        assert torch.equal(add_into_first(expanded, torch.ones(3, 4)), before + 1) and torch.equal(expanded, before)
    leaf = torch.randn(2, 3, requires_grad=True)
    x = leaf * 2
    y = add_into_first(x, torch.ones(2, 3))
    assert y.data_ptr() != x.data_ptr()  # autograd records it: out of place
    y.sum().backward()
    assert torch.equal(leaf.grad, torch.full((2, 3), 2.0))


@pytest.mark.parametrize("name,stages", [("test_resnet", (1, 2)), ("test_convnext", (1, 2))])
def test_sparse_writes_the_residual_adds_of_its_own_graphs_only(name, stages):
    model = ersm_surgery.inject(name, stages=list(stages), config={"gate": "stage"}, input_size=SIZE).eval()
    randomise_norms(model)
    fix_masks(model)
    fast = ersm_surgery.sparse(model, break_even=1.0)

    def converted(m):
        return sum(n.target is add_into_first for g in m.modules() if isinstance(g, DualGraphModule)
                   for n in g.eval_graph.nodes)

    assert converted(fast) > 0 and converted(model) == 0  # the user's model keeps its graphs
    x = torch.randn(3, *SIZE)
    kept = x.clone()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    assert torch.equal(x, kept)
    fast.train()  # train mode computes as the model does, its graphs untouched
    assert all(n.target is not add_into_first for g in fast.modules() if isinstance(g, DualGraphModule)
               for n in g.train_graph.nodes)
