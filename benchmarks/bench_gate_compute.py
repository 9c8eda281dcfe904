"""What a gated model computes: per gated module, the fraction of its tokens it runs on (mask.gate=stage).

    python benchmarks/bench_gate_compute.py /tmp/ersm_bench_price/work/*-late-*-<digest>

Each argument is a cell folder of bench_price_robustness.py (its fine-tuned ERSM model is ``ersm/last``) or a
saved model folder. On 256 validation pictures of builtin:clutter at 64 px, for every module a stage mask
gates it prints two fractions of tokens: on the module's input grid (what the masks before it kept; a second
gated stage computes the overlap of both masks) and on its output grid, where a stage whose first block is
strided does nearly all its work, under the model's own ``mask.gate_pool`` rule (``any`` keeps a coarse token
when any token of its stride block is kept, so it computes more than the mask keeps).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import ersm_surgery
from ersm_surgery.data import create_dataset
from ersm_surgery.layers import StageGate
from ersm_surgery.sparse.measure import kept_fractions


def computed_fractions(model: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> dict[str, tuple[float, float]]:
    """Gated module path -> (kept fraction of its input grid, of its output grid), averaged over ``images``."""
    gated = {n: m for n, m in model.named_modules() if isinstance(getattr(m, "ersm_gate", None), StageGate)}
    sums = {n: [0.0, 0.0] for n in gated}

    def hook(module, args, output, name):
        fractions = kept_fractions(args[0], output.shape[-2:], module.ersm_gate.pool)
        for i, fraction in enumerate(fractions):  # batch means, weighted by the batch's images
            sums[name][i] += fraction * len(args[0])

    handles = [m.register_forward_hook(lambda mod, a, o, n=n: hook(mod, a, o, n)) for n, m in gated.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                model(images[i:i + batch])
    finally:
        for h in handles:
            h.remove()
    return {n: (s[0] / len(images), s[1] / len(images)) for n, s in sums.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = create_dataset("builtin:clutter", "validation", img_size=64, seed=0, num_classes=4, size=args.images)
    images = torch.stack([data[i][0] for i in range(len(data))])
    result = {}
    for folder in args.folders:
        source = folder / "ersm" / "last" if (folder / "ersm" / "last").is_dir() else folder
        model = ersm_surgery.load(source).eval()
        fractions = computed_fractions(model, images)
        if not fractions:
            print(f"{folder.name}: no gated stage (mask.gate=features)")
            continue
        pool = model.ersm_recipe.mask.gate_pool
        result[folder.name] = {"gate_pool": pool, "computed": fractions}
        cells = "  ".join(f"{n} {a:.2f} -> {b:.2f}" for n, (a, b) in fractions.items())
        print(f"{folder.name:45s} {pool:6s} | input -> output grid: {cells}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
