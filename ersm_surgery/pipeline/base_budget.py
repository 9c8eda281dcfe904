"""How long the base of ``run`` trains: what a time budget affords on this machine.

Families differ in what a training step costs and in how many updates they need from scratch: on the
built-in data at 64 px, 4 epochs leave mobilenetv3_large_100 at 49.6% where 8 reach 70.4%, and its 8
epochs (channels-last) take less time than resnet18's 4 (152 s vs 162 s; bench_run_families.py). A
fixed epoch count is therefore either too short for the cheap models or too long for the dear ones.
The base gets a time budget instead: the cost of an epoch is measured on a copy of the model (a few
training steps and validation forwards on random inputs of the run's batch and image size; the model,
and every random generator, are left as they were), and the base gets
``clamp(floor(budget / seconds per epoch), MIN_EPOCHS, MAX_EPOCHS)`` epochs' worth of updates. The
built-in data spend them on more unique pictures (their renderer draws new ones for free): from
scratch, unique pictures beat repeated ones (mobilenetv3_large_100 82.0% after 4 epochs of 8000
against 70.4% after 8 of 4000; regnetx_002 80.8% after 4 of 12000 against 53.0% after 8 of 4000); an
image folder gets more epochs.

Restarting the schedule instead (a second cosine cycle from the first one's weights, only when the
base is below target) was measured and rejected: mobilenetv3 51.6%, regnetx_002 49.6% after 4 + 4
epochs, against 70.4% / 53.0% for one 8-epoch schedule.

The count depends on the machine; ``base_epochs`` fixes it (and with it the run's figures across
machines), as ``reproduce`` does. The plan, the measured seconds and the reason are recorded in
``base_settings.json``.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BUDGET_SECONDS", "MIN_EPOCHS", "MAX_EPOCHS", "MIN_PICTURE_SHARE", "EpochPlan", "measure_epoch_seconds",
           "measure_read_seconds", "plan_epochs"]

# resnet18, the README's main job: 27-45 s per epoch of 4000 + 500 images at batch 32 on the idle 2-core CPUs
# the project has run on, so 4 epochs or somewhat fewer pictures; cheaper models get up to three times that.
# The rest of the main job (two fine-tunings, evaluation, export) costs another ~3 such epochs: at 160 s the
# main job ran 5.2-6.0 min on the slower of those machines, over its 5-minute bound
BUDGET_SECONDS = 130.0
MIN_EPOCHS = 4
# from scratch on the built-in data, 3x the pictures still pays: regnetx_002 58.2% on 8000 x 4 epochs, 80.8% on
# 12000 x 4 (ad-hoc runs, one seed)
MAX_EPOCHS = 12
# where even MIN_EPOCHS epochs of the built-in pictures overrun the budget (a slow machine), the budget buys
# fewer pictures, never fewer than this share of them
MIN_PICTURE_SHARE = 0.5
_READ_SAMPLES = 8
_WARMUP_STEPS = 2  # oneDNN picks its kernels on the first calls
# one training step varies by +-15% on a shared 2-core VM; 4 timed steps misjudged an epoch by up to 40%
_TIMED_STEPS = 8


@dataclass(frozen=True)
class EpochPlan:
    """The base's epoch count and where it came from.

    Attributes:
        epochs: base-training epochs.
        chosen_by: ``budget`` (measured here) or ``caller`` (``base_epochs`` given).
        seconds_per_epoch: the measured estimate of one epoch (train + validation); None when not measured.
        budget_seconds: the budget the count was fitted to; None when not measured.
        train_images: the base's unique train pictures when the budget chose them (built-in data); None: the
            data's own.
        reason: one line, recorded with the base's settings.
    """

    epochs: int
    chosen_by: str
    seconds_per_epoch: float | None = None
    budget_seconds: float | None = None
    train_images: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timed(fn, steps: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``steps`` calls, after the warm-up calls (a training step: with grad,
    which ``eval.compute.measure_latency``, used for the validation forwards, turns off)."""
    times = []
    for i in range(_WARMUP_STEPS + steps):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= _WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_epoch_seconds(model: nn.Module, batch_size: int, img_size: int, train_images: int, val_images: int,
                          channels_last: bool = False, device: torch.device | str = "cpu", opt: str = "adamw") -> float:
    """Estimated seconds of one epoch: ``train_images`` trained and ``val_images`` validated at ``batch_size``.

    The steps run on a deep copy of ``model`` with the base's optimizer ``opt`` (a timm name), random
    inputs and labels; the random generators are put back afterwards, so the training that follows draws
    exactly what it would have drawn without the measurement. Reading the data is measured apart
    (:func:`measure_read_seconds`).
    """
    from ..eval.compute import measure_latency
    from ..train.checkpoint import capture_rng, restore_rng

    device = torch.device(device)
    state = capture_rng()
    try:
        probe = copy.deepcopy(model).to(device).train()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        probe = probe.to(memory_format=fmt)
        x = torch.randn(batch_size, 3, img_size, img_size, device=device).contiguous(memory_format=fmt)
        out = probe(x)
        y = torch.randint(0, out.shape[-1], (batch_size,), device=device)
        from timm.optim import create_optimizer_v2

        optimizer = create_optimizer_v2(probe, opt=opt, lr=1e-6)  # its cost, not its effect, is measured

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(probe(x), y).backward()
            optimizer.step()

        train_step = _timed(step, _TIMED_STEPS, device)
        timed = measure_latency(probe.eval(), x, repeats=_TIMED_STEPS, warmup=_WARMUP_STEPS)
        val_step = timed["batch_ms"] / 1000.0
    finally:
        restore_rng(state)
    return math.ceil(train_images / batch_size) * train_step + math.ceil(val_images / batch_size) * val_step


