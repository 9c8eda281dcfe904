"""The timm model and its sparse copy, each timed alone in a process of its own (issue 14).

    flock /tmp/ersm-cpu.lock python benchmarks/bench_sparse_isolated.py    # ~15 min on 2 cores
    python benchmarks/bench_sparse_isolated.py --models resnet50 --batches 16 --rounds 3

Why: bench_sparse.py (and ``ersm-surgery bench``) alternate the dense and the sparse model call by call in
one process. At batch 1 that is what a deployment sees; at batch 16 the two models share the allocator:
its feature maps are tens of MB, which glibc hands back to the system and pages in again, and how much of
that each model pays depends on what the other left behind. Measured on 2026-12-05 (resnet50, batch 16):
interleaved, timm 806-859 ms against sparse 605-643 ms (1.25-1.41x); each alone in its own process, timm
790 ms against sparse 660-713 ms (1.11-1.20x). A user runs one model per process, so this script is the
batch-16 figure to trust.

How: the masked models are prepared exactly as in bench_sparse.py (``prepared``: mask heads trained
``--steps`` steps at 64 px; ``shift_price`` to 0.4 of the tokens at 224 px on its 16 validation images),
each mask's shifted price folded into its score bias (u = alpha - s is unchanged, so the saved recipe's alpha
holds) and the model saved with ``ersm_surgery.save``. Then, for ``--rounds`` rounds, two fresh processes
per batch size (their order alternating by round) each load it, build either the plain timm model (same
weights, no masks) or ``ersm_surgery.sparse(model)``, run ``--warmup`` calls and time ``--repeat``; a
round's ratio is the two medians' ratio. Reported: the geometric mean of the round ratios with a 95% t
interval over rounds, and each model's median over rounds.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def child(folder: Path, which: str, batch: int, threads: int, warmup: int, repeat: int) -> None:
    """Time one model alone: print {"wall_s": [...]} as JSON on the last line."""
    import ersm_surgery
    from ersm_surgery.sparse.measure import plain_model

    torch.set_num_threads(threads)
    masked = ersm_surgery.load(folder)
    model = ersm_surgery.sparse(masked) if which == "sparse" else plain_model(masked)
    del masked
    x = torch.load(folder / f"batch{batch}.pt")
    walls = []
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        for _ in range(repeat):
            t0 = time.perf_counter()
            model(x)
            walls.append(time.perf_counter() - t0)
    print(json.dumps({"wall_s": walls}))


def prepare(name: str, steps: int, folder: Path, target: float) -> dict[str, float]:
    """Save ``name`` with masks at ``target`` (bench_sparse's preparation) and its batch-1 and batch-16 inputs."""
    sys.path.insert(0, str(HERE))
    from bench_sparse import batches, images, prepared, shift_price

    import ersm_surgery
    from ersm_surgery.recipe import RECIPE_ATTR

    x16 = images("validation", 224, 16, seed=3)[0]
    model = prepared(name, steps)
    shift_price(model, x16, target)
    base_alpha = getattr(model, RECIPE_ATTR).mask.alpha
    with torch.no_grad():
        for _, layer in ersm_surgery.masks(model).items():
            # u = alpha - s: a price shifted by d is the score's bias shifted by -d
            layer.head.score.bias -= layer.config.alpha - base_alpha
            layer.config.alpha = base_alpha
    x1, _ = batches(model, x16, target)
    ersm_surgery.save(model, folder, force=True)
    torch.save(x1, folder / "batch1.pt")
    torch.save(x16, folder / "batch16.pt")
    reloaded = ersm_surgery.load(folder).eval()
    with torch.no_grad():
        reloaded(x16)
    return {k: float(v.mean()) for k, v in ersm_surgery.masks(reloaded).density().items()}


def run_child(folder: Path, which: str, batch: int, args: argparse.Namespace) -> float:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(folder), which, str(batch),
           "--threads", str(args.threads), "--warmup", str(args.warmup), "--repeat", str(args.repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return statistics.median(json.loads(out)["wall_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "WHICH", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--models", default="resnet50,resnet18,convnext_atto,efficientnet_b0")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--target", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=0, help="timed calls per process (0: 41 at batch 1, 15 above)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.child:
        folder, which, batch = args.child
        child(Path(folder), which, int(batch), args.threads, args.warmup, args.repeat)
        return 0
    rows = []
    print(f"machine: {args.threads} torch threads, each model alone in its own process, {args.rounds} rounds")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            density = prepare(name, args.steps, folder, args.target)
            for batch in [int(b) for b in args.batches.split(",")]:
                sub = argparse.Namespace(**{**vars(args), "repeat": args.repeat or (41 if batch == 1 else 15)})
                walls: dict[str, list[float]] = {"timm": [], "sparse": []}
                for r in range(args.rounds):
                    for which in (("timm", "sparse") if r % 2 == 0 else ("sparse", "timm")):
                        walls[which].append(run_child(folder, which, batch, sub))
                logs = [math.log(a / b) for a, b in zip(walls["timm"], walls["sparse"], strict=True)]
                mean = statistics.fmean(logs)
                half = T975.get(len(logs) - 1, 1.96) * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 \
                    else float("nan")
                row = {"model": name, "batch": batch, "density": density,
                       "timm_ms": 1e3 * statistics.median(walls["timm"]),
                       "sparse_ms": 1e3 * statistics.median(walls["sparse"]),
                       "speedup": math.exp(mean), "interval": [math.exp(mean - half), math.exp(mean + half)],
                       "rounds": {k: [1e3 * w for w in v] for k, v in walls.items()}}
                rows.append(row)
                dens = " ".join(f"{k}={v:.3f}" for k, v in density.items())
                print(f"{name:16s} batch {batch:2d}: density {dens} | timm {row['timm_ms']:7.1f} ms sparse "
                      f"{row['sparse_ms']:7.1f} ms -> {row['speedup']:.2f}x [{row['interval'][0]:.2f}, "
                      f"{row['interval'][1]:.2f}] over {args.rounds} rounds", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
