"""Issue #14, coverage: every timm model module gated and run sparsely, or refused in one line.

One model per timm model module (the smallest, as bench_coverage.py picks it), each in its own child process
with a time limit, at 128 px where the model runs at that size (its default input size otherwise), with masks
after the two ``feature_info`` stages before the last, injected with ``mask.gate=stage``. The masks are then
fixed to mixed batches (an image keeping every token, one keeping none, blobs of random density:
tests/sparse_helpers.py) and the norms given random statistics, and ``sparse(model)`` runs with the sparse
path forced (``break_even=1.0``) against the same masked model computed densely.

Verdicts, one line per family:
  rows       every op of every gated stage ran on rows; logits within float rounding of the dense gated model
  N dense    exact, with N ops that ran densely (named; each runs densely for that op only)
  refused    inject or sparse said no in one line (an ``ErsmError``: a model the gate or the runtime cannot take)
  FAIL       anything else: a crash (any other exception), a mismatch, a timeout

    python benchmarks/bench_sparse_coverage.py [--families resnet,convnext] [--timeout 180] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import traceback
from pathlib import Path

from bench_coverage import _reason, _stages, chosen_families, run_one, smallest

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128


def _size(model) -> tuple[int, int, int]:
    """128 px when the model runs at that size, else its default input size (fixed-size position embeddings)."""
    import torch

    default = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    small = (default[0], SIZE, SIZE)
    if default[1:] == small[1:]:
        return default
    try:
        with torch.no_grad():
            model(torch.randn(1, *small))
        return small
    except Exception:  # noqa: BLE001 - any failure at 128 px means: use the model's own size
        return default


def check_sparse(name: str, result: dict, on_step=lambda step: None) -> None:
    """Fills ``result`` with ``verdict`` (rows | dense | refused | FAIL) and the details."""
    import timm
    import torch

    import ersm_surgery
    from ersm_surgery import plugins
    from ersm_surgery.errors import ErsmError
    from ersm_surgery.sparse import sparse_regions
    from ersm_surgery.sparse.measure import _sparse_flop_share

    sys.path.insert(0, str(ROOT))
    from tests.sparse_helpers import fix_masks, randomise_norms

    plugins.load_plugins()
    torch.manual_seed(0)
    step = "create"
    on_step(step)
    try:
        base = timm.create_model(name).eval()
        size = _size(base)
        stages = _stages(base)
        result.update(size=list(size), stages=stages)

        step = "inject"
        on_step(step)
        try:
            model = ersm_surgery.inject(base, stages=stages, config={"gate": "stage"}, input_size=size).eval()
        except ErsmError as exc:
            result.update(verdict="refused", step=step, reason=" ".join(str(exc).split()))
            return
        randomise_norms(model)
        fix_masks(model)

        step = "sparse"
        on_step(step)
        try:
            fast = ersm_surgery.sparse(model, break_even=1.0)
        except ErsmError as exc:
            result.update(verdict="refused", step=step, reason=" ".join(str(exc).split()))
            return

        step = "compare"
        on_step(step)
        x = torch.randn(4, *size)
        with torch.no_grad():
            dense, out = model(x), fast(x)
        dense = dense[0] if isinstance(dense, (tuple, list)) else dense
        out = out[0] if isinstance(out, (tuple, list)) else out
        regions = sparse_regions(fast)
        diff = float((out - dense).abs().max())
        scale = float(dense.abs().max())
        dense_ops = sorted({op for r in regions.values() for op in r.dense_ops()})
        with torch.no_grad():
            share = _sparse_flop_share(model, regions, x)
        result.update(regions=sorted(regions), ran_sparse=all(r.stats.ran_sparse for r in regions.values()),
                      max_abs_diff=diff, max_abs_logit=scale, dense_ops=dense_ops, sparse_flop_share=share)
        if not regions:
            raise AssertionError("sparse() made no region")
        if not result["ran_sparse"]:
            raise AssertionError("a region ran densely with the sparse path forced")
        if not diff <= max(1e-4, 1e-5 * scale):
            raise AssertionError(f"sparse logits differ from the dense gated model's by {diff:.3g} (max |logit| "
                                 f"{scale:.3g})")
        result.update(verdict="dense" if dense_ops else "rows", step="done")
    except BaseException as exc:  # every failure is reported as one line, never raised
        result.update(verdict="FAIL", step=step, reason=_reason(exc))
        if "--debug" in sys.argv:
            traceback.print_exc()


def _line(rec: dict) -> str:
    verdict = rec.get("verdict", "FAIL")
    if verdict in ("rows", "dense"):
        # relative to the largest logit: random norm statistics grow some models' logits by orders of magnitude
        exact = (f"FLOPs on rows {rec['sparse_flop_share']:.3f}, max|diff| {rec['max_abs_diff']:.1e} of max|logit| "
                 f"{rec['max_abs_logit']:.1e}")
        if verdict == "rows":
            return f"rows ({len(rec['regions'])} regions, {exact})"
        ops = rec["dense_ops"]
        return f"{len(ops)} dense ({', '.join(ops[:3])}{', ...' if len(ops) > 3 else ''}; {exact})"
    if verdict == "refused":
        return f"refused at {rec['step']}: {rec['reason']}"
    return f"FAIL at {rec.get('step')}: {rec.get('reason')}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", help="comma-separated timm model modules (default: all)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per family")
    p.add_argument("--threads", type=int, default=0, help="torch threads per family (default: torch's own)")
    p.add_argument("--json", type=Path, help="write every family's record here")
    p.add_argument("--debug", action="store_true", help="print each failure's traceback")
    args = p.parse_args()

    import timm
    import torch

    fams, chosen = chosen_families(args.families)
    print(f"timm {timm.__version__}, torch {torch.__version__}, {platform.machine()}", flush=True)
    records = []
    for fam in chosen:
        name = smallest(fams[fam])
        rec = {"family": fam, "model": name, **run_one(name, args.timeout, args.threads, check=check_sparse)}
        rec.setdefault("verdict", "FAIL")
        records.append(rec)
        print(f"{fam:<28} {name:<36} {rec['seconds']:>6.1f} s  {_line(rec)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(records, indent=1))
    counts = {v: sum(r["verdict"] == v for r in records) for v in ("rows", "dense", "refused", "FAIL")}
    print(f"\n{len(records)} families: {counts['rows']} every op on rows, {counts['dense']} exact with some ops dense, "
          f"{counts['refused']} refused in one line, {counts['FAIL']} FAIL (crash, mismatch or timeout)")


if __name__ == "__main__":
    main()