def measure_read_seconds(dataset, samples: int = _READ_SAMPLES) -> float:
    """Median seconds to read one picture of ``dataset`` for the first time (the built-in data render it).

    Reads ``samples`` pictures spread over the split; the random generators are put back afterwards.
    """
    from ..train.checkpoint import capture_rng, restore_rng

    if len(dataset) == 0:
        return 0.0
    state = capture_rng()
    times = []
    try:
        for i in range(min(samples, len(dataset))):
            start = time.perf_counter()
            dataset[(i * len(dataset)) // samples]
            times.append(time.perf_counter() - start)
    finally:
        restore_rng(state)
    return statistics.median(times)


def plan_epochs(given: int | None, seconds_per_epoch: float | None = None, train_images: int | None = None,
                budget: float = BUDGET_SECONDS) -> EpochPlan:
    """The base's schedule: ``given`` epochs when the caller fixed them, else what the budget affords.

    The budget buys ``clamp(floor(budget / seconds_per_epoch), MIN_EPOCHS, MAX_EPOCHS)`` epochs' worth of
    updates. Data that can draw more pictures (``train_images``: the built-in data's base train size) spend
    them on more unique pictures, ``MIN_EPOCHS`` epochs of ``train_images * worth / MIN_EPOCHS`` (and, where
    fewer than ``MIN_EPOCHS`` epochs fit, on fewer: ``train_images * budget / (seconds_per_epoch * MIN_EPOCHS)``,
    at least ``MIN_PICTURE_SHARE`` of them); any other data on more epochs (at least ``MIN_EPOCHS``).
    """
    if given is not None:
        return EpochPlan(int(given), "caller", reason=f"{int(given)} epoch(s), as given (--base-epochs)")
    if seconds_per_epoch is None or not seconds_per_epoch > 0:
        raise ValueError("seconds_per_epoch is needed when the caller gives no epoch count")
    fits = math.floor(budget / seconds_per_epoch)
    worth = min(MAX_EPOCHS, max(MIN_EPOCHS, fits))
    bound = ", the least" if fits < MIN_EPOCHS else ", the most" if fits > MAX_EPOCHS else ""
    why = (f"one epoch measured at ~{seconds_per_epoch:.0f} s here, and the base gets {budget:.0f} s "
           f"({worth} epochs' worth{bound}); --base-epochs fixes the count")
    if train_images:  # more unique pictures rather than more epochs (module docstring)
        if fits >= MIN_EPOCHS:
            images = int(train_images) * worth // MIN_EPOCHS
        else:
            # a machine too slow for MIN_EPOCHS epochs of the data's pictures in the budget: fewer pictures,
            # not fewer epochs, so the main job keeps its time bound; never under half the pictures
            share = max(MIN_PICTURE_SHARE, budget / (seconds_per_epoch * MIN_EPOCHS))
            images = max(1, int(int(train_images) * share))
            why = (f"one epoch of {int(train_images)} pictures measured at ~{seconds_per_epoch:.0f} s here, and "
                   f"the base gets {budget:.0f} s (less than {MIN_EPOCHS} epochs' worth: fewer pictures, "
                   f"at least {MIN_PICTURE_SHARE:.0%}); --base-epochs fixes the count")
        return EpochPlan(MIN_EPOCHS, "budget", round(seconds_per_epoch, 2), budget, images,
                         f"{MIN_EPOCHS} epoch(s) of {images} unique pictures: {why}")
    return EpochPlan(worth, "budget", round(seconds_per_epoch, 2), budget, None, f"{worth} epoch(s): {why}")
