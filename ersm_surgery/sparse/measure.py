"""Dense against sparse, measured side by side: what ``ersm-surgery bench`` and benchmarks/bench_sparse.py report.

The dense reference is the original timm model without masks (the model a user would deploy
otherwise), with the masked model's weights; beside it the same timm model with the rewrites ``sparse`` also
makes to the dense parts (:func:`~.model.rewrite_dense`: BatchNorms folded, max pools channels-last), so the
share of the speed-up that the mask buys is shown apart from the share those rewrites alone would give;
exactness is measured against the masked model computed densely, beside that dense model's own float32
error (its logits against the same model in float64): a difference is only small or large relative to the
rounding the dense computation already has. Timings interleave dense and sparse calls on the same input
after a warm-up and report the median wall time and the median process CPU time of each.
"""
from __future__ import annotations

import copy
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..layers.gate import kept_tokens, pool_mask
from ..mask_set import masks
from ..surgery.placement import is_mask_key
from .model import DEFAULT_BREAK_EVEN, SparseRegion, rewrite_dense, sparse, sparse_regions

__all__ = ["plain_model", "interleaved", "interleaved_samples", "paired_ratio", "region_io", "region_inputs",
           "kept_fractions", "measure_batch"]


def plain_model(model: nn.Module) -> nn.Module:
    """The timm model the masked ``model`` was made from, with its weights and no masks."""
    from ..models import create_base_model
    from ..recipe import RECIPE_ATTR

    recipe = getattr(model, RECIPE_ATTR)
    base = create_base_model(recipe.model, num_classes=recipe.num_classes, **recipe.model_kwargs)
    base.load_state_dict({k: v for k, v in model.state_dict().items() if not is_mask_key(k)})
    return base.eval()


def interleaved_samples(calls: dict[str, Callable[[], Any]], repeat: int,
                        warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of every repetition of each call, the calls alternating within every repetition
    (the i-th samples of two calls share the machine's state: pair them for ratios), in reverse order every other
    repetition: a call's time depends on what ran just before it (two sparse models of efficientnet_b0 timed
    always in one order differed by 5% either way, by which came second; 2026-12-05)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, dict[str, list[float]]] = {k: {"wall_s": [], "cpu_s": []} for k in calls}
    for rep in range(repeat):
        for name, fn in (calls.items() if rep % 2 == 0 else reversed(calls.items())):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            samples[name]["wall_s"].append(time.perf_counter() - t0)
            samples[name]["cpu_s"].append(time.process_time() - c0)
    return samples


