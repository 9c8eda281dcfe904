"""Exploration for issue #13: the README main job's ERSM fine-tuning, re-run with one variant of the mask settings.

Takes the injected model of a finished ``run`` (``RUN/injected``) and fine-tunes it exactly as ``run`` did
(2 epochs of builtin:clutter, 4 classes, batch 32, lr 3e-4, seed 0, 64 px), with a variant:
``--init-logit X`` moves every score bias so the masks start at q0 = sigmoid(X) (the same as injecting with
``mask.init_logit=X``; the forward pass is unchanged while q0 >= 0.5 under the straight-through mask),
``--set mask.alpha=...`` changes a mask setting, ``--set finetune.gamma_warmup=...`` a fine-tuning one.
Prints validation top-1 (500 images) and each mask's density (mean, std across images) after every epoch;
``--seeds 0,1,2`` repeats it per fine-tuning seed (data order and the masks' random draws) beside the no-mask
baseline of the same seed, and prints the paired gap per seed and its mean. An exploration to choose what a
judged benchmark should then measure, not a judged benchmark.

    python benchmarks/explore_finetune_variants.py runs/demo --init-logit 1.0 --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import ersm_surgery
from ersm_surgery.recipe import apply_overrides
from ersm_surgery.train import FinetuneConfig, RunInputs, finetune


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a finished `ersm-surgery run` folder (its injected/ is fine-tuned)")
    p.add_argument("--init-logit", type=float, default=None, help="start the masks at q0 = sigmoid(X)")
    p.add_argument("--set", action="append", default=[], help="mask.KEY=VALUE or finetune.KEY=VALUE")
    p.add_argument("--seeds", default="0", help="fine-tuning seeds; more than one adds the paired baseline")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    gaps = []
    for seed in seeds:
        ersm = _finetune(args, seed, no_masks=False)
        if len(seeds) > 1:
            # the baseline does not depend on the mask variant: kept beside the run, keyed by seed and by the
            # fine-tuning settings a run without masks reads (epochs, lr, ...; not gamma or the masks' lr)
            cache = Path(args.run) / "explore_baselines.json"
            known = json.loads(cache.read_text()) if cache.exists() else {}
            key = _baseline_key(args, seed)
            if key not in known:
                known[key] = _finetune(args, seed, no_masks=True)
                cache.write_text(json.dumps(known))
            base = known[key]
            gaps.append(ersm - base)
            print(f"seed {seed}: ERSM {ersm:.1f}% vs baseline {base:.1f}% (gap {ersm - base:+.1f})", flush=True)
    if gaps:
        mean = statistics.mean(gaps)
        spread = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else float("nan")
        print(f"mean gap {mean:+.2f} points (standard error over seeds {spread:.2f}) over seeds {seeds}")


_MASK_ONLY = ("gamma", "gamma_warmup", "mask_lr_scale", "mask_freeze", "tau_end", "loss_brake")


def _baseline_key(args: argparse.Namespace, seed: int) -> str:
    plain = {k: v for k, v in apply_overrides({"model": "x"}, args.set)["finetune"].items() if k not in _MASK_ONLY}
    return str(seed) + (" " + json.dumps(plain, sort_keys=True) if plain else "")


def _finetune(args: argparse.Namespace, seed: int, no_masks: bool) -> float:
    source = Path(args.run) / "injected"
    overrides = apply_overrides({"model": "x"}, args.set)
    config = FinetuneConfig.from_sources({"data": "builtin:clutter", "data_options": {"num_classes": 4}, "epochs": 2,
                                          "batch_size": 32, "lr": 3e-4, "img_size": 64, "workers": 0, "seed": seed,
                                          "no_masks": no_masks}, overrides["finetune"])
    with tempfile.TemporaryDirectory() as tmp:
        if args.init_logit is not None and not no_masks:
            model = ersm_surgery.load(source)
            for layer in ersm_surgery.masks(model).layers.values():
                alpha = float(overrides["mask"].get("alpha", layer.config.alpha))  # the price it will train with
                with torch.no_grad():  # bias = alpha + init_logit * tau (layers/heads.py)
                    layer.head.score.bias.fill_(alpha + args.init_logit * layer.config.tau)
            source = Path(tmp) / "injected"
            ersm_surgery.save(model, source, force=True)
        start = time.perf_counter()
        result = finetune(RunInputs(source=str(source), output=Path(tmp) / "ft", force=True,
                                    mask=None if no_masks else overrides["mask"] or None, device="cpu"), config)
    what = "baseline" if no_masks else "ERSM"
    for row in result.rows:
        masks = ", ".join(f"{k.split('/')[1]} {row[k]:.3f} (std {row['density_std/' + k.split('/')[1]]:.3f})"
                          for k in row if k.startswith("density/"))
        print(f"seed {seed} {what} epoch {row['epoch']}: val top-1 {row['val_top1']:.1f}%, "
              f"train loss {row['train_loss']:.3f}; {masks}")
    print(f"seed {seed} {what}: wall {time.perf_counter() - start:.0f} s; warnings: {result.warnings or 'none'}",
          flush=True)
    return float(result.rows[-1]["val_top1"])


if __name__ == "__main__":
    main()
