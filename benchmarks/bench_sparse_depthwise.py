"""Depthwise convolutions on rows: gathered taps against scatter -> dense kernel -> gather (issue 14).

    flock /tmp/ersm-cpu.lock python benchmarks/bench_sparse_depthwise.py     # ~6 min on 2 cores

1. Per op: a depthwise convolution of the shapes the gated stages of convnext_atto, efficientnet_b0 and
   mobilenetv3_large_100 see at 224 px (batch 1, 4 and 16, random masks of density 0.2 / 0.4 / 0.6), run
   both ways on the same rows, interleaved, median of ``--repeat``, with the path the runtime's cost rule
   (``sparse.conv.DEPTHWISE_COST_NS``, fitted on this table) and the rule before it (dense above 6 gathered
   taps per input position: ``work``) pick.
2. Whole models: the same masked model (bench_sparse.py's protocol: masks after the two stages before the
   last with ``mask.gate=stage``, heads trained 60 steps, the price shifted at 224 px until each gated stage
   computes 0.4 of its tokens; the printed densities are those fractions) with the rule before and the cost
   rule, against timm's model, interleaved; each speed-up is the median of the paired per-repetition ratios
   with a 95% bootstrap interval; the max |logit difference| of the two sparse runs against the dense gated
   model.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ersm_surgery.sparse import conv as sparse_conv
from ersm_surgery.sparse.conv import RowConv
from ersm_surgery.sparse.grid import GridSet, Rows
from ersm_surgery.sparse.measure import interleaved, interleaved_samples, plain_model
from ersm_surgery.sparse.model import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import ratio_interval  # noqa: E402
from bench_sparse import images, prepared, shift_price  # noqa: E402

# (batch, channels, side, kernel, stride): convnext_atto stages 2-3 (7x7), efficientnet_b0 / mobilenetv3
# stages 3-6 (5x5 and 3x3, stride 1 and 2, 144 to 1152 expanded channels)
SHAPES = [(16, 160, 28, 7, 1), (16, 320, 14, 7, 1), (1, 320, 14, 7, 1), (1, 640, 7, 7, 1), (16, 672, 14, 5, 1),
          (1, 672, 14, 5, 1), (1, 672, 14, 5, 2), (16, 672, 14, 5, 2), (1, 1152, 7, 5, 1), (16, 1152, 7, 5, 1),
          (4, 672, 7, 5, 1), (16, 240, 28, 5, 2), (1, 240, 28, 5, 2), (16, 240, 28, 3, 1), (16, 480, 14, 3, 1),
          (4, 480, 14, 3, 1), (1, 480, 14, 3, 1), (1, 144, 56, 3, 2)]
# the rule before the cost rule, as costs: dense when kept outputs x taps > 6 x input positions
WORK_RULE = {"tap": 0.0, "tap_row": 1.0, "dense": 0.0, "position": 6.0, "position_tap": 0.0}


def with_rule(rule, fn):
    """``fn`` run with the depthwise path forced ("taps", "dense") or chosen by these costs (a dict)."""
    def call():
        saved = sparse_conv.DEPTHWISE_PATH, sparse_conv.DEPTHWISE_COST_NS
        if isinstance(rule, str):
            sparse_conv.DEPTHWISE_PATH = rule
        else:
            sparse_conv.DEPTHWISE_PATH, sparse_conv.DEPTHWISE_COST_NS = None, rule
        try:
            return fn()
        finally:
            sparse_conv.DEPTHWISE_PATH, sparse_conv.DEPTHWISE_COST_NS = saved
    return call


def per_op(repeat: int) -> None:
    gen = torch.Generator().manual_seed(0)
    print("per op: median ms, taps = gathered taps, dense = scatter + dense kernel + gather")
    for batch, channels, side, kernel, stride in SHAPES:
        conv = nn.Conv2d(channels, channels, kernel, stride, kernel // 2, groups=channels).eval()
        row_conv = RowConv.from_module(conv)
        for density in (0.2, 0.4, 0.6):
            mask = (torch.rand(batch, 1, side, side, generator=gen) < density).float()
            grids = GridSet(mask)
            grid = grids.at(side, side)
            x = torch.randn(batch, side, side, channels, generator=gen)
            rows = Rows(grid.gather(x, channels_last=True), grid, channels_last=True)
            out_grid = row_conv.out_grid(grid, grids)
            work = out_grid.count * kernel * kernel / (batch * side * side)
            with torch.no_grad():
                times = interleaved({"taps": with_rule("taps", partial(row_conv, rows, grids)),
                                     "dense": with_rule("dense", partial(row_conv, rows, grids))}, repeat)
            taps, dense = times["taps"]["wall_s"] * 1e3, times["dense"]["wall_s"] * 1e3
            picks = {name: "dense" if with_rule(rule, partial(row_conv._dense_is_cheaper, out_grid, grid))()
                     else "taps" for name, rule in (("cost rule", sparse_conv.DEPTHWISE_COST_NS), ("work", WORK_RULE))}
            print(f"  b{batch:>2} c{channels:>4} {side}x{side} k{kernel} s{stride} density {density:.1f} work "
                  f"{work:5.2f}: taps {taps:6.2f} dense {dense:6.2f} -> {'dense' if dense < taps else 'taps '} "
                  f"faster ({max(taps, dense) / min(taps, dense):.2f}x) | picked: cost rule {picks['cost rule']}, "
                  f"work > 6 {picks['work']}", flush=True)


def whole(models: list[str], steps: int, repeat: int) -> None:
    rule = sparse_conv.DEPTHWISE_COST_NS
    print(f"whole models at density 0.4, 224 px (old: dense above work 6; rule: the cost rule {rule}); speed-ups "
          f"are medians of {repeat} paired ratios [95% bootstrap interval]")
    x_all, _ = images("validation", 224, 16)
    for name in models:
        model = prepared(name, steps)
        density = shift_price(model, x_all, 0.4)
        base = plain_model(model)
        fast = sparse(model, break_even=1.0)  # sparse at any density: the comparison is of the two row paths
        for batch in (1, 16):
            x = x_all[:batch]
            with torch.no_grad():
                reference = model(x)
                diffs = {k: float((with_rule(t, partial(fast, x))() - reference).abs().max())
                         for k, t in (("taps", WORK_RULE), ("rule", rule))}
                samples = interleaved_samples({"timm": partial(base, x),
                                               "taps": with_rule(WORK_RULE, partial(fast, x)),
                                               "rule": with_rule(rule, partial(fast, x))}, repeat)
            t = {k: v["wall_s"] for k, v in samples.items()}
            ms = {k: statistics.median(v) * 1e3 for k, v in t.items()}
            parts = [f"{label} {m:.2f}x [{lo:.2f}, {hi:.2f}]" for label, (m, lo, hi) in (
                ("old vs timm", ratio_interval(t["timm"], t["taps"])),
                ("rule vs timm", ratio_interval(t["timm"], t["rule"])),
                ("rule vs old", ratio_interval(t["taps"], t["rule"])))]
            dens = " / ".join(f"{v:.2f}" for v in density.values())
            print(f"  {name:<22} batch {batch:>2} density {dens}: timm {ms['timm']:.1f} ms, old {ms['taps']:.1f} ms, "
                  f"rule {ms['rule']:.1f} ms | {' | '.join(parts)} | max|dlogit| old {diffs['taps']:.1e} rule "
                  f"{diffs['rule']:.1e}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--models", default="convnext_atto,efficientnet_b0,mobilenetv3_large_100")
    ap.add_argument("--skip-ops", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32")
    if not args.skip_ops:
        per_op(args.repeat)
    if args.models:
        whole([m for m in args.models.split(",") if m], args.steps, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
