"""The memory-format rule of run's base training: one training step, contiguous vs channels-last.

For each model: the median time of a training step (forward, cross-entropy, backward, AdamW) at batch 32
and 64 px (run's defaults) on CPU threads, contiguous and channels-last, interleaved (rounds alternate the
two formats so a drift of the machine hits both), and the ratio. The rule in
``ersm_surgery.pipeline.base_training.prefers_channels_last`` (grouped or depthwise convolutions -> channels-last) is
printed beside each model, so a row where the rule picks the slower format shows at once.

    python benchmarks/bench_memory_format.py [--models resnet18,efficientnet_b0] [--rounds 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch
import torch.nn.functional as F

from ersm_surgery.pipeline.base_training import model_traits, prefers_channels_last

MODELS = ["resnet18", "mobilenetv3_large_100", "efficientnet_b0", "convnext_atto", "regnetx_002"]


def _step_time(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per format (median reported)")
    p.add_argument("--steps", type=int, default=3, help="training steps per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s), batch {args.batch_size}, "
          f"{args.img_size} px, {args.rounds} interleaved rounds of {args.steps} steps; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    for name in args.models.split(","):
        torch.manual_seed(0)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        y = torch.randint(0, 4, (args.batch_size,))
        runs = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = timm.create_model(name, num_classes=4).to(memory_format=fmt)
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            xf = x.contiguous(memory_format=fmt)
            _step_time(model, opt, xf, y, 2)  # warm-up: oneDNN picks its kernels on the first calls
            runs[fmt] = (model, opt, xf, [])
        for _ in range(args.rounds):
            for model, opt, xf, times in runs.values():
                times.append(_step_time(model, opt, xf, y, args.steps))
        dense, last = (statistics.median(runs[f][3]) for f in (torch.contiguous_format, torch.channels_last))
        traits = model_traits(runs[torch.contiguous_format][0])
        rule = "channels-last" if prefers_channels_last(traits) else "contiguous"
        faster = "channels-last" if last < dense else "contiguous"
        print(f"{name}: contiguous {1000 * dense:.0f} ms, channels-last {1000 * last:.0f} ms per step; "
              f"channels-last speed-up {dense / last:.2f}x; grouped convs {traits.grouped}; rule picks {rule}"
              f"{'' if rule == faster else ' (the slower one)'}", flush=True)


if __name__ == "__main__":
    main()