def interleaved(calls: dict[str, Callable[[], Any]], repeat: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each call, the calls alternating within every repetition."""
    return _medians(interleaved_samples(calls, repeat, warmup))


def _medians(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {k: {key: statistics.median(v) for key, v in s.items()} for k, s in samples.items()}


def paired_ratio(slow: list[float], fast: list[float], draws: int = 2000) -> tuple[float, float, float]:
    """Median of the paired ratios ``slow[i] / fast[i]`` and a 95% bootstrap interval of that median (seeded:
    the same samples give the same interval)."""
    ratios = [a / b for a, b in zip(slow, fast, strict=True)]
    gen = random.Random(0)
    meds = sorted(statistics.median(gen.choices(ratios, k=len(ratios))) for _ in range(draws))
    return statistics.median(ratios), meds[int(0.025 * draws)], meds[int(0.975 * draws) - 1]


def region_io(fast: nn.Module, x: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor], dict[str, tuple[int, int]]]:
    """One forward of ``fast`` (a ``sparse(model)``) on ``x``: its output, the input each sparse region sees and
    the (h, w) grid of each region's output, by region path."""
    inputs: dict[str, torch.Tensor] = {}
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for path, region in sparse_regions(fast).items():
        hooks.append(region.register_forward_pre_hook(lambda mod, args, path=path: inputs.__setitem__(path, args[0])))
        hooks.append(region.register_forward_hook(
            lambda mod, args, out, path=path: sizes.__setitem__(path, tuple(out.shape[-2:]))))
    try:
        out = fast(x)
    finally:
        for h in hooks:
            h.remove()
    return out, inputs, sizes


def region_inputs(fast: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each sparse region of ``fast`` (a ``sparse(model)``) sees on ``x``, by region path."""
    return region_io(fast, x)[1]


def kept_fractions(inp: torch.Tensor, size: tuple[int, int], rule: str) -> tuple[float, float]:
    """The kept fraction of a gated region's input grid (what its masks kept) and of its (h, w) output grid
    under the gate's rule (``mask.gate_pool``).

    A stage whose first block is strided does nearly all its work on the output grid: under ``sample`` it
    keeps about what its input keeps, under ``any`` a coarse token is computed when any token of its stride
    block is kept, so more.
    """
    keep = kept_tokens(inp)
    return float(keep.mean()), float(pool_mask(keep, size, rule).mean())


def _sparse_flop_share(model: nn.Module, regions: dict[str, SparseRegion], x: torch.Tensor) -> float | None:
    """Share of the gated modules' dense FLOPs in ops that ran on rows (not in any region's dense list)."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    counts = {name.partition(".")[2]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = sum(counts.get(path, 0) for path in regions)
    if not total:
        return None
    dense = sum(counts.get(name, 0) for r in regions.values() for name in r.dense_ops())
    return 1.0 - dense / total


def float32_error(model: nn.Module, x: torch.Tensor, reference: torch.Tensor) -> float:
    """Max |logit| difference of ``model``'s float32 output ``reference`` against the model in float64."""
    if reference.dtype != torch.float32:
        return float("nan")
    wide = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return float((wide(x.double()) - reference.double()).abs().max())


def measure_batch(model: nn.Module, x: torch.Tensor, repeat: int = 10, warmup: int = 2,
                  break_even: float = DEFAULT_BREAK_EVEN, base: nn.Module | None = None) -> dict[str, Any]:
    """Whole-model and gated-stage latency, dense timm model against ``sparse(model)``, on one batch.

    Returns:
        ``{"batch", "density": {mask: mean kept fraction}, "computed_density": {gated region: kept fraction
        of its input, what it computes}, "computed_output_density": {gated region: kept fraction of its output
        grid under the gate's rule}, "dense"/"dense_folded"/"sparse": {"wall_s", "cpu_s"},
        "speedup" (over timm), "speedup_over_folded" (over timm with the same dense rewrites: BatchNorms folded,
        max pools channels-last), each also as
        "..._interval": [median paired ratio, 95% low, 95% high],
        "stages": {"dense"/"sparse", "speedup", "speedup_interval"}, "max_abs_logit_diff", "max_abs_logit",
        "dense_float32_error", "ran_sparse": {region: bool}, "dense_ops", "sparse_flop_share"}``.
    """
    model = model.eval()
    base = base if base is not None else plain_model(model)
    folded = copy.deepcopy(base)
    rewrite_dense(folded)
    fast = sparse(model, break_even=break_even)
    regions = sparse_regions(fast)
    with torch.no_grad():
        reference = model(x)
        density = {name: float(d.mean()) for name, d in masks(model).density().items()}
        out, inputs, sizes = region_io(fast, x)
        fractions = {path: kept_fractions(inp, sizes[path], regions[path].pool) for path, inp in inputs.items()}
        computed = {path: f[0] for path, f in fractions.items()}
        computed_output = {path: f[1] for path, f in fractions.items()}
        samples = interleaved_samples({"dense": lambda: base(x), "dense_folded": lambda: folded(x),
                                       "sparse": lambda: fast(x)}, repeat, warmup)
        whole = _medians(samples)
        walls = {k: s["wall_s"] for k, s in samples.items()}

        def dense_stages():
            for path, inp in inputs.items():
                base.get_submodule(path)(inp)

        def sparse_stages():
            for path, inp in inputs.items():
                regions[path](inp)
        stage_samples = interleaved_samples({"dense": dense_stages, "sparse": sparse_stages}, repeat, warmup)
        stages = _medians(stage_samples)
        share = _sparse_flop_share(model, regions, x)
    return {
        "batch": int(x.shape[0]),
        "density": density,
        "computed_density": computed,
        "computed_output_density": computed_output,
        "dense": whole["dense"],
        "dense_folded": whole["dense_folded"],
        "sparse": whole["sparse"],
        "speedup": whole["dense"]["wall_s"] / whole["sparse"]["wall_s"],
        "speedup_over_folded": whole["dense_folded"]["wall_s"] / whole["sparse"]["wall_s"],
        # median and 95% interval of the per-repetition ratios (each repetition times the three side by side)
        "speedup_interval": list(paired_ratio(walls["dense"], walls["sparse"])),
        "speedup_over_folded_interval": list(paired_ratio(walls["dense_folded"], walls["sparse"])),
        "stages": {**stages, "speedup": stages["dense"]["wall_s"] / stages["sparse"]["wall_s"],
                   "speedup_interval": list(paired_ratio(stage_samples["dense"]["wall_s"],
                                                         stage_samples["sparse"]["wall_s"]))},
        "max_abs_logit_diff": float((out - reference).abs().max()),
        "max_abs_logit": float(reference.abs().max()),  # the scale the difference and the rounding are relative to
        "dense_float32_error": float32_error(model, x, reference),
        "ran_sparse": {path: r.stats.ran_sparse for path, r in regions.items()},
        "dense_ops": sorted({op for r in regions.values() for op in r.dense_ops()}),
        "sparse_flop_share": share,
    }
