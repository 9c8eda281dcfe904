"""Is ``builtin:clutter`` learnable? Train timm's resnet18 from scratch on CPU and report val top-1 vs chance.

    PYTHONPATH=. python benchmarks/bench_clutter_learnable.py          # 15 epochs, shift+flip augmentation

The generated images are materialised once (they are deterministic, and without augmentation every epoch
sees the same pixels), so the reported training time is the model's, not the generator's.
"""
from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F

from ersm_surgery.data import create_dataset, make_loader


def materialise(ds, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for x, y in make_loader(ds, batch_size, shuffle=False, workers=0, seed=0):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def augment(x: torch.Tensor, g: torch.Generator, pad: int = 6) -> torch.Tensor:
    """Random shift (reflect-padded crop) and horizontal flip per sample, on tensors, so caching still works."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b), generator=g).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--train-size", type=int, default=None, help="default: the data set's 2000")
    p.add_argument("--spurious-cue", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true", help="train on the plain generated images")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    kw = dict(img_size=args.img_size, seed=args.seed, spurious_cue=args.spurious_cue)
    train = create_dataset("builtin:clutter", "train", size=args.train_size, **kw)
    val = create_dataset("builtin:clutter", "validation", **kw)
    xt, yt = materialise(train, 256)
    xv, yv = materialise(val, 256)
    gen_s = time.perf_counter() - start
    print(f"generated {len(xt)} train + {len(xv)} val images at {args.img_size}px in {gen_s:.1f}s")

    model = timm.create_model("resnet18", pretrained=False, num_classes=train.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * (len(xt) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(args.seed)
    history = []
    train_start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt), generator=g)
        total = 0.0
        for i in range(0, len(xt) - args.batch_size + 1, args.batch_size):
            idx = order[i:i + args.batch_size]
            x = xt[idx] if args.no_augment else augment(xt[idx], g)
            loss = F.cross_entropy(model(x), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        acc = top1(model, xv, yv, 256)
        history.append(acc)
        elapsed = time.perf_counter() - train_start
        print(f"epoch {epoch + 1}: train loss {total / (len(xt) // args.batch_size):.3f}  "
              f"val top-1 {acc:.3f}  ({elapsed:.0f}s)")
    wall = time.perf_counter() - start
    result = {
        "val_top1": history[-1],
        "best_val_top1": max(history),
        "chance": 1.0 / train.num_classes,
        "epochs": args.epochs,
        "train_size": len(xt),
        "img_size": args.img_size,
        "threads": args.threads,
        "augment": not args.no_augment,
        "wall_s": round(wall, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
