"""Issue #16: every timm model module masks end to end (goal: >= 93 of timm 1.0.31's 98 families).

One model per timm model module (``timm.models._registry._model_to_module``): the smallest by parameter
count, counted on the meta device (no weights are made or downloaded). Each family runs in its own child
process with a time limit, at the model's own default input size, with its default classifier (a headless
model, ``num_classes=0``, stays headless), masks after the two ``feature_info`` stages before the last
(the one before the last when the model lists two), and the plugins installed in this environment.

Checks, in order; the first that fails is the family's one-line reason:
  inject     ``ersm_surgery.inject`` succeeds
  preserve   in eval mode the masked model's outputs equal the unmasked model's (max |diff| <= 1e-4 x scale)
  backward   a train-mode loss (task + regularizer) reaches every mask parameter with a finite, non-zero
             gradient (that the task reaches each mask's map, inject checks itself)
  parity     in train mode (norms held at their running statistics) the masked model computes what the
             original computes, random draws included (same seed): fx froze no DropPath draw and dropped
             no dropout
  save/load  ``save`` then ``load`` rebuilds the model offline with the same eval outputs

    python benchmarks/bench_coverage.py [--families resnet,vit] [--timeout 240] [--json out.json] [--markdown]
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

CHECKS = ("inject", "preserve", "backward", "parity", "save/load")


def families() -> dict[str, list[str]]:
    """timm model module -> its model names."""
    from timm.models import _registry

    out: dict[str, list[str]] = {}
    for name, module in _registry._model_to_module.items():
        out.setdefault(module, []).append(name)
    return dict(sorted(out.items()))


def _param_count(name: str) -> int | None:
    import warnings

    import timm
    import torch

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's notes on deprecated aliases
            model = timm.create_model(name)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # a model that cannot be built on meta is simply not a candidate
        return None


def smallest(names: list[str]) -> str:
    """The member with the fewest parameters (timm's ``test_*`` models first: they exist to be small)."""
    tests = sorted(n for n in names if n.startswith("test_"))
    pool = tests or sorted(names)
    counted = [(c, n) for n in pool if (c := _param_count(n)) is not None]
    return min(counted)[1] if counted else pool[0]


def _stages(model) -> list[int]:
    from ersm_surgery.surgery.analysis import feature_info

    n = len(feature_info(model))
    if n >= 3:
        return [n - 3, n - 2]
    return [n - 2] if n == 2 else [0]


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _outputs(model, x):
    import torch

    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _close(a, b) -> tuple[bool, float]:
    diff = float((a - b).abs().max())
    return diff <= 1e-4 * max(1.0, float(a.abs().max())), diff


def _hold_norms(model) -> None:
    """Train mode with every normalisation at its running statistics and every random layer off."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) or isinstance(m, nn.Dropout):
            m.eval()
        if type(m).__name__ == "DropPath":
            m.eval()


def check_family(name: str, result: dict, on_step=lambda step: None) -> None:
    """Runs the checks on ``name``; fills ``result`` as it goes and reports each step to ``on_step`` (so a
    timeout still says how far it got)."""
    import timm
    import torch

    import ersm_surgery
    from ersm_surgery import plugins

    plugins.load_plugins()
    torch.manual_seed(0)
    step = "create"
    on_step(step)
    try:
        base = timm.create_model(name).eval()
        size = tuple(base.pretrained_cfg.get("input_size", (3, 224, 224)))
        result.update(size=list(size), num_classes=int(getattr(base, "num_classes", -1)))
        stages = _stages(base)
        result["stages"] = stages
        original = copy.deepcopy(base)
        x = torch.randn(2, *size)

        step = "inject"
        on_step(step)
        model = ersm_surgery.inject(base, stages=stages, input_size=size)
        result["adapters"] = sorted({p.adapter or "-" for p in model.ersm_recipe.placements})
        result["methods"] = sorted({p.method for p in model.ersm_recipe.placements})
        if len(ersm_surgery.masks(model)) != len(stages):
            raise AssertionError(f"{len(stages)} stages but {len(ersm_surgery.masks(model))} mask layers")

        step = "preserve"
        on_step(step)
        model.eval()
        ok, diff = _close(_outputs(original, x), _outputs(model, x))
        if not ok:
            raise AssertionError(f"eval outputs differ from the unmasked model by {diff:.3g}")

        step = "backward"
        on_step(step)
        layers = ersm_surgery.masks(model)
        model.train()
        _hold_norms(model)
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        # with the regularizer, as in training: an open mask's sigmoid may saturate and a zero-initialised head
        # (Hiera's) zeroes the task's gradient at the start; that the task reaches each mask's map is checked
        # by inject itself (surgery/reach.py)
        (out.float().square().mean() + layers.regularizer()).backward()
        unreached = [f"{where}.{n}" for where, layer in layers.items() for n, p in layer.named_parameters()
                     if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
        if unreached:
            raise AssertionError(f"{len(unreached)} mask parameters get no gradient (first: {unreached[0]})")

        step = "parity"
        on_step(step)
        # the open masks' train graph computes what the original computes in train mode, random draws
        # included (fx must not freeze DropPath's draw, nor drop a functional dropout): same seed, same output
        original.train()
        _hold_norms(original)
        torch.manual_seed(1)
        reference = _outputs(original, x)
        torch.manual_seed(1)
        ok, diff = _close(reference, _outputs(model, x))
        if not ok:
            raise AssertionError(f"the train graph differs from the original's train mode by {diff:.3g}")
        model.eval()

        step = "save/load"
        on_step(step)
        expected = _outputs(model, x)
        with tempfile.TemporaryDirectory() as tmp:
            ersm_surgery.save(model, Path(tmp) / "m")
            loaded = ersm_surgery.load(Path(tmp) / "m").eval()
            ok, diff = _close(expected, _outputs(loaded, x))
        if not ok:
            raise AssertionError(f"the loaded model differs by {diff:.3g}")
        result.update(passed=True, step="done")
    except BaseException as exc:  # every failure is reported as one line, never raised
        result.update(passed=False, step=step, reason=_reason(exc))
        if "--debug" in sys.argv:
            traceback.print_exc()


def chosen_families(spec: str | None) -> tuple[dict[str, list[str]], list[str]]:
    """Every timm model module with its models, and the ones ``spec`` (comma-separated; None: all) names; exits
    with one line naming any unknown module."""
    fams = families()
    chosen = spec.split(",") if spec else list(fams)
    unknown = [f for f in chosen if f not in fams]
    if unknown:
        sys.exit(f"unknown timm model modules: {', '.join(unknown)}")
    return fams, chosen


def _progress_file(pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"ersm-coverage-{pid}.step"


def _child(name: str, threads: int, queue, check=None) -> None:
    import os

    import torch

    if threads:
        torch.set_num_threads(threads)
    result: dict = {}
    progress = _progress_file(os.getpid())
    (check or check_family)(name, result, on_step=progress.write_text)
    progress.unlink(missing_ok=True)
    queue.put(result)


def run_one(name: str, timeout: float, threads: int = 0, check=None) -> dict:
    """Runs ``check(name, result, on_step)`` (default :func:`check_family`; a module-level function, for the
    spawned child) in a child process with a time limit; returns its ``result`` and the seconds it took."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start = time.perf_counter()
    proc = ctx.Process(target=_child, args=(name, threads, queue, check))
    proc.start()
    try:
        result = queue.get(timeout=timeout)
    except Exception:
        progress = _progress_file(proc.pid)
        step = progress.read_text() if progress.exists() else "start"
        result = {"passed": False, "step": step, "reason": f"no answer within {timeout:.0f} s (hang or too slow)"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    _progress_file(proc.pid).unlink(missing_ok=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", help="comma-separated timm module names (default: all)")
    p.add_argument("--timeout", type=float, default=1200.0,
                   help="seconds per family (the largest smallest members, 400M parameters at 768 px, take minutes)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per family (default: torch's own)")
    p.add_argument("--json", type=Path, help="write every family's record here")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown for benchmarks/README.md")
    p.add_argument("--debug", action="store_true", help="print each failure's traceback")
    args = p.parse_args()

    import timm
    import torch

    from ersm_surgery import plugins

    infos = plugins.load_plugins()
    fams, chosen = chosen_families(args.families)
    print(f"timm {timm.__version__}, torch {torch.__version__}, {platform.machine()}, plugins: "
          f"{', '.join(sorted(i.owner for i in infos if i.status == 'ok')) or 'none'}", flush=True)
    records = []
    for fam in chosen:
        name = smallest(fams[fam])
        rec = {"family": fam, "model": name, **run_one(name, args.timeout, args.threads)}
        records.append(rec)
        verdict = "PASS" if rec["passed"] else f"FAIL at {rec['step']}: {rec['reason']}"
        print(f"{fam:<28} {name:<36} {rec['seconds']:>6.1f} s  {verdict}", flush=True)
    passed = sum(r["passed"] for r in records)
    print(f"\n{passed}/{len(records)} families pass (goal >= 93/98 over all of them)")
    if args.markdown:
        print("\n| family | model | size | stages | result |\n|---|---|---|---|---|")
        for r in records:
            size = "x".join(map(str, r.get("size", [])[1:])) or "-"
            res = "pass" if r["passed"] else f"{r['step']}: {r['reason']}".replace("|", "/")
            print(f"| {r['family']} | {r['model']} | {size} | {r.get('stages', '-')} | {res} |")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
