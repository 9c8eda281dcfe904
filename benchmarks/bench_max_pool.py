"""Max pooling of channels-first maps on the CPU: torch's kernel against the same pool in channels-last layout.

    flock /tmp/ersm-cpu.lock python benchmarks/bench_max_pool.py      # ~2 min on 2 cores

``ersm_surgery.sparse`` computes every ``nn.MaxPool2d`` outside its regions in channels-last layout
(``sparse.max_pool.ChannelsLastMaxPool2d``: converted there, pooled, converted back). This times, interleaved,
median of ``--repeat`` after 3 warm-ups, 2 threads, fp32:
1. the pool alone on the stem maps of resnet50/resnet18 (64 x 112 x 112) and densenet121 (64 x 112 x 112) at
   batch 1 and 16: ``nn.MaxPool2d`` against ``ChannelsLastMaxPool2d`` (max |difference| printed: it must be 0);
2. whole timm models at 224 px (random weights), as they are against with their max pools rewritten, the
   median of the per-repetition ratios with a 95% bootstrap interval.
Neither is what the masks buy: ``bench`` and bench_sparse.py rewrite the timm model they compare against too.
"""
from __future__ import annotations

import argparse
import copy
import platform

import timm
import torch
from _timing import ratio_interval
from torch import nn

from ersm_surgery.sparse.max_pool import ChannelsLastMaxPool2d, channels_last_max_pools
from ersm_surgery.sparse.measure import interleaved_samples


def interleaved(calls: dict, repeat: int) -> dict[str, list[float]]:
    """Wall seconds of each call per repetition (``interleaved_samples``: 3 warm-ups, the order reversed every other
    repetition)."""
    return {name: s["wall_s"] for name, s in interleaved_samples(calls, repeat, 3).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--models", default="resnet50,resnet18,densenet121")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {cpu}")
    plain, rewritten = nn.MaxPool2d(3, 2, 1), ChannelsLastMaxPool2d(3, 2, 1)
    with torch.no_grad():
        for batch in (1, 16):
            x = torch.randn(batch, 64, 112, 112)
            diff = float((plain(x) - rewritten(x)).abs().max())
            s = interleaved({"plain": lambda x=x: plain(x), "rewritten": lambda x=x: rewritten(x)}, args.repeat)
            ms = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in s.items()}
            r = ratio_interval(s["plain"], s["rewritten"])
            print(f"max pool 3x3/2 on ({batch}, 64, 112, 112): nn.MaxPool2d {ms['plain']:.2f} ms, channels-last "
                  f"{ms['rewritten']:.2f} ms -> {r[0]:.2f}x [{r[1]:.2f}, {r[2]:.2f}], max |diff| {diff:g}")
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False).eval()
            fast = copy.deepcopy(model)
            count = channels_last_max_pools(fast)
            x = torch.randn(1, 3, 224, 224)
            diff = float((model(x) - fast(x)).abs().max())
            s = interleaved({"timm": lambda m=model, x=x: m(x), "rewritten": lambda m=fast, x=x: m(x)}, args.repeat)
            ms = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in s.items()}
            r = ratio_interval(s["timm"], s["rewritten"])
            print(f"{name:12s} batch 1 ({count} max pools): timm {ms['timm']:.1f} ms, rewritten "
                  f"{ms['rewritten']:.1f} ms -> {r[0]:.3f}x [{r[1]:.3f}, {r[2]:.3f}], max |logit diff| {diff:g}")


if __name__ == "__main__":
    main()
