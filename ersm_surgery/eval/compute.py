"""What a forward pass costs: dense FLOPs, a theoretical conditional estimate, and measured latency.

Dense FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (one image; matrix products
and convolutions, counted as multiply + add = 2 FLOPs).

The *conditional* FLOPs estimate what a sparse-aware runtime could spend if it computed only the
kept tokens, as in DynConv-style accounting. It is theoretical: PyTorch multiplies by the mask and
computes every token, which the measured latency beside it shows. The estimate:

- FlopCounterMode's module hierarchy gives each module's FLOPs; a module's *own* FLOPs are its total
  minus those of the modules below it.
- Forward pre-hooks record, for every module, the Energy-Mask that ran last before it (the nearest
  upstream mask in execution order) and whether its input is spatial: a (B, C, H, W) map with
  H*W > 1, or a (B, N, C) token sequence with N > 1 (token models masked through an adapter).
- A module with an upstream mask and a spatial input counts at the kept fraction (the mean hard-mask
  density of that mask over the evaluated images); every other module counts in full, as do the
  masks' own heads (they score every token) and everything before the first mask.

For a ``mask.gate=stage`` model the latency of ``ersm_surgery.sparse(model)`` is measured beside it:
what the gated stages cost when they compute the kept tokens only (docs/sparse.md).

The estimate ignores the growth of the active region through k x k convolutions (it is optimistic for
3x3 convolutions right after a sparse mask), counts a strided convolution at its input's density, and
scales attention linearly although its cost grows with the square of the token count.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers import EnergyMask

__all__ = ["flop_breakdown", "conditional_flops", "measure_latency", "measure_sparse_latency"]


def _is_spatial(args: tuple) -> bool:
    """A (B, C, H, W) map with H*W > 1, or a (B, N, C) token sequence with N > 1."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return False
    if x.dim() == 4:
        return x.shape[-1] * x.shape[-2] > 1
    return x.dim() == 3 and x.shape[1] > 1


def _own_flops(counts: Mapping[str, Mapping], root: str) -> dict[str, int]:
    """Module path (without the root class name) -> FLOPs not attributed to any module below it."""
    totals = {k: sum(v.values()) for k, v in counts.items() if k != "Global"}
    own = dict(totals)
    for key in totals:
        # the nearest recorded ancestor (a DualGraphModule calls its grandchildren directly)
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            parent = ".".join(parts[:cut])
            if parent in totals:
                own[parent] -= totals[key]
                break
    prefix = root + "."
    return {(k[len(prefix):] if k.startswith(prefix) else ("" if k == root else k)): v for k, v in own.items()}


def flop_breakdown(model: nn.Module, example: torch.Tensor) -> dict:
    """FLOPs per module for one image, with each module's nearest upstream mask and input layout.

    Args:
        model: the network, in eval mode.
        example: (1, C, H, W) input.

    Returns:
        ``{"total": int, "modules": {path: {"flops": int, "mask": str | None, "spatial": bool}},
        "mask_flops": {mask path: int}}``; FLOPs of functions outside any module sit under ``""``.
    """
    names = {m: name for name, m in model.named_modules()}
    masks = {m for m in names if isinstance(m, EnergyMask)}
    seen: dict[str, dict] = {}
    current: list[str | None] = [None]
    handles = []

    def pre(module, args):
        name = names[module]
        if name not in seen:
            seen[name] = {"mask": current[0], "spatial": _is_spatial(args)}

    def post(module, _args, _out):
        current[0] = names[module]

    for m in names:
        handles.append(m.register_forward_pre_hook(pre))
        if m in masks:
            handles.append(m.register_forward_hook(post))
    try:
        with FlopCounterMode(display=False, depth=None) as counter, torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    own = _own_flops(counter.get_flop_counts(), type(model).__name__)
    modules = {}
    for path, flops in own.items():
        info = seen.get(path, {"mask": None, "spatial": False})
        modules[path] = {"flops": int(flops), **info}
    mask_flops = {}
    for m in masks:
        path = names[m]
        mask_flops[path] = sum(v["flops"] for k, v in modules.items() if k == path or k.startswith(path + "."))
    return {"total": int(counter.get_total_flops()), "modules": modules, "mask_flops": mask_flops}


def conditional_flops(breakdown: dict, density: Mapping[str, float]) -> dict:
    """The theoretical conditional FLOPs (see the module docstring) from mean mask densities.

    Args:
        breakdown: :func:`flop_breakdown`'s result.
        density: mask path -> mean kept fraction of its hard mask.

    Returns:
        ``{"dense": int, "conditional": float, "ratio": conditional / dense, "masks": int (the masks'
        own FLOPs, counted in full), "scaled": {mask path: dense FLOPs of the modules it gates}}``.
    """
    mask_paths = set(breakdown["mask_flops"])
    conditional = 0.0
    scaled: dict[str, int] = {}
    for path, info in breakdown["modules"].items():
        flops = info["flops"]
        inside_mask = any(path == m or path.startswith(m + ".") for m in mask_paths)
        mask = info["mask"]
        if mask is not None and info["spatial"] and not inside_mask and mask in density:
            conditional += flops * float(density[mask])
            scaled[mask] = scaled.get(mask, 0) + flops
        else:
            conditional += flops
    dense = breakdown["total"]
    return {
        "dense": dense,
        "conditional": conditional,
        "ratio": conditional / dense if dense else float("nan"),
        "masks": int(sum(breakdown["mask_flops"].values())),
        "scaled": scaled,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(model: nn.Module, batch: torch.Tensor, repeats: int = 5, warmup: int = 1) -> dict:
    """Median wall time of ``model(batch)`` under no_grad, after ``warmup`` untimed calls.

    Returns:
        ``{"batch_ms": float, "per_image_ms": float, "batch_size": int, "repeats": int}``.
    """
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _sync(batch.device)
            start = time.perf_counter()
            model(batch)
            _sync(batch.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    ms = 1000.0 * statistics.median(times)
    return {"batch_ms": ms, "per_image_ms": ms / batch.shape[0], "batch_size": int(batch.shape[0]),
            "repeats": int(repeats)}


def measure_sparse_latency(model: nn.Module, batch: torch.Tensor, repeats: int = 5, warmup: int = 1) -> dict | None:
    """:func:`measure_latency` of ``ersm_surgery.sparse(model)``; None for a model whose masks gate no stage."""
    from ..errors import SparseError
    from ..sparse import sparse

    recipe = getattr(model, "ersm_recipe", None)
    if recipe is None or recipe.mask.gate != "stage":
        return None
    try:
        fast = sparse(model)
    except SparseError:
        return None
    return measure_latency(fast, batch, repeats, warmup)
