"""Depthwise convolutions of the sparse runtime's dense path: ``F.conv2d`` against the weight laid out for oneDNN once.

    flock /tmp/ersm-cpu.lock python benchmarks/bench_onednn_depthwise.py      # ~5 min on 2 cores

``ersm_surgery.sparse.onednn.DepthwiseKernel`` runs a depthwise convolution through
``torch.ops.mkldnn._convolution_pointwise`` with a weight reordered once, where ``F.conv2d`` reorders it at every
call. This times, interleaved (the order reversed every other repetition), median of ``--repeat`` after 3 warm-ups,
2 threads, fp32:
1. the convolution alone, on channels-last maps (what the dense path scatters the rows into) of the shapes the
   gated stages of efficientnet_b0 and convnext_atto/tiny have at 224 px, batch 1 and 16; max |difference| printed;
2. whole sparse models (masks trained as bench_sparse.py trains them, price shifted to density 0.4 at 224 px,
   batch 1, the image closest to the target): the same sparse model with the oneDNN kernel and with ``F.conv2d``,
   the median of the paired ratios with a 95% bootstrap interval.
"""
from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F
from _timing import ratio_interval

from ersm_surgery.sparse import onednn
from ersm_surgery.sparse.measure import interleaved_samples

# (channels, side, kernel, stride): efficientnet_b0's blocks.3-6 and convnext's stages.2-3 at 224 px
SHAPES = [(480, 14, 3, 1), (480, 14, 5, 1), (672, 14, 5, 1), (672, 14, 5, 2), (1152, 7, 5, 1), (1152, 7, 3, 1),
          (160, 14, 7, 1), (320, 7, 7, 1), (384, 14, 7, 1), (768, 7, 7, 1)]


def per_op(repeat: int) -> None:
    with torch.no_grad():
        for batch in (1, 16):
            for channels, side, k, stride in SHAPES:
                w, b = torch.randn(channels, 1, k, k), torch.randn(channels)
                kernel = onednn.DepthwiseKernel(w, b, (stride, stride), (k // 2, k // 2), (1, 1), channels)
                x = torch.randn(batch, channels, side, side).contiguous(memory_format=torch.channels_last)
                diff = float((kernel(x) - F.conv2d(x, w, b, stride, k // 2, 1, channels)).abs().max())
                s = interleaved_samples({
                    "torch": lambda x=x, w=w, b=b, k=k, s=stride, c=channels: F.conv2d(x, w, b, s, k // 2, 1, c),
                    "onednn": lambda x=x, kernel=kernel: kernel(x)}, repeat, 3)
                ms = {name: sorted(v["wall_s"])[len(v["wall_s"]) // 2] * 1e6 for name, v in s.items()}
                r = ratio_interval(s["torch"]["wall_s"], s["onednn"]["wall_s"])
                print(f"batch {batch:2d} C {channels:4d} {side:2d}x{side:<2d} k{k} s{stride}: F.conv2d "
                      f"{ms['torch']:7.1f} us, prepacked {ms['onednn']:7.1f} us -> {r[0]:.2f}x [{r[1]:.2f}, "
                      f"{r[2]:.2f}], max |diff| {diff:g}")


def whole_models(names: list[str], repeat: int) -> None:
    import bench_sparse as bs  # the trained masks and the price shift of the main benchmark

    import ersm_surgery

    for name in names:
        model = bs.prepared(name, 60)
        x, _ = bs.images("val", 224, 16)
        bs.shift_price(model, x, 0.4)
        image = x[bs.closest_image(model, x, 0.4)].unsqueeze(0)
        fast = ersm_surgery.sparse(model)

        def run(enabled: bool, fast=fast, image=image):
            onednn.ENABLED = enabled
            return fast(image)

        with torch.no_grad():
            diff = float((run(True) - run(False)).abs().max())
            s = interleaved_samples({"torch": lambda: run(False), "onednn": lambda: run(True)}, repeat, 3)
        onednn.ENABLED = True
        ms = {k: sorted(v["wall_s"])[len(v["wall_s"]) // 2] * 1e3 for k, v in s.items()}
        r = ratio_interval(s["torch"]["wall_s"], s["onednn"]["wall_s"])
        print(f"{name:16s} sparse, batch 1, density 0.4: with F.conv2d {ms['torch']:.2f} ms, prepacked "
              f"{ms['onednn']:.2f} ms -> {r[0]:.3f}x [{r[1]:.3f}, {r[2]:.3f}], max |logit diff| {diff:g}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=100)
    p.add_argument("--model-repeat", type=int, default=30)
    p.add_argument("--models", default="efficientnet_b0,convnext_atto")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, {cpu}")
    per_op(args.repeat)
    if args.models:
        whole_models(args.models.split(","), args.model_repeat)


if __name__ == "__main__":
    main()
