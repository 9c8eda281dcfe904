"""Issue #17: the base's optimizer, LAMB (the rule's choice for BatchNorm CNNs) against AdamW 2e-3 (the old one).

Each model trains its base from scratch with ``pipeline.base_training.train_base`` (the rule's settings, the
gate) on builtin:clutter (4 classes, 64 px, batch 32) with a fixed plan (4 epochs of ``--pictures`` unique
pictures, the plan the time budget gave it on the 2-core machine), once with the rule and once with the rule's
optimizer replaced by AdamW at lr 2e-3, weight decay 0.05 (the settings before LAMB); same seed, same data
order, one torch thread (one thread makes each run deterministic, so the two arms differ by the optimizer
alone). Printed per run: the validation top-1 after each epoch; per model and seed the paired difference.

    python benchmarks/bench_base_optimizer.py [--models resnet18:4000,mobilenetv3_large_100:7000] [--seeds 0,1,2]

Criterion fixed before the run that judged it: adopt LAMB if every LAMB base reaches 60% and no model's mean
over seeds is more than 3 points below AdamW's.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_MODELS = "mobilenetv3_large_100:7000,resnet18:4000,efficientnet_b0:4000,regnetx_002:9000"
ADAMW = {"opt": "adamw", "lr": 2e-3, "weight_decay": 0.05}


def train(model: str, pictures: int, seed: int, arm: str, out: Path) -> list[float]:
    from ersm_surgery.pipeline import base_training as bt
    from ersm_surgery.pipeline.run import PipelineSettings, _config, _num_classes

    rule = bt.choose_base_settings

    def adamw(traits, batch_size, epochs):
        chosen = rule(traits, batch_size, epochs)
        for key, value in ADAMW.items():
            setattr(chosen, key, value)
        return chosen

    settings = PipelineSettings(model=model, stages=[2, 3], output=out, batch_size=32, base_epochs=4, seed=seed,
                                data_options={"num_classes": 4}, base_data_options={"train_size": pictures})
    config = _config(settings, 4, 1e-3, no_masks=True, data_options=settings.base_data_options, base=True)
    if arm == "adamw":
        bt.choose_base_settings = adamw
    try:
        bt.train_base(settings, config, out / "base", _num_classes(settings))
    finally:
        bt.choose_base_settings = rule
    with open(out / "base" / "summary.csv") as f:
        return [float(r["val_top1"]) for r in csv.DictReader(f)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="model:pictures,...")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for item in args.models.split(","):
        model, pictures = item.split(":")
        gaps = []
        for seed in seeds:
            best = {}
            for arm in ("lamb", "adamw"):
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    curve = train(model, int(pictures), seed, arm, Path(tmp))
                best[arm] = max(curve)
                rows.append({"model": model, "pictures": int(pictures), "seed": seed, "arm": arm, "curve": curve,
                             "seconds": round(time.perf_counter() - start)})
                print(f"{model} seed {seed} {arm:5s} 4 x {pictures}: val top-1 by epoch {curve} "
                      f"({rows[-1]['seconds']} s)", flush=True)
            gaps.append(best["lamb"] - best["adamw"])
        print(f"{model}: LAMB - AdamW best top-1 {' '.join(f'{g:+.1f}' for g in gaps)} (mean "
              f"{statistics.mean(gaps):+.1f} points over {len(gaps)} seed(s))", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
