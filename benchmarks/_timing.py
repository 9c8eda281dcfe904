"""Timing helper shared by the benchmark scripts (imported as ``_timing``: the scripts' own folder is on sys.path)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratio_interval(slow: list[float], fast: list[float], draws: int = 2000) -> tuple[float, float, float]:
    """Median of the paired ratios slow_i / fast_i and a 95% bootstrap interval of that median."""
    from ersm_surgery.sparse.measure import paired_ratio  # imported late: the header benchmarks need no torch

    return paired_ratio(slow, fast, draws)
