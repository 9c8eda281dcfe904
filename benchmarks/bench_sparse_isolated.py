"""The timm model and its sparse copy, each timed alone in a process of its own (issue 14).

    flock /tmp/ersm-cpu.lock python benchmarks/bench_sparse_isolated.py    # ~15 min on 2 cores
    python benchmarks/bench_sparse_isolated.py --models resnet50 --batches 16 --rounds 3

Why: bench_sparse.py (and ``ersm-surgery bench`` without ``--isolate``) alternate the dense and the sparse
model call by call in one process, after that process trained the mask heads. At batch 16 the feature maps
are tens of MB, which glibc hands back to the system and pages in again, so a model's time depends on what
the process allocated before: timm's resnet50 at batch 16 took 790 ms in a process that had trained the heads
and 826-892 ms in a fresh one (2026-12-05). A deployment runs one model in its own process; this script
measures that, the process-to-process variation inside its interval.

How: the masked models are prepared exactly as in bench_sparse.py (``prepared``: mask heads trained
``--steps`` steps at 64 px; ``shift_price`` to 0.4 of the tokens at 224 px on its 16 validation images),
each mask's shifted price folded into its score bias (u = alpha - s is unchanged, so the saved recipe's alpha
holds) and the model saved with ``ersm_surgery.save``. Then ``ersm_surgery.eval.isolated.isolated_latency``
(what ``ersm-surgery bench --isolate`` runs): for ``--rounds`` rounds, two fresh processes per batch size (their
order alternating by round) each load the model, build either the plain timm model (same weights, no masks) or
``ersm_surgery.sparse(model)``, run ``--warmup`` calls and time ``--repeat``; a round's ratio is the two
medians' ratio. Reported: the geometric mean of the round ratios with a 95% t
interval over rounds, and each model's median over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from ersm_surgery.eval.isolated import isolated_latency

HERE = Path(__file__).resolve().parent


def prepare(name: str, steps: int, folder: Path, target: float) -> tuple[torch.nn.Module, dict[str, float],
                                                                        dict[int, torch.Tensor]]:
    """``name`` with masks at ``target`` (bench_sparse's preparation), saved and loaded back (the price folded
    into the bias must survive the file the timing processes read), its masks' densities on the 16 images and
    its batch-1 and batch-16 inputs."""
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
    reloaded = ersm_surgery.load(folder).eval()  # what is timed: the saved model with its price in the bias
    with torch.no_grad():
        reloaded(x16)
    density = {k: float(v.mean()) for k, v in ersm_surgery.masks(reloaded).density().items()}
    return reloaded, density, {1: x1, 16: x16}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    rows = []
    print(f"machine: {args.threads} torch threads, each model alone in its own process, {args.rounds} rounds")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            model, density, inputs = prepare(name, args.steps, folder, args.target)
            for batch in [int(b) for b in args.batches.split(",")]:
                x = inputs[batch]
                iso = isolated_latency(model, x, rounds=args.rounds, repeat=args.repeat or (41 if batch == 1 else 15),
                                       warmup=args.warmup, threads=args.threads)
                row = {"model": name, "batch": batch, "density": density,
                       "timm_ms": 1e3 * statistics.median(iso["dense_s"]),
                       "sparse_ms": 1e3 * statistics.median(iso["sparse_s"]),
                       "speedup": iso["speedup"], "interval": iso["speedup_interval"],
                       "rounds": {"timm": [1e3 * w for w in iso["dense_s"]],
                                  "sparse": [1e3 * w for w in iso["sparse_s"]]}}
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
