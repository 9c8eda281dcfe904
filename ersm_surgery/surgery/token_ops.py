"""Which ops of a gated stage read only their own token, and which of those keep a zero token zero.

The stage gate (``surgery.gating``) must zero the switched-off tokens of every map that an op reading
*other* tokens consumes (a k x k or strided convolution, a pool, a spatial mean, an op it does not know)
and of the stage's output. Token-wise ops in between (BatchNorm, activations, 1x1 convolutions, norms
over channels, adds) never carry a value from one token to another, so what they hold at switched-off
tokens reaches no kept token; a gate after each of them would multiply for nothing. An op is:

- ``ZERO``: token-wise and zero at a token whose inputs are all zero there (ReLU, GELU, a 1x1
  convolution without bias, a product, a sum of such maps);
- ``LOCAL``: token-wise, but it may make a zero token non-zero (BatchNorm's shift, a bias, sigmoid);
- ``MIXING``: anything else (it reads other tokens, or is unknown): its spatial inputs are gated.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["ZERO", "LOCAL", "MIXING", "op_class"]

ZERO, LOCAL, MIXING = "zero", "local", "mixing"

_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish,
                 nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d)
_LOCAL_MODULES = (nn.BatchNorm2d, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LayerNorm, nn.PReLU)
_ZERO_FUNCTIONS = {F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, F.mish, F.hardtanh, F.tanh,
                   torch.relu, torch.tanh, torch.mul, operator.mul, operator.imul, operator.neg, torch.neg,
                   torch.permute}
_ZERO_METHODS = {"relu", "relu_", "tanh", "mul", "mul_", "neg", "contiguous", "permute", "float", "to"}
_LOCAL_FUNCTIONS = {F.sigmoid, torch.sigmoid, F.hardsigmoid, F.layer_norm, F.softplus, torch.exp, F.prelu}
_LOCAL_METHODS = {"sigmoid", "sigmoid_", "exp"}
_SUMS = {operator.add, operator.iadd, operator.sub, torch.add, torch.sub, "add", "add_", "sub", "sub_"}


def _module_class(module: nn.Module) -> str:
    name = type(module).__name__
    if name in ("DropPath", "DropBlock2d"):
        return ZERO
    if name == "LayerNorm2d":
        return LOCAL
    if type(module).__module__.startswith("timm.layers.activations"):
        return MIXING if "GLU" in name else LOCAL  # timm's activations: token-wise; not all keep zero
    if isinstance(module, _ZERO_MODULES):
        return ZERO
    if isinstance(module, _LOCAL_MODULES):
        return LOCAL
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.stride == (1, 1) \
            and module.padding in ((0, 0), 0) and module.padding_mode == "zeros":
        return ZERO if module.bias is None else LOCAL
    if isinstance(module, nn.Linear):  # on a channels-last map; on NCHW it would mix columns
        return ZERO if module.bias is None else LOCAL
    return MIXING


def op_class(node: fx.Node, owner: nn.Module, spatial: set[fx.Node], channels_last: bool) -> str:
    """The class of ``node``; ``spatial`` are the graph's spatial-map nodes, ``channels_last`` its layout."""
    if node.op == "call_module":
        module = owner.get_submodule(node.target)
        if isinstance(module, nn.Linear) and not channels_last:
            return MIXING
        return _module_class(module)
    target = node.target
    method = node.op == "call_method"
    if target in _SUMS:
        # a sum of maps stays zero; a sum with a constant or a per-image term does not
        operands = [a for a in (*node.args, *node.kwargs.values()) if not (isinstance(a, (int, float)) and a == 0)]
        return ZERO if all(isinstance(a, fx.Node) and a in spatial for a in operands) else LOCAL
    if (method and target in _ZERO_METHODS) or (not method and target in _ZERO_FUNCTIONS):
        return ZERO
    if (method and target in _LOCAL_METHODS) or (not method and target in _LOCAL_FUNCTIONS):
        return LOCAL
    return MIXING
