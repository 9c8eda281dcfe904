"""Issue #2 figures, each a ratio measured side by side in one run (CPU, 2 threads).

1. surgery time for resnet50 (stages 2,3) vs timm's own get_graph_node_names   goal <= 1.5x
2. inference latency injected / original, resnet50, 224 px, batch 8, eval       goal <= 1.05
3. parameter overhead of the masks                                             goal <= 1%
4. cold `ersm-surgery --help` vs a bare `python -c pass`                       goal <= 0.5 s

    python benchmarks/bench_foundation.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import subprocess
import sys
import time

import timm
import torch
from _timing import median_seconds
from timm.layers import get_graph_node_names

import ersm_surgery
from ersm_surgery.layers import MaskConfig
from ersm_surgery.surgery import apply_placements, resolve_stages


def surgery(repeat: int) -> None:
    base = timm.create_model("resnet50").eval()
    size = (3, 224, 224)
    t_timm = median_seconds(lambda: get_graph_node_names(base), repeat)
    copies = [copy.deepcopy(base) for _ in range(repeat)]
    it = iter(copies)
    t_full = median_seconds(lambda: ersm_surgery.inject(next(it), stages=[2, 3], input_size=size), repeat)
    # the same, split: resolving (one forward probe that checks the maps are (B, C, H, W)) and the fx edit
    placements = resolve_stages(base, [2, 3], size)
    t_resolve = median_seconds(lambda: resolve_stages(base, [2, 3], size), repeat)
    copies = [copy.deepcopy(base) for _ in range(repeat)]
    it = iter(copies)
    t_edit = median_seconds(lambda: apply_placements(next(it), copy.deepcopy(placements), MaskConfig()), repeat)
    print(f"[1] surgery resnet50 stages 2,3: inject() {t_full * 1e3:.1f} ms (probe {t_resolve * 1e3:.1f} ms + "
          f"fx edit {t_edit * 1e3:.1f} ms) vs timm get_graph_node_names {t_timm * 1e3:.1f} ms "
          f"-> ratio {t_full / t_timm:.2f}x (goal <= 1.5x)")


def latency(repeat: int) -> None:
    original = timm.create_model("resnet50").eval()
    masked = ersm_surgery.inject(copy.deepcopy(original), stages=[2, 3]).eval()
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        for net in (original, masked):
            net(x)  # warm-up
        # interleave the two so that machine noise hits both alike; CPU time as well as wall time, because
        # on a shared machine spinning OpenMP threads inflate wall times by up to 10x
        t_o, t_m, c_o, c_m = [], [], [], []
        for _ in range(repeat):
            for net, wall, cpu in ((original, t_o, c_o), (masked, t_m, c_m)):
                start, cpu_start = time.perf_counter(), time.process_time()
                net(x)
                wall.append(time.perf_counter() - start)
                cpu.append(time.process_time() - cpu_start)
    o, m = statistics.median(t_o), statistics.median(t_m)
    print(f"[2] latency resnet50 224px batch 8 eval ({torch.get_num_threads()} thread(s)): original {o * 1e3:.1f} ms, "
          f"injected {m * 1e3:.1f} ms -> wall ratio {m / o:.3f}; CPU-time ratio median "
          f"{statistics.median(c_m) / statistics.median(c_o):.3f}, best-of {min(c_m) / min(c_o):.3f} (goal <= 1.05)")
    n = sum(p.numel() for p in original.parameters())
    extra = sum(p.numel() for p in ersm_surgery.masks(masked).parameters())
    print(f"[3] parameters resnet50: {n:,} + masks {extra:,} -> overhead {100 * extra / n:.3f}% (goal <= 1%)")


def cold_help(repeat: int) -> None:
    def run(args):
        return median_seconds(lambda: subprocess.run(args, check=True, capture_output=True), repeat)

    bare = run([sys.executable, "-c", "pass"])
    helped = run([sys.executable, "-m", "ersm_surgery.cli.main", "--help"])
    print(f"[4] cold `ersm-surgery --help`: {helped:.3f} s (bare python {bare:.3f} s) "
          f"-> ratio {helped / bare:.2f}x (goal <= 0.5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="1 gives steadier figures on a shared machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, timm {timm.__version__}")
    surgery(args.repeat)
    latency(args.repeat)
    cold_help(args.repeat)


if __name__ == "__main__":
    main()
