"""Does each mask reach the model's output? A mask that does not would never learn: refused at injection.

A stage's output can be computed and then dropped (a branch the classifier never reads; EfficientViM's stages
return their feature map beside the downsampled input of the next stage, and the model keeps only the
latter), so the mask after it changes nothing downstream and its energy regularizer alone would drive it
shut. A node inside the stage (``--nodes stages.0.blocks.1.add``) reaches the output. One train-mode forward
and backward on a random image (norm layers at their running statistics, RNG state restored) finds the
masks whose parameters autograd never reaches.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PlacementError
from ._tracer import training_mode
from .placement import Placement

__all__ = ["unreached_masks", "check_masks_reach_output"]


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensors(item)]
    return []


def unreached_masks(model: nn.Module, masks: dict[str, nn.Module], input_size: tuple[int, int, int]) -> list[str]:
    """Names (keys of ``masks``) of the mask layers whose parameters the model's output does not depend on
    (no gradient, or an all-zero one, on a random image)."""
    params = {name: [p for p in layer.parameters() if p.requires_grad] for name, layer in masks.items()}
    flat = [p for ps in params.values() for p in ps]
    if not flat:
        return []
    device = flat[0].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), training_mode(model, True):
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.Dropout)):
                m.eval()  # batch statistics of one image are not what is asked; restored on exit
        torch.manual_seed(0)
        outputs = _tensors(model(torch.randn(1, *input_size, device=device)))
        total = sum(o.float().sum() for o in outputs if o.is_floating_point())
        if not isinstance(total, torch.Tensor) or not total.requires_grad:
            return list(masks)
        grads = torch.autograd.grad(total, flat, allow_unused=True)
    # None: not in the graph at all; all zeros: in it, but cut off (CoaT's last parallel block: only its class
    # tokens reach the head, and the mask passes class tokens through unmasked)
    reached = {id(p) for p, g in zip(flat, grads, strict=True) if g is not None and bool(g.abs().sum() > 0)}
    return [name for name, ps in params.items() if not any(id(p) in reached for p in ps)]


def check_masks_reach_output(model: nn.Module, placements: list[Placement], masks: dict[str, nn.Module],
                             input_size: tuple[int, int, int]) -> None:
    """Raise PlacementError naming the first placement whose mask does not reach the model's output."""
    dead = set(unreached_masks(model, masks, input_size))
    for p in placements:
        if p.path in dead:
            raise PlacementError(f"the output of {p.label} does not reach the model's output, so a mask there "
                                 "would never learn", "mask a node inside it with --nodes (list them: ersm-surgery "
                                 "inspect MODEL --all-nodes), or choose another stage")
