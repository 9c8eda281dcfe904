"""Why `run` trains and evaluates the model and its baseline side by side on a CPU.

Two measurements on the same machine, each against one loop that uses every torch thread:
1. training (what ``pipeline.run.train_pair`` does): two processes, each running training steps on
   ``threads // 2`` threads at once, against one process running the same steps on all threads, twice;
2. evaluation forward passes (what ``eval.side_by_side.run_side_by_side`` does for the occlusion passes):
   two Python threads in one process, torch set to ``threads // 2``, against one thread on all of them.
Printed: seconds for the same work both ways and the speed-up of side by side.

    python benchmarks/bench_side_by_side.py [--model resnet18] [--batch-size 32] [--img-size 64] [--steps 20]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import threading
import time

import timm
import torch
import torch.nn.functional as F


def _train_steps(name: str, steps: int, batch: int, size: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 4, (batch,))
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="training steps per loop")
    p.add_argument("--forwards", type=int, default=60, help="evaluation forward passes per model")
    args = p.parse_args()
    threads = torch.get_num_threads()
    print(f"{args.model}, batch {args.batch_size}, {args.img_size} px, {threads} torch threads; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    context = multiprocessing.get_context("spawn")
    job = (args.model, args.steps, args.batch_size, args.img_size)

    def one_loop_twice() -> None:
        for _ in range(2):
            child = context.Process(target=_train_steps, args=(*job, threads))
            child.start()
            child.join()

    def two_loops_at_once() -> None:
        children = [context.Process(target=_train_steps, args=(*job, threads // 2)) for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join()

    # each in fresh processes, so both pay the same start-up
    seq, par = _timed(one_loop_twice), _timed(two_loops_at_once)
    print(f"training, 2 x {args.steps} steps: one loop on {threads} threads twice {seq:.1f} s, two loops on "
          f"{threads // 2} thread(s) at once {par:.1f} s: side by side {seq / par:.2f}x", flush=True)

    models = [timm.create_model(args.model, num_classes=4).eval() for _ in range(2)]
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    def forwards(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for _ in range(args.forwards):
                model(x)

    for model in models:
        forwards(model)  # warm-up
    seq = _timed(lambda: [forwards(m) for m in models])
    torch.set_num_threads(max(1, threads // 2))
    workers = [threading.Thread(target=forwards, args=(m,)) for m in models]
    par = _timed(lambda: ([w.start() for w in workers], [w.join() for w in workers]))
    torch.set_num_threads(threads)
    print(f"evaluation, 2 x {args.forwards} forward passes: one thread on {threads} torch threads {seq:.1f} s, two "
          f"Python threads on {max(1, threads // 2)} each {par:.1f} s: side by side {seq / par:.2f}x", flush=True)


if __name__ == "__main__":
    main()
