"""Issue #5 figure: the full deletion test costs at most 15x one plain evaluation pass.

The deletion test at every mask layer (3 rankings x 2 orders x 10 fractions, LeRF and MoRF, zero fill)
is timed side by side with a plain pass (``model(x)`` over the same images, same batch size), on a
resnet18 with masks after stages 2 and 3. The masks are freshly injected, so they keep every token:
the worst case, since no edited image can reuse an earlier fraction's logits.

Configurations (each a ratio to the plain pass measured in the same run):

- ``fx, batched``: the default. The network up to each mask runs once per batch; the edited feature
  maps of all rankings/orders/fractions go through the rest of the network in chunks of
  ``8 x batch`` rows.
- ``fx, per fraction``: the same split, one rerun call per batch and fraction (chunks of ``batch`` rows).
- ``hook, batched`` (with --with-hook): full network reruns with a hook substitution (the fallback).

    python benchmarks/bench_deletion_cost.py [--model resnet18] [--img-size 64] [--images 64] [-b 32]
    python benchmarks/bench_deletion_cost.py --from DIR --images 500   # trained masks, e.g. from
        # bench_finetune.py --save DIR (DIR/ersm), on builtin:clutter validation images

Freshly injected masks are the worst case, not the usual one: trained masks drop tokens, so with zero
fill the first LeRF fractions remove already-zero tokens and MoRF reaches all-zero features early,
and those fractions reuse earlier logits.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import ersm_surgery
from ersm_surgery.eval.images import EvalImages
from ersm_surgery.eval.runner import EvalSettings, evaluate

GOAL = 15.0


def plain_pass(model: torch.nn.Module, images: torch.Tensor, batch: int) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of ``model(x)`` over the images."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for i in range(0, images.shape[0], batch):
            model(images[i : i + batch])
    return time.perf_counter() - wall, time.process_time() - cpu


def deletion_cost(model, data: EvalImages, batch: int, rows: int, split: str) -> dict:
    settings = EvalSettings(metrics=("deletion",), batch_size=batch, rerun_rows=rows, split=split)
    return evaluate(model, data, settings=settings).results["deletion"]["cost"]


def trained(source: str, count: int) -> tuple[torch.nn.Module, EvalImages]:
    """A saved masked model and ``count`` built-in validation images at its input size and class count."""
    from ersm_surgery.data import create_dataset, resolve_preprocessing
    from ersm_surgery.eval.images import load_images

    model = ersm_surgery.load(source).eval()
    side = model.ersm_recipe.input_size[-1]
    pre = resolve_preprocessing(model, "builtin:clutter", img_size=side)  # what it was fine-tuned with
    data = create_dataset("builtin:clutter", "validation", preprocessing=pre, num_classes=model.num_classes)
    return model, load_images(data, count, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("-b", "--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="plain passes timed (median)")
    parser.add_argument("--with-hook", action="store_true", help="also time the full-rerun fallback")
    parser.add_argument("--from", dest="source", help="a saved masked model (trained masks) instead of --model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.source:
        model, data = trained(args.source, args.images)
        images = data.images
        what = f"trained masks from {args.source}, {args.images} builtin:clutter validation images"
    else:
        size = (3, args.img_size, args.img_size)
        stages = [int(s) for s in args.stages.split(",")]
        model = ersm_surgery.inject(args.model, stages=stages, input_size=size, num_classes=10).eval()
        images = torch.randn(args.images, *size)
        data = EvalImages(images=images, labels=torch.arange(args.images) % 10, boxes=None,
                          indices=list(range(args.images)), classes=[str(i) for i in range(10)],
                          mean=(0.0,) * 3, std=(1.0,) * 3, description={"kind": "random normal"})
        what = (f"{args.model} stages {args.stages}, fresh masks (every token kept: the worst case), "
                f"{args.images} images at {args.img_size} px")
    b = args.batch_size
    configs = [("fx, batched", 8 * b, "fx"), ("fx, per fraction", b, "fx")]
    if args.with_hook:
        configs.append(("hook, batched", 8 * b, "hook"))

    plain_pass(model, images, b)  # warm-up
    plains, rows = [], []
    for label, rerun_rows, split in configs:  # interleaved, so that load changes hit both sides alike
        plains.append(plain_pass(model, images, b))
        rows.append((label, deletion_cost(model, data, b, rerun_rows, split)))
    for _ in range(max(0, args.repeat - len(configs))):
        plains.append(plain_pass(model, images, b))
    wall = statistics.median(p[0] for p in plains)
    cpu = statistics.median(p[1] for p in plains)

    print(f"# deletion test cost, {what}, batch {b}, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.machine()}")
    print(f"plain pass: wall {wall:.3f} s, CPU {cpu:.3f} s (medians of {len(plains)}; wall "
          f"{', '.join(f'{p[0]:.2f}' for p in plains)})")
    header = (f"{'configuration':<18} {'wall s':>8} {'wall x':>7} {'CPU s':>8} {'CPU x':>7} {'rows':>6} {'calls':>6}"
              f" {'reused':>7}")
    print(f"{header}  goal <= {GOAL:g}x (CPU time: steadier on a shared machine)")
    for label, cost in rows:
        ratio = cost["deletion_cpu_seconds"] / cpu
        verdict = ("ok" if ratio <= GOAL else "OVER") if label == "fx, batched" else ""
        print(f"{label:<18} {cost['deletion_seconds']:8.2f} {cost['deletion_seconds'] / wall:6.1f}x "
              f"{cost['deletion_cpu_seconds']:8.2f} {ratio:6.1f}x {cost['rows']:6d} {cost['calls']:6d} "
              f"{cost['reused']:7d}  {verdict}")


if __name__ == "__main__":
    main()
