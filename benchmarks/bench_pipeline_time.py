"""Issue #7 figures: the README's main command and `reproduce`, timed against their bounds.

1. `ersm-surgery run resnet18 --stages 2,3 --dataset builtin:clutter` with its defaults   goal <= 5 min
2. `ersm-surgery reproduce` with its defaults (--reproduce)                              goal <= 20 min

Each command runs in a child process exactly as a user types it (into a temporary folder); wall time and
the child's CPU time (user + sys, from getrusage) are printed with the ratio to the bound. Run it with
nothing else on the machine: the bounds are for an idle 2-core CPU.

    python benchmarks/bench_pipeline_time.py [--reproduce]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reproduce", action="store_true", help="also time `reproduce` (about 6-7 more minutes)")
    args = p.parse_args()
    beside = Path(sys.executable).with_name("ersm-surgery")  # the environment this script runs in
    exe = str(beside) if beside.exists() else shutil.which("ersm-surgery")
    if exe is None:
        sys.exit("ersm-surgery is not installed: pip install -e . first")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    jobs = [("run", [exe, "-q", "run", "resnet18", "--stages", "2,3", "--dataset", "builtin:clutter"], 5.0)]
    if args.reproduce:
        jobs.append(("reproduce", [exe, "-q", "reproduce"], 20.0))
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd, bound in jobs:
            wall, cpu = timed([*cmd, "-o", str(Path(tmp) / name)])
            print(f"{name}: wall {wall / 60:.2f} min (goal <= {bound:.0f} min, ratio {wall / 60 / bound:.2f}) "
                  f"[{'PASS' if wall / 60 <= bound else 'FAIL'}]; CPU time {cpu / 60:.2f} min", flush=True)


if __name__ == "__main__":
    main()
