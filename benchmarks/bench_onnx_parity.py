"""ONNX parity of fine-tuned masked models: what the export validation measures, per family and mask mode.

Run: ``python benchmarks/bench_onnx_parity.py [--families a,b] [--images 64] [--json out.json]``.

For each family: inject masks (random init), fine-tune ``--epochs`` (1) on builtin:clutter (``--train-size`` images,
64 px unless the family needs more) with ersm-surgery's own loop, so that the weights, logits and energies
are those of a trained model rather than of random init; then export to ONNX and validate, in both mask modes,
on ``--images`` evaluation images of the validation split, with ``ersm_surgery.io.onnx_validation`` (the check
``export`` runs) at its default tolerances. Printed per row: the logits' largest absolute and relative
difference and their scale, top-1 agreement, the largest token-energy difference, mask flips near / far from
the threshold, and whether the default check passes. ``--random`` instead runs the old check: random weights.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (model, input size, stages): eight CNN families of the issue, two more, and a ViT through the token-grid plugin
FAMILIES = [
    ("resnet18", (3, 64, 64), (2, 3)),
    ("efficientnet_b0", (3, 64, 64), (2, 3)),
    ("mobilenetv3_large_100", (3, 64, 64), (2, 3)),
    ("convnext_atto", (3, 64, 64), (1, 2)),
    ("regnetx_002", (3, 64, 64), (2, 3)),
    ("resnet50d", (3, 64, 64), (2, 3)),
    ("densenet121", (3, 64, 64), (2, 3)),
    ("ghostnet_100", (3, 64, 64), (2, 3)),
    ("repvgg_a0", (3, 64, 64), (2, 3)),
    ("mixnet_s", (3, 64, 64), (2, 3)),
    ("test_vit", (3, 160, 160), (1, 3)),
]
RANDOM_INIT = [
    ("resnet50", (3, 128, 128), (2, 3)),
    ("test_resnet", (3, 64, 64), (2, 3)),
    ("test_convnext", (3, 64, 64), (1, 2)),
    ("test_efficientnet", (3, 64, 64), (2, 3)),
    ("mobilenetv3_small_050", (3, 64, 64), (2, 3)),
    ("regnetx_002", (3, 64, 64), (2, 3)),
    ("test_byobnet", (3, 64, 64), (2, 3)),
]
NUM_CLASSES = 4


def finetuned(name: str, size, stages, work: Path, train_size: int, seed: int, epochs: int = 1):
    """The family injected and fine-tuned for ``epochs`` on builtin:clutter; returns the loaded model."""
    import ersm_surgery
    from ersm_surgery.train import FinetuneConfig, RunInputs, finetune

    torch.manual_seed(seed)
    model = ersm_surgery.inject(name, stages=list(stages), input_size=size, num_classes=NUM_CLASSES)
    ersm_surgery.save(model, work / f"{name}-injected", force=True)
    config = FinetuneConfig.from_sources({
        "data": "builtin:clutter", "data_options": {"num_classes": NUM_CLASSES, "size": train_size}, "epochs": epochs,
        "batch_size": 32, "lr": 2e-3, "img_size": size[-1], "seed": seed, "workers": 0,
    }, {})
    inputs = RunInputs(source=str(work / f"{name}-injected"), output=work / f"{name}-ft", force=True, device="cpu")
    result = finetune(inputs, config)
    return ersm_surgery.load(work / f"{name}-ft" / "last"), result.rows[-1] if result.rows else {}


def eval_images(size, count: int, seed: int) -> torch.Tensor:
    from ersm_surgery.data import create_dataset
    from ersm_surgery.eval.images import load_images

    data = create_dataset("builtin:clutter", split="validation", img_size=size[-1], seed=seed,
                          num_classes=NUM_CLASSES)
    return load_images(data, count, seed).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", help="comma-separated subset of the model names")
    parser.add_argument("--images", type=int, default=64, help="evaluation images validated on")
    parser.add_argument("--train-size", type=int, default=1024, help="images of the one fine-tuning epoch")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--random", action="store_true", help="random weights instead (the earlier benchmark)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    import ersm_surgery
    from ersm_surgery.errors import ErsmError
    from ersm_surgery.io.onnx_export import export_onnx
    from ersm_surgery.io.onnx_validation import OnnxTolerance, validate_onnx

    families = RANDOM_INIT if args.random else FAMILIES
    if args.families:
        wanted = args.families.split(",")
        families = [f for f in families if f[0] in wanted]
    tol = OnnxTolerance()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} (shared with other jobs when above the core count); "
          f"torch {torch.__version__}")
    print(f"check: |diff| <= atol {tol.atol:g} + rtol {tol.rtol:g} x max|output| per output; hard-mask flips with "
          f"|e| <= {tol.flip_margin:g} x max(1, max|e|) in both runtimes are near (reported), others far (fail)")
    print(f"{'model':<22} {'mode':<4} {'val top1%':>10} {'max|diff|':>9} {'rel':>8} {'|logits|':>8} {'top-1':>6} "
          f"{'max|de|':>8} {'|e|':>7} {'de rel':>7} {'flips n/f':>9} {'pass':>5} {'time':>6}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, size, stages in families:
            start = time.perf_counter()
            try:
                if args.random:
                    torch.manual_seed(args.seed)
                    model, last = ersm_surgery.inject(name, stages=list(stages), input_size=size).eval(), {}
                    x = torch.randn(args.images, *size, generator=torch.Generator().manual_seed(1))
                else:
                    model, last = finetuned(name, size, stages, work, args.train_size, args.seed, args.epochs)
                    x = eval_images(size, args.images, args.seed)
            except ErsmError as exc:
                print(f"{name:<22} FAILED to prepare: {exc}", flush=True)
                rows.append({"model": name, "error": str(exc)})
                continue
            trained = time.perf_counter() - start
            for mode in ("hard", "soft"):
                ersm_surgery.masks(model).set_mode(eval_mode=mode)
                start = time.perf_counter()
                path = work / f"{name}-{mode}.onnx"
                try:
                    info = export_onnx(model, path, size)
                    r = validate_onnx(model, path, x, size, tolerance=tol, opset=info["opset"],
                                      exporter=info["exporter"], workdir=work)
                except ErsmError as exc:
                    print(f"{name:<22} {mode:<4} FAILED: {exc}", flush=True)
                    rows.append({"model": name, "mode": mode, "error": str(exc)})
                    continue
                logits = r["outputs"]["logits"]
                energy = max((m["max_energy_diff"] for m in r["masks"].values()), default=0.0)
                e_scale = max((m["energy_scale"] for m in r["masks"].values()), default=0.0)
                e_rel = max((m["max_energy_diff"] / max(1.0, m["energy_scale"]) for m in r["masks"].values()),
                            default=0.0)
                top1 = last.get("val_top1", last.get("top1"))
                row = {"model": name, "input_size": list(size), "stages": list(stages), "mode": mode,
                       "exporter": info["exporter"], "train_row": last, "logits": logits,
                       "top1_agreement": r["top1_agreement"], "max_energy_diff": energy, "energy_scale": e_scale,
                       "energy_rel_diff": e_rel,
                       "flips": r["mask_flips"], "replayed": r["replayed"], "ok": r["ok"], "failures": r["failures"],
                       "images": int(x.shape[0]), "seconds": time.perf_counter() - start, "train_seconds": trained}
                rows.append(row)
                flips = f"{r['mask_flips']['near']}/{r['mask_flips']['far']}"
                top1_text = f"{top1:.3f}" if isinstance(top1, float) else "-"
                print(f"{name:<22} {mode:<4} {top1_text:>10} {logits['max_abs_diff']:>9.2e} "
                      f"{logits['max_rel_diff']:>8.1e} {logits['scale']:>8.3g} {r['top1_agreement']:>6.1%} "
                      f"{energy:>8.1e} {e_scale:>7.3g} {e_rel:>7.1e} {flips:>9} {'yes' if r['ok'] else 'NO':>5} "
                      f"{row['seconds']:>5.1f}s", flush=True)
                if r["failures"]:
                    print(f"    {'; '.join(r['failures'])}", flush=True)
    passed = [r for r in rows if r.get("ok")]
    print(f"passed {len(passed)} of {len(rows)} rows; top-1 agreement 100% in "
          f"{sum(r.get('top1_agreement') == 1.0 for r in rows)} of {len(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
