"""What bounds the sparse runtime's whole-model speed-up (issue 14): where the time of the timm model goes.

    python benchmarks/bench_sparse_bound.py                       # resnet50, batch 16, density 0.4; ~3 min
    python benchmarks/bench_sparse_bound.py --model resnet18 --batch 1

Three measurements, 224 px, fp32, ``--threads`` torch threads, medians of ``--repeat`` after warm-ups:
1. The timm model (random weights, eval mode) stage by stage (stem, each stage, head), contiguous and
   channels-last: the share of its time in the stages that masks after stages 2 and 3 gate (3 and 4), and
   the whole-model speed-up those gated stages allow at best (Amdahl: the gated stages in no time at all).
2. The model of bench_sparse.py (masks after stages 2 and 3 with ``mask.gate=stage``, heads trained, each
   mask's price shifted to ``--density`` on the 16 timed images): on the inputs each gated stage sees, the
   timm stage, the dense gated stage (the gates' multiplies included), the same fx graph without its gates,
   and the sparse stage, interleaved. The density printed per stage is the kept fraction of its input, i.e.
   of what it computes: under the gate the mask after stage 3 can only keep tokens the mask after stage 2
   kept (the rest of stage 3's output is zero), so the last stage's kept fraction is the two masks' overlap.
3. The whole timm model against ``ersm_surgery.sparse(model)``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sparse import images, prepared, shift_price  # noqa: E402

from ersm_surgery.layers.gate import kept_tokens  # noqa: E402
from ersm_surgery.sparse.measure import interleaved, plain_model, region_inputs  # noqa: E402
from ersm_surgery.sparse.model import sparse, sparse_regions  # noqa: E402


def stage_times(model: torch.nn.Module, x: torch.Tensor, repeat: int) -> dict[str, float]:
    """Median seconds of each stage of ``feature_info`` (timed by hooks at its entry and exit), of what runs
    before the first ("stem") and after the last ("head")."""
    stages = [info["module"] for info in model.feature_info][1:]  # the first entry is the stem's activation
    marks: list[tuple[str, float]] = []
    hooks = []
    for name in stages:
        module = model.get_submodule(name)
        hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: marks.append((n, time.perf_counter()))))
        hooks.append(module.register_forward_hook(lambda m, a, o, n=name: marks.append((n, time.perf_counter()))))

    def run() -> dict[str, float]:
        marks.clear()
        t0 = time.perf_counter()
        model(x)
        t1 = time.perf_counter()
        times = {"stem": marks[0][1] - t0}
        for (name, start), (_, stop) in zip(marks[0::2], marks[1::2], strict=True):
            times[name] = stop - start
        times["head"] = t1 - marks[-1][1]
        return times

    try:
        with torch.no_grad():
            run()
            runs = [run() for _ in range(repeat)]
    finally:
        for h in hooks:
            h.remove()
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--density", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--steps", type=int, default=60, help="mask-head training steps (bench_sparse.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x_price, _ = images("val", 224, 16)
    x = x_price[:args.batch]
    print(f"{args.model}, batch {args.batch}, 224 px, {torch.get_num_threads()} threads, torch {torch.__version__}")

    timm_model = timm.create_model(args.model, pretrained=False).eval()
    gated = [info["module"] for info in timm_model.feature_info][-2:]  # masks after stages 2 and 3 gate these
    for fmt in (torch.contiguous_format, torch.channels_last):
        m = timm_model.to(memory_format=fmt)
        t = stage_times(m, x.contiguous(memory_format=fmt), args.repeat)
        total = sum(t.values())
        share = sum(t[g] for g in gated) / total
        per = "  ".join(f"{k} {v * 1e3:.0f}" for k, v in t.items())
        print(f"  timm {str(fmt).split('.')[-1]:18s} ms: {per} | total {total * 1e3:.0f} | gated stages "
              f"{', '.join(gated)} {100 * share:.0f}% of it: whole-model speed-up at most {1 / (1 - share):.2f}x")

    model = prepared(args.model, args.steps)
    shift_price(model, x_price, args.density)
    base = plain_model(model)
    fast = sparse(model, break_even=1.0)
    regions = sparse_regions(fast)
    with torch.no_grad():
        inputs = region_inputs(fast, x)
        for path, inp in inputs.items():
            print(f"  {path}: input {tuple(inp.shape)}, kept fraction {float(kept_tokens(inp).mean()):.3f}")
        calls = {
            "timm stages": lambda: [base.get_submodule(p)(i) for p, i in inputs.items()],
            "dense gated": lambda: [regions[p].gated(i) for p, i in inputs.items()],
            "fx without gates": lambda: [regions[p]._ungated()(i) for p, i in inputs.items()],
            "sparse": lambda: [regions[p](i) for p, i in inputs.items()],
        }
        r = interleaved(calls, args.repeat)
        ref = r["timm stages"]["wall_s"]
        for name, v in r.items():
            print(f"  {name:17s} {v['wall_s'] * 1e3:8.1f} ms  ({ref / v['wall_s']:.2f}x of timm's stages)")
        whole = interleaved({"timm": lambda: base(x), "sparse": lambda: fast(x)}, args.repeat)
        dense_s, sparse_s = whole["timm"]["wall_s"], whole["sparse"]["wall_s"]
        print(f"  whole model: timm {dense_s * 1e3:.1f} ms, sparse {sparse_s * 1e3:.1f} ms "
              f"-> {dense_s / sparse_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
