"""Issue #7 and #15 figures: the README's main command and `reproduce`, timed against their bounds.

1. `ersm-surgery run resnet18 --stages 2,3 --dataset builtin:clutter` with its defaults   goal <= 5 min
2. `ersm-surgery reproduce --model M` with its defaults (3 seeds), per model (--reproduce) goal <= 20 min each

Each command runs in a child process exactly as a user types it (into a temporary folder, or --keep DIR);
wall time and the child's CPU time (user + sys, from getrusage) are printed with the ratio to the bound.
For reproduce it then prints both criteria tables from claims.json and claim (f)'s figures: top-1 of both
models on the cued and the decorrelated validation images, each with a 95% interval over seeds x images.
Run it with nothing else on the machine: the bounds are for an idle 2-core CPU.

    python benchmarks/bench_pipeline_time.py [--reproduce [--models resnet18,efficientnet_b0]] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one command; stops on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _claims(folder: Path) -> None:
    """Both criteria tables of one reproduce run, and claim (f)'s accuracies with intervals."""
    import json

    import numpy as np

    from ersm_surgery.eval.results_schema import Results
    from ersm_surgery.eval.stats import bootstrap

    record = json.loads((folder / "claims.json").read_text())
    print(f"  criteria version 1 (seed {record['seeds'][0]}):")
    for r in record["criteria"]["1"]:
        fig = "-" if r["ersm"] is None else f"{r['ersm']:.4f} vs {r['comparison']:.4f}"
        print(f"    {r['claim']:<50} {fig:<22} {r['verdict']}")
    print(f"  criteria version 2 (seeds {record['seeds']}):")
    for r in record["criteria"]["2"]:
        fig = "-" if r["estimate"] is None else f"{r['estimate']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]"
        print(f"    {r['claim']:<50} {fig:<32} margin {r['margin']:+g}  {r['verdict']}")
    per_seed = [Results.from_dict(json.loads(Path(p).read_text())).per_image for p in record["results"]]
    if all(p is not None and p.shift for p in per_seed):
        print("  claim (f): top-1 with the cue naming the class (cued) and independent of it (decorrelated)")
        for role in ("model", "baseline"):
            for split in ("cued", "decorrelated"):
                iv = bootstrap([{"images": {"v": p.shift[role][split]}} for p in per_seed],
                               lambda s: float(np.mean(s["images"]["v"])))
                print(f"    {'ERSM' if role == 'model' else 'baseline':<9}{split:<13} {iv.fmt(4)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reproduce", action="store_true", help="also time `reproduce` per model (3 seeds each)")
    p.add_argument("--models", default="resnet18", help="comma-separated models for --reproduce")
    p.add_argument("--keep", type=Path, help="write the runs here instead of a temporary folder")
    p.add_argument("--no-run", action="store_true", help="skip the `run` timing")
    p.add_argument("--reproduce-args", default="", help="more reproduce flags, e.g. a tiny smoke setting "
                   "('--seeds 2 --epochs 1 --base-epochs 1 --data-size 64 --num-images 16 --force-base')")
    args = p.parse_args()
    beside = Path(sys.executable).with_name("ersm-surgery")  # the environment this script runs in
    exe = str(beside) if beside.exists() else shutil.which("ersm-surgery")
    if exe is None:
        sys.exit("ersm-surgery is not installed: pip install -e . first")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    jobs = [] if args.no_run else [("run", [exe, "-q", "run", "resnet18", "--stages", "2,3", "--dataset",
                                            "builtin:clutter"], 5.0)]
    if args.reproduce:
        extra = args.reproduce_args.split()
        jobs += [(f"reproduce-{m}", [exe, "-q", "reproduce", "--model", m, *extra], 20.0)
                 for m in args.models.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for name, cmd, bound in jobs:
            wall, cpu = timed([*cmd, "-o", str(root / name)])
            print(f"{name}: wall {wall / 60:.2f} min (goal <= {bound:.0f} min, ratio {wall / 60 / bound:.2f}) "
                  f"[{'PASS' if wall / 60 <= bound else 'FAIL'}]; CPU time {cpu / 60:.2f} min", flush=True)
            if name.startswith("reproduce"):
                _claims(root / name)


if __name__ == "__main__":
    main()
