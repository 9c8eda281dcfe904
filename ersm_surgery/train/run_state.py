"""What a run saves and restores between epochs: the recipe record, the checkpoint, and the exact resume.

After each epoch the model (the EMA copy under ``model_ema``) goes to ``OUT/last/`` with the training state
(optimizer, scheduler, scaler, RNG, history, and under ``model_ema`` the trained weights themselves), and
to ``OUT/`` when it is the best so far. The recipe records the settings, the labels, the results and the
preprocessing the images went through (``recipe.data_config``), so evaluation and export use the same.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from ..io.source import recipe_of
from ..mask_set import unwrap
from ..recipe import RECIPE_VERSION
from .checkpoint import RunFolder, restore_rng, seed_everything
from .config import FinetuneConfig

__all__ = ["record", "checkpoint", "restore"]

_log = logging.getLogger(__name__)


def record(model: nn.Module, config: FinetuneConfig, run: Any, labels: list[str], result: dict[str, Any],
            preprocessing: Any = None) -> None:
    """Write the settings, labels, results and preprocessing into the recipe, and the current tau into recipe.mask."""
    recipe = recipe_of(model)
    if len(run.layers):
        recipe.mask = dataclasses.replace(recipe.mask, tau=float(run.layers.layers[run.layers.names()[0]].config.tau))
    recipe.finetune = {**config.to_dict(), "label_names": list(labels), "result": result}
    if preprocessing is not None:  # what the images went through, so evaluation and export use the same
        recipe.data_config = preprocessing.to_dict()
        recipe.version = RECIPE_VERSION


def checkpoint(folder: RunFolder, result: Any, run: Any, config: FinetuneConfig, labels: list[str],
                rng: list[dict], best: bool, preprocessing: Any = None) -> None:
    model = result.model
    last = result.rows[-1]
    record(model, config, run, labels, {"epochs_done": last["epoch"], "best_epoch": result.best["epoch"],
                                         "best_val_top1": result.best["val_top1"], "val_top1": last["val_top1"]},
            preprocessing)
    state = {
        "epoch": last["epoch"],
        "update": run.update,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": rng,
        "data_order": {"seed": config.seed, "next_epoch": last["epoch"], "order": "permutation of (seed, epoch)"},
        "tau_start": run.schedule.tau_start,
        "price_scale": run.layers.price_state(),
        "loss_brake": run.brake.state(),
        "mask_pull_anchor": run.pull.state() if run.pull is not None else {},
        "best": dict(result.best),
        "history": [dict(r) for r in result.rows],
        "config": config.to_dict(),
        "recipe": recipe_of(model).to_json(),
        "world_size": run.info.world_size,
    }
    if run.ema is not None:  # model.safetensors holds the EMA weights; the trained ones resume from here
        state["raw_model"] = {k: v.detach().cpu() for k, v in unwrap(run.model).state_dict().items()}
    folder.save_last(model, state)
    if best:
        folder.save_best(model)
    folder.write_summary(result.rows)


def restore(run: Any, state: dict[str, Any], result: Any) -> int:
    if state.get("raw_model") is not None:  # saved with model_ema: the model file held the EMA weights
        unwrap(run.model).load_state_dict(state["raw_model"], strict=True)
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state.get("scheduler") is not None:
        run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler") is not None:
        run.scaler.load_state_dict(state["scaler"])
    run.update = int(state["update"])
    run.layers.load_price_state(state.get("price_scale") or {})
    if state.get("loss_brake"):
        run.brake.load_state(state["loss_brake"])
    if run.pull is not None:
        run.pull.load_state(state.get("mask_pull_anchor"))
    run.saved_epoch = int(state["epoch"])
    result.rows = [dict(r) for r in state.get("history", [])]
    result.best = dict(state.get("best") or {})
    rng = state.get("rng") or []
    if len(rng) == run.info.world_size:
        restore_rng(rng[run.info.rank])
    else:
        _log.warning("the run was saved with %d process(es) and resumes with %d: the data order is kept, the "
                     "random augmentation is not", len(rng), run.info.world_size)
        seed_everything(int(state["config"]["seed"]) + int(state["epoch"]), run.info.rank)
    return int(state["epoch"])
