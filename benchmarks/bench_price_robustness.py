"""Does the default price land on the first try? The defaults on a matrix of models x placements x bases.

    python benchmarks/bench_price_robustness.py                      # ~31 min on 2 idle cores (bases cached)
    python benchmarks/bench_price_robustness.py --models resnet18 --set mask.alpha=0.5   # explore one setting
    python benchmarks/bench_price_robustness.py --held-out 2000 --ft-seeds 0,1   # less noise: ~2x the time

Each cell is what ``ersm-surgery run`` does, with its defaults and nothing tuned per cell:
1. a base trained from random initialisation on builtin:clutter (4 classes, 64 px) by
   ``pipeline.base_training`` as ``run`` trains it (the rule-chosen settings and the time budget's plan:
   4 epochs of 4000 or more unique pictures): that well-trained one, and one with half its epochs on the
   same pictures; ``--full-epochs N`` fixes the full base's epochs instead (on 4000 pictures);
2. masks injected at a placement: the two stages before the last (``n-3, n-2`` of timm's feature_info),
   or one earlier stage (``n-4``);
3. two fine-tunings from the same injected model with ``run``'s settings (its protocol defaults: 2 epochs of
   2000 images, lr 3e-4, batch 32, the memory format of the base's rule; the same seed and data order): ERSM
   with the masks ``run`` injects and its fine-tuning (``pipeline.run.PIPELINE_MASK``: magnitude prior
   standardised by the data, init_logit 1, alpha 0.42 / sqrt(masks); ``PIPELINE_FINETUNE``: the masks learn to
   the end, pulled towards their injected values, ``finetune.mask_pull=0.1``),
   and the baseline without masks.

The default models are four families whose base learns in ``run``'s budget (benchmarks/README.md,
bench_run_families.py); convnext_atto is left out because its base stays at chance there (``run`` stops it
at the gate), so its cells would measure masks on a network that learned nothing; with ``--full-epochs 8`` it
memorises instead (train top-1 64%, validation 25-27%, chance 25%; 2026-12-05), and neither timm's training
augmentation nor another learning rate (1e-4, 2e-3) gave it a base that learns (docs/finetune.md).

Per cell: validation top-1 of both (the last epoch, as ``run`` reports), per mask the mean hard-mask density
on the validation images and its std across images. Criteria, fixed before the run (issue #13): a cell
passes when every mask's mean density is in [0.15, 0.65] with per-image std > 0.05 and ERSM's top-1 is within
2 points of the baseline's; the goal is >= 90% of cells passing and no cell collapsed (density < 0.05) or
open (density > 0.95). The baseline fine-tunings and the bases are cached (``--cache``): they do not depend
on the price.

``--held-out N`` judges each cell on N validation pictures (the last epoch of both fine-tunings, the same
generator and preprocessing as ``run``'s 500, its first 500 included): with 500 the paired gap of a base still
learning carries an estimated 2 points of sampling noise, as much as the criterion's margin. ``--ft-seeds`` averages
the other noise, the fine-tuning's own.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import timm
import torch

from ersm_surgery import masks
from ersm_surgery.api import inject
from ersm_surgery.data import create_dataset, make_loader, resolve_preprocessing
from ersm_surgery.io import load, save
from ersm_surgery.pipeline.base_training import model_traits, prefers_channels_last, train_base
from ersm_surgery.pipeline.run import PipelineSettings, _config, _mask_config, _train
from ersm_surgery.pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS, protocol_defaults
from ersm_surgery.train.metrics import short_name

MODELS = "resnet18,mobilenetv3_large_100,efficientnet_b0,regnetx_002"
IMG, CLASSES = 64, 4


def placements(model: str) -> dict[str, list[int]]:
    n = len(timm.create_model(model, pretrained=False, features_only=True).feature_info)
    # not in the matrix: "three" checks run's price shared over three masks (alpha / sqrt 3 each); "second" and
    # "last" split the late pair into its single masks (with --set mask.alpha=0.2121: which one costs)
    return {"late": [n - 3, n - 2], "early": [n - 4], "three": [n - 4, n - 3, n - 2], "second": [n - 3],
            "last": [n - 2]}


def parse_set(items: list[str]) -> tuple[dict, dict, dict]:
    mask, finetune, run = {}, {}, {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        {"mask": mask, "finetune": finetune, "run": run}[section][name] = parsed
    return mask, finetune, run


def settings_for(model: str, stages: list[int], out: Path, mask: dict, finetune: dict, seed: int,
                 run: dict | None = None) -> PipelineSettings:
    defaults = protocol_defaults(None, RUN_EPOCHS, RUN_BASE_IMAGES, str(out))
    fields = {"epochs": defaults["epochs"], "batch_size": defaults["batch_size"], "lr": defaults["lr"],
              "data_options": defaults["data_options"], "base_data_options": defaults["base_data_options"],
              **(run or {})}
    return PipelineSettings(model=model, stages=stages, output=out, img_size=IMG, seed=seed, device="cpu",
                            mask=mask, finetune=finetune, force=True, **fields)


def base(model: str, tag: str, full_epochs: int | None, cache: Path, seed: int) -> tuple[str, float, dict]:
    """The full base (``run``'s budget, or ``full_epochs`` on 4000 pictures) or the half one (half its epochs)."""
    if tag == "half":
        _, _, full = base(model, "full", full_epochs, cache, seed)
        epochs, pictures = max(1, full["epochs"] // 2), full.get("train_images") or RUN_BASE_IMAGES
    else:
        epochs, pictures = full_epochs, RUN_BASE_IMAGES
    folder = cache / f"base-{model}-{tag}-e{epochs or 'budget'}-s{seed}"
    record_file = folder / "bench_record.json"
    if record_file.is_file():
        rec = json.loads(record_file.read_text())
        return rec["weights"], rec["top1"], rec["plan"]
    settings = settings_for(model, [1], folder, {}, {}, seed)
    settings.base_epochs = epochs
    settings.base_data_options = {"train_size": pictures}
    config = _config(settings, epochs or 1, 1e-3, no_masks=True, data_options=settings.base_data_options, base=True)
    t0 = time.perf_counter()
    rec = train_base(settings, config, folder, CLASSES)
    top1, plan = rec["gate"]["top1"], {**rec["epochs"], "train_images": rec["epochs"].get("train_images") or pictures}
    record_file.write_text(json.dumps({"weights": rec["weights"], "top1": top1, "plan": plan}))
    print(f"  base {model} {tag}: {plan['epochs']} epochs x {plan['train_images']} pictures, top-1 {100 * top1:.1f}% "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return rec["weights"], top1, plan


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


@torch.no_grad()
def held_out_eval(folder: Path, images: int, seed: int) -> dict:
    """Top-1 and each mask's density (mean, std across images) of a fine-tuned model on ``images`` validation
    pictures of builtin:clutter: the same generator and preprocessing as ``run``'s validation split, more
    pictures. With 500 a paired gap between two models carries an estimated 2 points of sampling noise on a base still
    learning, as much as the criterion's margin."""
    model = load(folder).eval()
    data = create_dataset("builtin:clutter", "validation", seed=seed, num_classes=CLASSES, size=images,
                          preprocessing=resolve_preprocessing(model, "builtin:clutter", img_size=IMG))
    layers = masks(model)  # none on the baseline: no densities
    hits, kept = 0, {}
    for x, y in make_loader(data, 250, False, 0, 0):
        hits += int((model(x).argmax(1) == y).sum())
        for name, per_image in layers.density().items():
            kept.setdefault(short_name(name), []).append(per_image)
    dens = {name: (float(torch.cat(parts).mean()), float(torch.cat(parts).std())) for name, parts in kept.items()}
    return {"top1": 100.0 * hits / len(data), "densities": dens}


def densities(row: dict) -> dict[str, tuple[float, float]]:
    return {k[len("density/"):]: (v, row["density_std/" + k[len("density/"):]])
            for k, v in row.items() if k.startswith("density/")}


def cell(model: str, where: str, stages: list[int], weights: str, tag: str, cache: Path, work: Path,
         mask: dict, finetune: dict, seed: int, run: dict, full_epochs: int | None = None,
         held_out: int | None = None) -> dict:
    settings = settings_for(model, stages, work, mask, finetune, seed, run)
    fingerprint = (f"e{settings.epochs}-b{settings.batch_size}-lr{settings.lr:g}"
                   f"{f'-v{held_out}' if held_out else ''}")
    # bases of a fixed length are other bases than the budget's: their cells and baselines are kept apart
    tag_id = tag if full_epochs is None else f"{tag}-e{full_epochs}"
    folder = work / f"{model}-{where}-{tag_id}-{_digest([mask, finetune, run])}{f'-s{seed}' if seed else ''}"
    torch.manual_seed(seed)  # the heads' initial weights: the same for a cell whatever ran before it
    masked = inject(model, stages=stages, input_size=(3, IMG, IMG), num_classes=CLASSES, pretrained_path=weights,
                    config=_mask_config(settings))
    if "channels_last" not in settings.finetune:  # run's memory-format rule, for both fine-tunings alike
        settings.finetune = {**settings.finetune, "channels_last": prefers_channels_last(model_traits(masked))}
    save(masked, folder / "injected", force=True)
    t0 = time.perf_counter()
    ersm = _train(str(folder / "injected"), folder / "ersm", settings, settings.epochs, settings.lr)
    t_ersm = time.perf_counter() - t0
    plain_ft = {k: v for k, v in finetune.items() if not k.startswith(("gamma", "mask_", "tau", "loss_brake"))}
    base_key = cache / (f"baseline-{model}-{where}-{tag_id}-s{seed}-{fingerprint}"
                        f"{'-' + json.dumps(plain_ft, sort_keys=True) if plain_ft else ''}.json")
    if base_key.is_file():
        baseline = json.loads(base_key.read_text())
    else:
        plain = _train(str(folder / "injected"), folder / "baseline", settings, settings.epochs, settings.lr,
                       no_masks=True)
        baseline = {"top1": plain["last"]["val_top1"]}
        if held_out:
            baseline["top1"] = held_out_eval(folder / "baseline" / "last", held_out, settings.seed)["top1"]
        base_key.write_text(json.dumps(baseline))
    last = ersm["last"]
    ersm_top1, ersm_dens = last["val_top1"], densities(last)
    if held_out:
        scored = held_out_eval(folder / "ersm" / "last", held_out, settings.seed)
        ersm_top1, ersm_dens = scored["top1"], scored["densities"]
    return {"model": model, "placement": where, "stages": stages, "base": tag, "ersm_top1": ersm_top1,
            "baseline_top1": baseline["top1"], "densities": ersm_dens, "ersm_s": round(t_ersm, 1),
            "rows": [{k: v for k, v in r.items() if k.startswith(("density", "val_top1", "train_loss", "epoch"))}
                     for r in ersm["rows"]]}


def verdict(c: dict) -> tuple[bool, str]:
    why = reasons(c)
    return not why, ", ".join(why) or "pass"


def reasons(c: dict, gap_too: bool = True) -> list[str]:
    """Why a cell fails (empty: it passes); ``gap_too=False`` leaves the accuracy gap out."""
    gap = c["ersm_top1"] - c["baseline_top1"]
    ds = c["densities"].values()
    why = []
    if any(m < 0.05 for m, _ in ds):
        why.append("COLLAPSED")
    elif any(m > 0.95 for m, _ in ds):
        why.append("OPEN")
    elif not all(0.15 <= m <= 0.65 for m, _ in ds):
        why.append("density out of [0.15, 0.65]")
    if not all(s > 0.05 for _, s in ds):
        why.append("std <= 0.05")
    if gap_too and gap < -2.0:
        why.append(f"gap {gap:+.1f} < -2")
    return why


# Student's t, 97.5% quantile, for 1..10 degrees of freedom (more seeds use the value for 10: a little wide)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def over_seeds(runs: list[dict]) -> dict:
    """One cell judged over its fine-tuning seeds: the mean gap (with a 95% t interval) and every seed's densities."""
    gaps = [r["ersm_top1"] - r["baseline_top1"] for r in runs]
    n = len(gaps)
    mean = sum(gaps) / n
    sd = (sum((g - mean) ** 2 for g in gaps) / (n - 1)) ** 0.5
    half = T975[min(n - 1, len(T975)) - 1] * sd / n ** 0.5
    density_why = [f"seed {r['seed']}: {w}" for r in runs for w in reasons(r, gap_too=False)]
    why = density_why + ([f"mean gap {mean:+.1f} < -2"] if mean < -2.0 else [])
    c = {**runs[0], "seeds": [r["seed"] for r in runs], "gaps": gaps, "gap_mean": mean,
         "gap_interval": [mean - half, mean + half], "per_seed": runs, "pass": not why, "why": ", ".join(why) or "pass"}
    side = "inconclusive" if mean - half < -2.0 < mean + half else "clear"
    print(f"{'':22s} {c['placement']:5s} {str(c['stages']):7s} base {c['base']} over seeds {c['seeds']}: mean gap "
          f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] ({side} against -2) | "
          f"{'PASS' if c['pass'] else 'FAIL: ' + c['why']}", flush=True)
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--placements", default="late,early",
                    help="comma-separated: late, early (the matrix); three, second, last (diagnostics)")
    ap.add_argument("--full-epochs", type=int, default=None,
                    help="epochs of the well-trained base on 4000 pictures (default: run's time budget; the other "
                         "base: half its epochs)")
    ap.add_argument("--bases", default="full,half")
    ap.add_argument("--set", action="append", default=[],
                    help="mask.KEY=VALUE, finetune.KEY=VALUE or run.KEY=VALUE (PipelineSettings; exploration)")
    ap.add_argument("--cache", default="/tmp/ersm_bench_price")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the bases (and of the fine-tunings without --ft-seeds)")
    ap.add_argument("--ft-seeds", default=None,
                    help="comma-separated fine-tuning seeds per cell, e.g. 0,1,2 (same base): a cell passes when its "
                         "mean gap over the seeds is >= -2 and every seed's densities pass; the t interval of the "
                         "mean gap is printed")
    ap.add_argument("--held-out", type=int, default=None, metavar="N",
                    help="judge each cell on N validation pictures (both models' last epoch) instead of run's 500: "
                         "less sampling noise in the gap; the baselines are cached apart")
    ap.add_argument("--json", default=None, help="write every cell here")
    ap.add_argument("--bases-only", action="store_true", help="train and cache the bases, nothing else")
    args = ap.parse_args()
    torch.set_num_threads(2)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / "work"
    mask, finetune, run = parse_set(args.set)
    seeds = [int(v) for v in args.ft_seeds.split(",")] if args.ft_seeds else [args.seed]
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}, timm {timm.__version__}; "
          f"settings: defaults{' + ' + ' '.join(args.set) if args.set else ''}", flush=True)
    t_start = time.perf_counter()
    cells = []
    for model in args.models.split(","):
        places = placements(model)
        for tag in args.bases.split(","):
            weights, base_top1, _ = base(model, tag, args.full_epochs, cache, args.seed)
            if args.bases_only:
                continue
            for where in args.placements.split(","):
                runs = []
                for seed in seeds:
                    c = cell(model, where, places[where], weights, tag, cache, work, mask, finetune, seed, run,
                             args.full_epochs, args.held_out)
                    c["base_top1"], c["seed"] = 100 * base_top1, seed
                    c["pass"], c["why"] = verdict(c)
                    runs.append(c)
                    dens = "  ".join(f"{k} {m:.2f}±{s:.2f}" for k, (m, s) in c["densities"].items())
                    print(f"{model:22s} {where:5s} {str(c['stages']):7s} base {tag} {c['base_top1']:5.1f} |"
                          f"{f' seed {seed} |' if len(seeds) > 1 else ''} ERSM {c['ersm_top1']:5.1f} baseline "
                          f"{c['baseline_top1']:5.1f} gap {c['ersm_top1'] - c['baseline_top1']:+5.1f} | {dens} | "
                          f"{'PASS' if c['pass'] else 'FAIL: ' + c['why']} ({c['ersm_s']:.0f}s)", flush=True)
                cells.append(runs[0] if len(runs) == 1 else over_seeds(runs))
    passed = sum(c["pass"] for c in cells)
    broken = sum(("COLLAPSED" in c["why"]) or ("OPEN" in c["why"]) for c in cells)
    share = passed / max(1, len(cells))
    goal = "PASS" if share >= 0.9 and broken == 0 else "FAIL"
    print(f"\n{passed}/{len(cells)} cells pass ({100 * share:.0f}%; goal >= 90%), {broken} collapsed or open "
          f"(goal 0)  [{goal}]  wall {time.perf_counter() - t_start:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
