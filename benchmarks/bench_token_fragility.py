"""What zeroing tokens of one map costs a trained base, before any training: random tokens vs the weakest.

    python benchmarks/bench_price_robustness.py --bases-only       # the bases (cached in /tmp/ersm_bench_price)
    python benchmarks/bench_token_fragility.py                      # ~1 min on 2 cores

For each model and stage: the base with an (open) mask injected there, evaluated on the validation split of
builtin:clutter (4 classes, 64 px, the model's preprocessing) while a forward hook zeroes a fraction of the
map's tokens: drawn at random (seed 0), or the tokens with the smallest feature norm of each image. This is
the measurement behind the head's magnitude prior (``mask.norm_prior``, docs/layer.md).
"""
from __future__ import annotations

import argparse
import sys

import torch

from ersm_surgery import masks
from ersm_surgery.api import inject
from ersm_surgery.data.resolve import resolve_preprocessing
from ersm_surgery.train.config import FinetuneConfig
from ersm_surgery.train.data import apply_preprocessing, build_datasets

CELLS = "regnetx_002:1,mobilenetv3_large_100:3,efficientnet_b0:3,resnet18:3,resnet18:1"
FRACTIONS = (0.1, 0.3, 0.5, 0.7)


def validation(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    config = FinetuneConfig(data="builtin:clutter", data_options={"num_classes": 4})
    train, val = build_datasets(config, 64)
    apply_preprocessing((train, val), resolve_preprocessing(model, "builtin:clutter", img_size=64), config)
    xs, ys = zip(*[val[i][:2] for i in range(len(val))], strict=True)
    return torch.stack(xs), torch.tensor(ys)


def zeroing(kind: str, fraction: float, generator: torch.Generator):
    def hook(_module, args, _out):
        f = args[0]
        b, _, h, w = f.shape
        if kind == "random":
            keep = (torch.rand(b, 1, h, w, generator=generator) >= fraction).to(f.dtype)
        else:
            norms = f.norm(dim=1).flatten(1)
            keep = torch.ones_like(norms)
            k = int(round(fraction * h * w))
            if k:
                keep.scatter_(1, norms.argsort(1)[:, :k], 0.0)
            keep = keep.view(b, 1, h, w)
        return f * keep

    return hook


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return sum(int((model(x[i:i + 100]).argmax(1) == y[i:i + 100]).sum()) for i in range(0, len(x), 100)) / len(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=CELLS, help="model:stage,... (stage: timm feature_info index)")
    ap.add_argument("--base", default="full-ebudget-s0", help="which cached base: the folder's suffix")
    ap.add_argument("--cache", default="/tmp/ersm_bench_price")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"fraction zeroed: {' '.join(f'{f:.0%}' for f in FRACTIONS)} (top-1 %, random / weakest by norm)")
    for cell in args.cells.split(","):
        name, stage = cell.split(":")
        weights = f"{args.cache}/base-{name}-{args.base}/model.safetensors"
        model = inject(name, stages=[int(stage)], input_size=(3, 64, 64), num_classes=4,
                       pretrained_path=weights).eval()
        x, y = validation(model)
        layer = next(iter(masks(model)))
        cols = []
        for fraction in FRACTIONS:
            pair = []
            for kind in ("random", "weakest"):
                handle = layer.register_forward_hook(zeroing(kind, fraction, torch.Generator().manual_seed(0)))
                pair.append(100 * accuracy(model, x, y))
                handle.remove()
            cols.append(f"{pair[0]:5.1f} / {pair[1]:5.1f}")
        print(f"{name:22s} {layer_name(model):16s} open {100 * accuracy(model, x, y):5.1f} | " + " | ".join(cols),
              flush=True)
    return 0


def layer_name(model: torch.nn.Module) -> str:
    return masks(model).names()[0].replace(".ersm_mask", "")


if __name__ == "__main__":
    sys.exit(main())
