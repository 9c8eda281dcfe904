"""The timm model and ``sparse(model)``, each timed alone in a fresh process (``ersm-surgery bench --isolate``).

Timing the two side by side in one process is what ``bench`` does by default. At larger batches the feature
maps are tens of MB, which glibc returns to the system and pages in again, so a model's time depends on what
its process allocated before: timm's resnet50 at batch 16 (2 cores, 2026-12-05) took 790 ms in a process that
had trained mask heads first and 826-892 ms in fresh ones. A deployment runs one model in its own process:
this is that measurement, with the process-to-process variation inside its interval.

The model is saved once (``io.save``) with the input batch; each round starts two processes (their
order alternating by round), each loading the model, building the plain timm model or the sparse copy,
warming up and timing alone. A round's ratio pairs the two processes' medians.
"""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import SparseError

__all__ = ["isolated_latency"]

# two-sided 95% t quantiles by degrees of freedom (rounds - 1)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def isolated_latency(model: nn.Module, x: torch.Tensor, rounds: int = 3, repeat: int = 10, warmup: int = 2,
                     threads: int | None = None, break_even: float | None = None) -> dict:
    """Median wall time of the plain timm model and of ``sparse(model)``, each alone in its own process.

    Returns ``{"rounds", "dense_s": [per round], "sparse_s": [per round], "speedup" (geometric mean of the
    round ratios), "speedup_interval": [low, high] (95% t interval over rounds; NaN with one round)}``.

    Raises:
        SparseError: a timing process failed (its last line of error output is in the message).
    """
    from ..io.artifact import save

    threads = threads or torch.get_num_threads()
    walls: dict[str, list[float]] = {"dense": [], "sparse": []}
    with tempfile.TemporaryDirectory(prefix="ersm-bench-") as tmp:
        folder = Path(tmp) / "model"
        save(model, folder)
        torch.save(x.detach().cpu().contiguous(), Path(tmp) / "x.pt")
        for r in range(rounds):
            for which in (("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")):
                walls[which].append(_run(folder, Path(tmp) / "x.pt", which, repeat, warmup, threads, break_even))
    logs = [math.log(d / s) for d, s in zip(walls["dense"], walls["sparse"], strict=True)]
    mean = statistics.fmean(logs)
    half = _T975.get(len(logs) - 1, 1.96) * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 \
        else float("nan")
    return {"rounds": rounds, "dense_s": walls["dense"], "sparse_s": walls["sparse"], "speedup": math.exp(mean),
            "speedup_interval": [math.exp(mean - half), math.exp(mean + half)]}


def _run(folder: Path, x_path: Path, which: str, repeat: int, warmup: int, threads: int,
         break_even: float | None) -> float:
    cmd = [sys.executable, "-m", __name__, str(folder), str(x_path), which, str(repeat), str(warmup), str(threads),
           "" if break_even is None else str(break_even)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SparseError(f"the {which} timing process failed: {last}",
                          "time the models in this process (leave out --isolate)")
    return statistics.median(json.loads(done.stdout.strip().splitlines()[-1])["wall_s"])


def _child(folder: str, x_path: str, which: str, repeat: str, warmup: str, threads: str, break_even: str) -> None:
    from ..io.artifact import load
    from ..sparse.measure import plain_model
    from ..sparse.model import DEFAULT_BREAK_EVEN, sparse

    torch.set_num_threads(int(threads))
    masked = load(folder).eval()
    if which == "sparse":
        model = sparse(masked, break_even=float(break_even) if break_even else DEFAULT_BREAK_EVEN)
    else:
        model = plain_model(masked)
    del masked
    x = torch.load(x_path)
    walls = []
    with torch.no_grad():
        for _ in range(int(warmup)):
            model(x)
        for _ in range(int(repeat)):
            t0 = time.perf_counter()
            model(x)
            walls.append(time.perf_counter() - t0)
    print(json.dumps({"wall_s": walls}))


if __name__ == "__main__":
    _child(*sys.argv[1:8])
