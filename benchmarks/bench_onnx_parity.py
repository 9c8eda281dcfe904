"""ONNX parity per model and mask mode: max |onnxruntime - PyTorch| on random weights and inputs.

Run: ``python benchmarks/bench_onnx_parity.py [--all] [--json out.json]``. By default: resnet50 at 128 px and
six families at 64 px (the list of tests/test_export.py); ``--all`` adds every family of
tests/coverage_models.py. For each model and mode (hard, soft) it exports with ``export_onnx`` (the "auto"
exporter) and prints the exporter used, the largest absolute difference of the logits (and of the masks, which
are exported as extra outputs), the logits' scale and the time taken.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT = [
    ("resnet50", (3, 128, 128), (2, 3)),
    ("test_resnet", (3, 64, 64), (2, 3)),
    ("test_convnext", (3, 64, 64), (1, 2)),
    ("test_efficientnet", (3, 64, 64), (2, 3)),
    ("mobilenetv3_small_050", (3, 64, 64), (2, 3)),
    ("regnetx_002", (3, 64, 64), (2, 3)),
    ("test_byobnet", (3, 64, 64), (2, 3)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also every family of tests/coverage_models.py")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    import ersm_surgery
    from ersm_surgery.errors import ErsmError
    from ersm_surgery.io.onnx_export import export_onnx, onnx_parity

    models = list(DEFAULT)
    if args.all:
        from tests.coverage_models import COVERAGE

        models += [(name, size, stages) for _, name, size, stages in COVERAGE if name not in {m[0] for m in models}]
    rows = []
    print(f"{'model':<24} {'mode':<5} {'exporter':<12} {'max|diff| logits':>17} {'masks':>9} {'|logits|':>9} "
          f"{'time':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, size, stages in models:
            torch.manual_seed(0)
            model = ersm_surgery.inject(name, stages=list(stages), input_size=size).eval()
            x = torch.randn(3, *size, generator=torch.Generator().manual_seed(1))
            for mode in ("hard", "soft"):
                ersm_surgery.masks(model).set_mode(eval_mode=mode)
                start = time.perf_counter()
                path = Path(tmp) / f"{name}-{mode}.onnx"
                try:
                    exporter = export_onnx(model, path, size, with_masks=True)["exporter"]
                    p = onnx_parity(model, path, x, with_masks=True)
                except ErsmError as exc:
                    print(f"{name:<24} {mode:<5} FAILED: {exc}")
                    rows.append({"model": name, "mode": mode, "error": str(exc)})
                    continue
                masks_diff = max((v for k, v in p["outputs"].items() if k != "logits"), default=0.0)
                row = {"model": name, "input_size": list(size), "mode": mode, "exporter": exporter,
                       "logits_max_abs_diff": p["outputs"]["logits"], "masks_max_abs_diff": masks_diff,
                       "logits_max_abs": p["logits_max_abs"], "seconds": time.perf_counter() - start}
                rows.append(row)
                print(f"{name:<24} {mode:<5} {exporter:<12} {row['logits_max_abs_diff']:>17.2e} {masks_diff:>9.1e} "
                      f"{row['logits_max_abs']:>9.2g} {row['seconds']:>5.1f}s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
