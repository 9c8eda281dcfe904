"""The fine-tuning loop: loss = cross-entropy + gamma(t) * energy regularizer (ERSM, arXiv 2604.06893).

There is no target density and no top-k: how many tokens each mask keeps is decided per image by the
task loss against the token price. Each epoch reports the task loss and the regularizer separately,
validation top-1/top-5, the lr, and per mask layer the mean hard-mask density over the validation
images with its standard deviation, so that a collapse (density -> 0) is visible at once. The loop runs
in one process or under DDP (``torchrun``); only the primary process writes files and reports.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..mask_set import MaskSet, masks, unwrap
from .checkpoint import RunFolder, capture_rng, restore_rng, seed_everything
from .config import FinetuneConfig
from .data import build_loader, set_epoch
from .distributed import DistInfo, all_true, broadcast_buffers, gather_objects, no_sync, ranks_agree
from .errors import DivergedError
from .loss_brake import LossBrake
from .mask_pull import MaskPull
from .mask_watch import MaskWatch
from .metrics import EpochMeter, short_name
from .optim import base_lr, create_optimizer, create_scheduler, updates_per_epoch
from .regularization import amp_dtype, autocast_factory, create_ema, create_mixup, task_criterion, to_channels_last
from .run_state import checkpoint, restore
from .schedule import MaskSchedule, mask_phase
from .source import freeze_backbone, frozen_norms
from .tensorboard import TensorboardLog, require_tensorboard

__all__ = ["fit", "Callbacks", "FitResult", "seed_everything"]

_log = logging.getLogger(__name__)


class Callbacks:
    """Hooks the caller (the CLI's progress bars) receives on the primary process; all no-ops here."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_epoch_start(self, epoch: int, batches: int) -> None: ...

    def on_batch(self, epoch: int, batch: int, loss: float) -> None: ...

    def on_validate(self, epoch: int, batches: int) -> None: ...

    def on_epoch_end(self, row: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model (unwrapped), the epoch rows, the best epoch."""

    model: nn.Module
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    updates: int = 0
    ranks_in_sync: bool = True
    stopped_early: bool = False
    world_size: int = 1
    warnings: list[str] = field(default_factory=list)  # MaskWatch's lines, in the order they were logged


@dataclass
class _Run:
    """Everything the epoch functions share."""

    model: nn.Module  # DDP-wrapped when distributed
    layers: MaskSet
    config: FinetuneConfig
    info: DistInfo
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    schedule: MaskSchedule
    autocast: Any
    frozen: list[nn.Module]
    criterion: nn.Module
    mixup: Any = None
    ema: Any = None  # timm ModelEmaV3: its module is what is validated and saved
    brake: LossBrake = field(default_factory=lambda: LossBrake(None, 1))
    relative_price: bool = False  # some mask charges mask.price=relative (layers.price)
    masks_frozen_from: int | None = None  # mask_freeze / mask_updates as an update index (None: learn to the end)
    pull: MaskPull | None = None
    update: int = 0
    gamma: float = 0.0
    tau: float = 1.0
    saved_epoch: int | None = None


def evaluated_model(run: _Run) -> nn.Module:
    """The weights that are validated and saved: the EMA copy when ``model_ema`` is on, else the model."""
    return run.ema.module if run.ema is not None else unwrap(run.model)


def _forward_loss(run: _Run, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with run.autocast():
        logits = run.model(x)
    task = run.criterion(logits.float(), target)
    energy = run.layers.regularizer() if len(run.layers) else task.new_zeros(())
    loss = task + run.gamma * energy
    pull = run.pull.penalty() if run.pull is not None and not _masks_frozen(run) else None
    return logits, task, energy, loss if pull is None else loss + pull


def _masks_frozen(run: _Run) -> bool:
    """Whether mask_freeze / mask_updates have stopped the masks at this update."""
    return run.masks_frozen_from is not None and run.update >= run.masks_frozen_from


def _optimizer_step(run: _Run) -> None:
    if _masks_frozen(run):
        # gradients dropped after backward (DDP has already reduced them): the optimizer skips a parameter
        # without one entirely (no step, no decay, no momentum), so the masks are exactly those learned so far
        for layer in run.layers:
            layer.zero_grad(set_to_none=True)
    if run.config.clip_grad is not None:
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in run.optimizer.param_groups for p in g["params"]],
                                       run.config.clip_grad)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.update += 1
    if run.ema is not None:
        run.ema.update(unwrap(run.model), step=run.update)
    if run.scheduler is not None:
        run.scheduler.step_update(run.update)


def _train_epoch(run: _Run, loader, epoch: int, callbacks: Callbacks) -> dict[str, float]:
    run.model.train()
    for m in run.frozen:
        m.eval()
    meter = EpochMeter([])
    dens = EpochMeter(run.layers.names())
    n, accum = len(loader), run.config.grad_accum_steps
    full = (n // accum) * accum
    for i, (x, y) in enumerate(loader):
        x, y = x.to(run.info.device, non_blocking=True), y.to(run.info.device, non_blocking=True)
        if run.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y if run.mixup is None else None
        if run.mixup is not None:
            x, target = run.mixup(x, y)  # mixed images and soft (smoothed) targets; y stays for accuracy
        group = accum if i < full else n - full
        final = (i + 1) % accum == 0 or i + 1 == n
        run.gamma, run.tau = run.schedule.apply(run.layers, run.update)
        run.gamma *= run.brake.factor()
        if run.relative_price:  # it reads the task gradient on the masks: tell it what the loss is multiplied by
            # (GradScaler.get_scale() syncs with the device, so only a relative price pays for it)
            run.layers.set_gradient_multiplier((run.scaler.get_scale() if run.scaler is not None else 1.0) / group)
        with no_sync(run.model, not final):
            logits, task, energy, loss = _forward_loss(run, x, target)
            if not all_true(bool(torch.isfinite(loss)), run.info):
                raise _diverged(run, epoch, i, task, energy)
            scaled = loss / group
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        task_value = task.item()
        run.brake.observe(task_value, run.update)
        meter.add_batch(task_value, energy.item(), logits, y)
        if len(run.layers):
            dens.add_batch(0.0, 0.0, logits, y, {k: v.detach() for k, v in run.layers.density().items()})
        run.layers.clear()
        if final:
            _optimizer_step(run)
        if run.info.primary:
            callbacks.on_batch(epoch, i + 1, task_value)
    finite = all(bool(torch.isfinite(p).all()) for p in run.model.parameters())
    if not all_true(finite, run.info):  # the last update broke the weights: never checkpoint them
        raise _diverged(run, epoch, n - 1, torch.tensor(float("nan")), torch.tensor(float("nan")))
    out = meter.reduce(run.info)
    d = dens.reduce(run.info)
    means = [v for k, v in d.items() if k.startswith("density/")]
    out["density"] = sum(means) / len(means) if means else 1.0
    out.update({f"train_{k}": v for k, v in d.items() if k.startswith("density")})
    return out


def _diverged(run: _Run, epoch: int, batch: int, task: torch.Tensor, energy: torch.Tensor) -> DivergedError:
    what = "NaN" if torch.isnan(task + run.gamma * energy) else "infinite"
    kept = (f"the last good checkpoint (epoch {run.saved_epoch}) is kept in last/" if run.saved_epoch
            else "no checkpoint was written")
    return DivergedError(
        f"the loss became {what} in epoch {epoch + 1}, batch {batch + 1} (task {task.item():.4g}, "
        f"energy {energy.item():.4g}, gamma {run.gamma:.3g}, lr {base_lr(run.optimizer):.3g}); training stopped "
        f"and {kept}",
        "lower --lr (or --gamma / --alpha), or add --clip-grad 1.0",
    )


@torch.no_grad()
def _validate(run: _Run, loader, epoch: int, callbacks: Callbacks) -> dict[str, float]:
    broadcast_buffers(unwrap(run.model), run.info)
    model = evaluated_model(run)
    layers = masks(model)
    for layer in layers:  # the EMA copy's layers follow the tau schedule too
        layer.config.tau = run.tau
    was = model.training
    model.eval()
    meter = EpochMeter(layers.names())
    if run.info.primary:
        callbacks.on_validate(epoch, len(loader))
    try:
        for x, y in loader:
            x, y = x.to(run.info.device, non_blocking=True), y.to(run.info.device, non_blocking=True)
            if run.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with run.autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="sum")
            density = layers.density() if len(layers) else None
            meter.add_batch(float(loss) / max(1, y.numel()), 0.0, logits, y, density)
            layers.clear()
    finally:
        model.train(was)
    return meter.reduce(run.info)


def _make_run(model: nn.Module, config: FinetuneConfig, info: DistInfo, steps_per_epoch: int,
              tau_start: float, num_classes: int) -> _Run:
    if config.freeze_backbone:
        freeze_backbone(model)
    optimizer = create_optimizer(model, config)
    scheduler = create_scheduler(optimizer, config, updates_per_epoch(steps_per_epoch, config.grad_accum_steps))
    cuda = info.device.type == "cuda"
    dtype = amp_dtype(config, info.device)
    autocast = autocast_factory(config, info.device, dtype)
    scaler = torch.amp.GradScaler("cuda") if config.amp and cuda and dtype == torch.float16 else None
    ema = create_ema(model, config)  # before DDP wraps the model, as timm's train.py does
    wrapped = model
    if info.distributed:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if cuda else None)
    total = config.epochs * updates_per_epoch(steps_per_epoch, config.grad_accum_steps)
    warmup, frozen_from = mask_phase(total, config.gamma_warmup, config.mask_freeze, config.mask_updates)
    schedule = MaskSchedule(total, config.gamma, warmup, tau_start, config.tau_end)
    return _Run(wrapped, masks(model), config, info, optimizer, scheduler, scaler, schedule, autocast,
                frozen_norms(model) if config.freeze_backbone else [], task_criterion(config),
                create_mixup(config, num_classes), ema, LossBrake(config.loss_brake, total), tau=tau_start,
                relative_price=any(layer.config.price == "relative" for layer in masks(model)),
                masks_frozen_from=frozen_from, pull=MaskPull(config.mask_pull, masks(model)))


def fit(
    model: nn.Module,
    train_set,
    val_set,
    config: FinetuneConfig,
    output: str | Path | None,
    info: DistInfo | None = None,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    callbacks: Callbacks | None = None,
    run_args: dict[str, Any] | None = None,
    tensorboard: str | Path | None = None,
) -> FitResult:
    """Fine-tune ``model`` (masked or not) on ``train_set``, validating on ``val_set`` after each epoch.

    Args:
        model: a model carrying its recipe (``inject``, ``load`` or ``train.load_source``); on CPU or GPU.
        train_set: the train split (an ``ersm_surgery.data`` data set).
        val_set: the validation split.
        config: the settings.
        output: the run folder (written on the primary process only; None writes nothing).
        info: the process's place (:func:`~.distributed.init_distributed`); default: one process.
        resume: a training state from :func:`~.checkpoint.load_train_state` (``model`` must hold its weights).
        stop_after: stop once this many epochs are done (the schedules still span ``config.epochs``).
        callbacks: progress hooks, called on the primary process.
        run_args: recorded in ``args.yaml``.
        tensorboard: write TensorBoard event files here, one point per epoch (primary process only).

    Returns:
        A :class:`FitResult`; with ``config.model_ema`` its model is the EMA copy (what was validated and saved).

    Raises:
        DivergedError: the loss became NaN or infinite (the last good checkpoint is kept).
        TrainingError: an optimizer or scheduler timm does not know, nothing to train, tensorboard missing.
        DataError: mixup with fewer train images than one batch.
    """
    info = info or DistInfo(next(model.parameters()).device)
    callbacks = callbacks or Callbacks()
    model = to_channels_last(unwrap(model).to(info.device), config)
    board = None
    if tensorboard is not None:
        require_tensorboard()  # on every rank, so a missing package stops all of them alike
    folder = RunFolder(output) if output is not None and info.primary else None
    train_loader = build_loader(train_set, config, True, info.rank, info.world_size)
    val_loader = build_loader(val_set, config, False, info.rank, info.world_size)
    layers = masks(model)
    tau_start = resume["tau_start"] if resume else (next(iter(layers)).config.tau if len(layers) else 1.0)
    if len(train_loader) == 0:
        raise DataError(f"the train split has {len(train_set)} image(s), fewer than one batch of {config.batch_size}, "
                        "and mixup/cutmix drops incomplete batches", "lower --batch-size (keep it even)")
    num_classes = int(getattr(model, "num_classes", None) or train_set.num_classes)
    run = _make_run(model, config, info, len(train_loader), tau_start, num_classes)
    result = FitResult(evaluated_model(run), world_size=info.world_size)
    start = 0
    if resume:
        start = restore(run, resume, result)
    else:
        seed_everything(config.seed, info.rank)
    if folder is not None:
        folder.root.mkdir(parents=True, exist_ok=True)
        folder.write_args({**(run_args or {}), "config": config.to_dict()})
    if tensorboard is not None and info.primary:
        board = TensorboardLog(tensorboard)
    try:
        _epochs(run, result, config, info, folder, board, callbacks, train_loader, val_loader, train_set, val_set,
                start, stop_after)
    finally:
        if board is not None:
            board.close()
    result.updates = run.update
    result.ranks_in_sync = ranks_agree(unwrap(run.model), info)
    return result


def _epochs(run: _Run, result: FitResult, config: FinetuneConfig, info: DistInfo, folder: RunFolder | None,
            board: TensorboardLog | None, callbacks: Callbacks, train_loader, val_loader, train_set, val_set,
            start: int, stop_after: int | None) -> None:
    if info.primary:
        callbacks.on_start({"epochs": config.epochs, "start_epoch": start, "batches": len(train_loader),
                            "world_size": info.world_size, "masks": run.layers.names(),
                            "model_ema": run.ema is not None})
    labels = list(train_set.classes)
    per_epoch = max(1, run.schedule.total_updates // max(1, config.epochs))
    watch = MaskWatch(round(run.schedule.gamma_warmup * run.schedule.total_updates) + per_epoch,
                      {short_name(name): layer.config.alpha for name, layer in run.layers.items()},
                      {short_name(name) for name, layer in run.layers.items()
                       if not layer.config.norm_prior and layer.config.init_logit >= 3},
                      {short_name(name) for name, layer in run.layers.items()
                       if layer.config.norm_prior and layer.config.norm_prior_stats == "running"})
    for epoch in range(start, config.epochs):
        if stop_after is not None and epoch >= stop_after:
            result.stopped_early = True
            break
        t0 = time.perf_counter()
        set_epoch(train_loader, epoch, config.seed)
        set_epoch(val_loader, epoch, config.seed)
        if info.primary:
            callbacks.on_epoch_start(epoch, len(train_loader))
        train = _train_epoch(run, train_loader, epoch, callbacks)
        val = _validate(run, val_loader, epoch, callbacks)
        row = _row(epoch, run, train, val, time.perf_counter() - t0, train_set, val_set)
        result.rows.append(row)
        if info.primary:
            for line in watch.check(row, run.update):
                _log.warning("%s", line)
                result.warnings.append(line)
        if not result.best or row["val_top1"] > result.best["val_top1"]:
            result.best = {"epoch": epoch + 1, "val_top1": row["val_top1"], "val_top5": row["val_top5"]}
        rng = gather_objects(capture_rng(), info)
        if folder is not None:
            checkpoint(folder, result, run, config, labels, rng, best=result.best["epoch"] == epoch + 1,
                        preprocessing=getattr(val_set, "preprocessing", None))
            run.saved_epoch = epoch + 1
            restore_rng(rng[0])  # writing files must not move the RNGs the next epoch starts from
        if board is not None:
            board.write(row)
        result.updates = run.update
        if info.primary:
            callbacks.on_epoch_end(row)


def _row(epoch: int, run: _Run, train: dict, val: dict, seconds: float, train_set, val_set) -> dict[str, Any]:
    row = {"epoch": epoch + 1, "lr": base_lr(run.optimizer), "gamma": run.gamma, "tau": run.tau,
           "train_loss": train["loss"], "train_energy": train["energy"], "train_top1": train["top1"],
           "train_density": train["density"], "val_loss": val["loss"], "val_top1": val["top1"],
           "val_top5": val["top5"]}
    row.update({k: v for k, v in val.items() if k.startswith("density")})
    row.update({k: v for k, v in train.items() if k.startswith("train_density/") or k.startswith("train_density_std/")})
    row["skipped_images"] = int(getattr(train_set, "skipped", 0)) + int(getattr(val_set, "skipped", 0))
    row["epoch_s"] = round(seconds, 2)
    return row
