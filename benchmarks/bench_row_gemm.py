"""The row GEMMs of resnet50's gated stages at batch 1 and 16: why batch 1 gains less (issue 14).

    python benchmarks/bench_row_gemm.py            # ~1 min on 2 cores

A gated stage's convolutions are GEMMs of the kept rows (kept tokens, times the kernel's taps for a k x k
convolution) by the weight. At density 0.4 resnet50's layer3 keeps ~78 rows at batch 1 and ~1254 at batch 16,
layer4 ~20 and ~313. For each shape of those stages this times, one variant after the other, median of
``--repeat`` after 5 warm-ups:
``torch.addmm`` (what the runtime uses), ``F.linear`` on a transposed weight, and oneDNN's prepacked linear
(``torch.ops.mkldnn._linear_pointwise``, an internal op; skipped where this torch build lacks it), and prints
GFLOP/s. Small-M GEMMs are bound by reading the weight, which the dense convolution of timm reads too.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _timing import median_seconds

LAYER3 = [(1024, 256), (2304, 256), (256, 1024)]  # (K, N): 1x1 in, 3x3 (9 x 256 taps), 1x1 out
LAYER4 = [(2304, 512), (1024, 512), (4608, 512), (512, 2048), (2048, 512), (1024, 2048)]


def _median_us(fn, repeat: int) -> float:
    for _ in range(5):  # warm-up
        fn()
    return median_seconds(fn, repeat) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    packed_ok = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; oneDNN prepacked linear: {packed_ok}")
    for batch, (rows3, rows4) in ((1, (78, 20)), (16, (1254, 313))):
        totals: dict[str, float] = {}
        for rows, shapes in ((rows3, LAYER3), (rows4, LAYER4)):
            for k, n in shapes:
                x, w, b = torch.randn(rows, k), torch.randn(k, n), torch.randn(n)
                wt = w.t().contiguous()
                calls = {"addmm": lambda x=x, w=w, b=b: torch.addmm(b, x, w),
                         "linear": lambda x=x, wt=wt, b=b: F.linear(x, wt, b)}
                if packed_ok:
                    packed = torch.ops.mkldnn._reorder_linear_weight(wt, rows)
                    calls["onednn"] = lambda x=x, pw=packed, b=b: torch.ops.mkldnn._linear_pointwise(
                        x, pw, b, "none", [], "")
                times = {name: _median_us(fn, args.repeat) for name, fn in calls.items()}
                for name, us in times.items():
                    totals[name] = totals.get(name, 0.0) + us
                gflops = {name: 2 * rows * k * n / us / 1e3 for name, us in times.items()}
                print(f"batch {batch:2d} rows {rows:5d} K {k:5d} N {n:5d} | "
                      + " | ".join(f"{name} {times[name]:8.1f} us {gflops[name]:5.0f} GFLOP/s" for name in times))
        print(f"batch {batch:2d} total: " + ", ".join(f"{name} {us / 1e3:.2f} ms" for name, us in totals.items()))


if __name__ == "__main__":
    main()
