"""Where the sparse path stops paying: each gated stage, sparse against dense with its gates (issue 14).

    flock /tmp/ersm-cpu.lock python benchmarks/bench_break_even.py     # ~8 min on 2 cores

bench_sparse.py's protocol (masks after the two stages before the last, ``mask.gate=stage``, heads trained
60 steps at 64 px), then for each target the price is shifted until every gated stage *computes* that
fraction of its tokens (on the timed images), and each gated stage is timed on its captured input: the sparse
path (``break_even=1.0``) against the dense gated graph (``break_even=0.0``), interleaved; the speed-up is the
median of the paired per-repetition ratios with a 95% bootstrap interval.

The rule, fixed before the run: ``DEFAULT_BREAK_EVEN`` is the largest tested fraction at which the interval of
every stage of every model lies above 1.0 (the sparse path is faster), all lower fractions passing too;
fractions whose intervals straddle 1.0 are not counted as faster.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

from ersm_surgery.layers.gate import kept_tokens
from ersm_surgery.sparse.measure import interleaved_samples, region_inputs
from ersm_surgery.sparse.model import DEFAULT_BREAK_EVEN, sparse, sparse_regions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import ratio_interval  # noqa: E402
from bench_sparse import images, prepared, shift_price  # noqa: E402

TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--models", default="resnet50:4,convnext_atto:16", help="name:batch,...")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32, 224 px; DEFAULT_BREAK_EVEN now "
          f"{DEFAULT_BREAK_EVEN}; sparse vs dense gated, medians of {args.repeat} paired ratios [95% interval]")
    faster: dict[float, bool] = {t: True for t in TARGETS}
    for spec in args.models.split(","):
        name, batch = spec.split(":")
        model = prepared(name, args.steps)
        x = images("validation", 224, 16, seed=3)[0][: int(batch)]
        for target in TARGETS:
            shift_price(model, x, target)
            on_rows, gated = sparse(model, break_even=1.0), sparse(model, break_even=0.0)
            rows_regions, gated_regions = sparse_regions(on_rows), sparse_regions(gated)
            with torch.no_grad():
                inputs = region_inputs(on_rows, x)
                parts = []
                for path, inp in inputs.items():
                    t = interleaved_samples({"gated": partial(gated_regions[path], inp),
                                             "rows": partial(rows_regions[path], inp)}, args.repeat)
                    med, lo, hi = ratio_interval(t["gated"]["wall_s"], t["rows"]["wall_s"])
                    faster[target] &= lo > 1.0
                    share = float(kept_tokens(inp).mean())
                    parts.append(f"{path} computes {share:.2f}: {med:.2f}x [{lo:.2f}, {hi:.2f}]")
            print(f"  {name:<14} batch {batch:>2} target {target:.1f} | " + " | ".join(parts), flush=True)
    rule = None
    for target in TARGETS:
        if not faster[target]:
            break
        rule = target
    print(f"largest fraction with every interval above 1.0 (and all below it): {rule}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
