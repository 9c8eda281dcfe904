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
    """Names (keys of ``masks``) of the mask layers whose masked map the model's output does not depend on.

    The test is on the map the mask puts out (its (B, C, H, W) view), not on the mask's parameters: an open
    mask's sigmoid may saturate, which zeroes the parameters' task gradient at the start without the map
    being cut off; and parameters that are all zeros (zero-initialised heads) are made small and random
    for the probe, then zeroed again, since they would hide every path behind them. No gradient (not in the
    graph) or an all-zero one (cut off: CoaT's last parallel block, where only class tokens, which a mask
    passes through, reach the head) means unreached.
    """
    from ..layers import EnergyMask
    from ..layers.heads import RunningLogNorm

    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in masks}
    handles = []
    for name, layer in masks.items():
        for m in layer.modules():
            if isinstance(m, EnergyMask):
                handles.append(m.register_forward_hook(
                    lambda _m, _args, out, name=name: outputs[name].append(out)))
    # the masks run soft (q > 0 on every token): a mask that starts with some tokens off (a magnitude prior) may
    # switch off all of a small map, which under mask.gate=stage zeroes the next stage and every gradient through
    # it, and the check would call a mask unreached that reaches the output; restored on exit
    energy_masks = [m for layer in masks.values() for m in layer.modules() if isinstance(m, EnergyMask)]
    train_modes = [(m.config, m.config.train_mode) for m in energy_masks]
    # a zero-initialised tensor (Hiera's classifier, residual branches' last norm) would zero every gradient
    # before it: for this structural question such tensors hold small random values, then zeros again
    mask_params = {id(p) for layer in masks.values() for p in layer.parameters()}
    zeros = [p for p in model.parameters() if id(p) not in mask_params and p.numel() and not bool(p.detach().any())]
    try:
        for m in energy_masks:
            m.config.train_mode = "soft"
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), training_mode(model, True):
            for m in model.modules():
                if isinstance(m, (nn.modules.batchnorm._NormBase, nn.Dropout, RunningLogNorm)):
                    m.eval()  # batch statistics of one random image are not what is asked, nor kept; restored on exit
            torch.manual_seed(0)
            with torch.no_grad():
                for p in zeros:
                    p.normal_(0.0, 0.02)
            out = _tensors(model(torch.randn(1, *input_size, device=device)))
            # a random projection, not a plain sum: the sum of a LayerNorm's output (a headless model's
            # features, Qwen3-ViT's) does not depend on its input, so its gradient is zero everywhere
            total = sum((o.float() * torch.randn_like(o, dtype=torch.float32)).sum()
                        for o in out if o.is_floating_point())
            flat = [(name, t) for name, ts in outputs.items() for t in ts if t.requires_grad]
            if not isinstance(total, torch.Tensor) or not total.requires_grad or not flat:
                return list(masks)  # the output depends on no masked map at all
            grads = torch.autograd.grad(total, [t for _, t in flat], allow_unused=True)
    finally:
        for config, mode in reversed(train_modes):
            config.train_mode = mode
        with torch.no_grad():
            for p in zeros:
                p.zero_()
        for h in handles:
            h.remove()
    reached = {name for (name, _), g in zip(flat, grads, strict=True) if g is not None and bool(g.abs().sum() > 0)}
    return [name for name in masks if name not in reached]


def check_masks_reach_output(model: nn.Module, placements: list[Placement], masks: dict[str, nn.Module],
                             input_size: tuple[int, int, int]) -> None:
    """Raise PlacementError naming the first placement whose mask does not reach the model's output."""
    dead = set(unreached_masks(model, masks, input_size))
    for p in placements:
        if p.path in dead:
            raise PlacementError(f"the output of {p.label} does not reach the model's output, so a mask there "
                                 "would never learn", "mask a node inside it with --nodes (list them: ersm-surgery "
                                 "inspect MODEL --all-nodes), or choose another stage")
