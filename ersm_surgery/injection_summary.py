"""Numbers that describe an injection: parameter overhead, where masks sit, function preservation."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .io.source import recipe_of
from .mask_set import masks
from .surgery import training_mode

__all__ = ["describe_injection", "preservation"]


def preservation(original: nn.Module, masked: nn.Module, inputs: torch.Tensor) -> dict[str, float]:
    """Max |logit difference| and top-1 agreement of two models in eval mode on the same inputs."""
    with training_mode(original, False), training_mode(masked, False), torch.no_grad():
        a, b = original(inputs), masked(inputs)
    return {
        "max_logit_diff": float((a - b).abs().max()),
        "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
        "check_inputs": int(inputs.shape[0]),
    }


def describe_injection(original: nn.Module, masked: nn.Module, num_inputs: int = 8) -> dict[str, Any]:
    """Before/after parameters, one row per mask layer, and :func:`preservation` on random inputs."""
    recipe = recipe_of(masked)
    layers = masks(masked)
    rows = []
    by_path = dict(layers.items())
    for p in recipe.placements:
        layer = by_path.get(p.path)
        rows.append({
            "path": p.path, "anchor": p.label, "stage": p.stage, "node": p.node, "module": p.module,
            "method": p.method, "channels": p.channels, "reduction": p.reduction, "hidden": p.hidden,
            "params": sum(t.numel() for t in layer.parameters()) if layer is not None else 0,
        })
    inputs = torch.randn(num_inputs, *recipe.input_size)
    return {
        "model": recipe.model,
        "params_before": sum(t.numel() for t in original.parameters()),
        "params_after": sum(t.numel() for t in masked.parameters()),
        "masks": rows,
        **preservation(original, masked, inputs),
        "recipe": recipe.to_dict(),
    }
