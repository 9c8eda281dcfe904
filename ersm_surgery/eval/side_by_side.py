"""Independent evaluation passes of the model and its baseline at once, on a CPU.

Two Python threads that each run forward passes on one intra-op thread keep two cores busier than one
thread running each pass on both: torch releases the GIL inside its kernels, and at the evaluation's
sizes one forward pass does not split well over two threads (resnet18, batch 32, 64 px, eval mode:
two 1-thread passes at once made 1.47x the forward passes per second of one 2-thread pass,
``benchmarks/README.md``). The passes share no module, so the results are those of running them one
after the other (only the thread count differs, which can move the last bits of a float).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["run_side_by_side"]

T = TypeVar("T")


def run_side_by_side(jobs: Sequence[Callable[[], T]], device: torch.device) -> list[T]:
    """``[job() for job in jobs]``, at once on a CPU with a thread per job, torch's threads shared out.

    One after the other on an accelerator, for a single job, or with fewer torch threads than jobs. A job's
    error is raised here, after the others finished. Each job sets its own grad mode (it is per thread).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or len(jobs) < 2 or threads < len(jobs):
        return [job() for job in jobs]
    torch.set_num_threads(threads // len(jobs))
    try:
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="ersm-eval") as pool:
            futures = [pool.submit(job) for job in jobs]
            return [future.result() for future in futures]
    finally:
        torch.set_num_threads(threads)
