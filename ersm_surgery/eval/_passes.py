"""The passes of an evaluation over one model: features, compute, occlusion, deletion.

Each pass takes a :class:`Subject` (a model, its mask layers and the anchors where its feature maps are
taken) and the shared :class:`~.images.EvalImages`, and returns plain numbers; :mod:`.runner` runs
them for the model and its baseline and assembles the results.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from ..layers import EnergyMask
from .compute import conditional_flops, flop_breakdown, measure_latency, measure_sparse_latency
from .deletion_batched import DeletionJob, run_deletion_jobs
from .deletion_reference import ORDERS, combine_deletion_curves, energy_scores, magnitude_scores, random_scores
from .images import EvalImages
from .occlusion import cutout, hide_and_seek, occlusion_curve, random_patch_drop
from .per_image import per_image_auc
from .rerun import Anchor
from .settings import EvalSettings, Progress

__all__ = ["Subject", "Clock", "feature_pass", "accuracy", "compute_pass", "occlusion_pass", "deletion_pass"]


@dataclass
class Subject:
    """One model under evaluation.

    Attributes:
        role: ``"model"`` or ``"baseline"``.
        model: the network (eval mode while evaluated).
        info: provenance recorded in the results.
        masks: its Energy-Mask layers by result name (the placement path).
        mask_paths: the module path of each of those layers.
        anchors: where its feature maps are taken (at the masks; for the baseline, at the same places).
        split: the :mod:`.rerun` object that runs it from those anchors, once prepared.
        split_note: why the split fell back to full reruns, if it did.
    """

    role: str
    model: nn.Module
    info: dict[str, Any]
    masks: dict[str, EnergyMask] = field(default_factory=dict)  # result name -> layer
    mask_paths: dict[str, str] = field(default_factory=dict)  # result name -> module path
    anchors: list[Anchor] = field(default_factory=list)
    split: Any = None
    split_note: str | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall time and this process's CPU time (all threads) spent inside :meth:`timing` blocks.

    CPU time is the steadier figure on a shared machine; on a GPU only the wall time means much.
    """

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    @contextlib.contextmanager
    def timing(self, device: torch.device):
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            _sync(device)
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu


# -- pass 1: features -----------------------------------------------------------------------------------
def feature_pass(subject: Subject, images: EvalImages, settings: EvalSettings, device: torch.device,
                  progress: Progress) -> dict:
    task = f"features ({subject.role})"
    progress.start(task, len(images))
    logits_all, clock = [], Clock()
    split = subject.split
    maps: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in subject.masks}
    maps.update({a.name: {} for a in subject.anchors} if split is not None else {})
    with torch.no_grad():
        for _, x, _ in images.batches(settings.batch_size):
            x = x.to(device)
            with clock.timing(device):
                logits = split.clean(x) if split is not None else subject.model(x)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            logits_all.append(logits.float().cpu())
            for name, layer in subject.masks.items():
                state = layer.state
                maps[name].setdefault("hard", []).append(state.hard[:, 0].cpu())
                maps[name].setdefault("q", []).append(state.q[:, 0].float().cpu())
                maps[name].setdefault("energy", []).append(state.energy[:, 0].float().cpu())
            if split is not None:  # magnitudes: of what a mask received, or of the baseline's features there
                for a in subject.anchors:
                    feats = split.inputs(a.name) if a.name in subject.masks else split.features(a.name)
                    maps[a.name].setdefault("magnitude", []).append(magnitude_scores(feats).cpu())
            progress.advance(task, x.shape[0])
    return {
        "logits": torch.cat(logits_all),
        "maps": {name: {k: torch.cat(v) for k, v in m.items()} for name, m in maps.items()},
        "seconds": clock.wall,
        "cpu_seconds": clock.cpu,
    }


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    n = labels.shape[0]
    return {
        "top1": int((top[:, 0] == labels).sum()) / n,
        "top5": int((top == labels[:, None]).any(dim=1).sum()) / n,
        "top5_k": k,
        "images": int(labels.shape[0]),
        "mean_confidence": float(torch.softmax(logits, dim=1).max(dim=1).values.mean()),
    }


# -- pass 2: compute ------------------------------------------------------------------------------------


def compute_pass(subject: Subject, images: EvalImages, settings: EvalSettings, device: torch.device,
             density: dict[str, float]) -> dict:
    breakdown = flop_breakdown(subject.model, images.images[:1].to(device))
    cond = conditional_flops(breakdown, {subject.mask_paths[n]: d for n, d in density.items()
                                         if n in subject.mask_paths})
    params = sum(p.numel() for p in subject.model.parameters())
    mask_params = sum(p.numel() for layer in subject.masks.values() for p in layer.parameters())
    latency = measure_latency(subject.model, images.images[: settings.batch_size].to(device),
                              repeats=settings.latency_repeats)
    sparse_latency = measure_sparse_latency(subject.model, images.images[: settings.batch_size].to(device),
                                            repeats=settings.latency_repeats)
    return {
        "dense_flops": cond["dense"],
        "conditional_flops": cond["conditional"],
        "conditional_ratio": cond["ratio"],
        "mask_flops": cond["masks"],
        "gated_flops": {name: cond["scaled"].get(path, 0) for name, path in subject.mask_paths.items()},
        "params": int(params),
        "mask_params": int(mask_params),
        "latency": latency,
        "sparse_latency": sparse_latency,  # None unless mask.gate=stage (docs/sparse.md)
        "theoretical": True,
    }


# -- pass 3: occlusion ----------------------------------------------------------------------------------


def _occluders(grid: int) -> dict:
    return {
        "patch_drop": partial(random_patch_drop, grid=grid),
        "cutout": cutout,
        "hide_and_seek": partial(hide_and_seek, grid=grid),
    }


def occlusion_pass(subject: Subject, images: EvalImages, settings: EvalSettings, device: torch.device,
               progress: Progress) -> dict:
    task = f"occlusion ({subject.role})"
    levels = list(settings.occlusion_levels)
    occluders = _occluders(settings.occlusion_grid)
    progress.start(task, len(occluders) * len(images) * (len(levels) + (0.0 not in levels)))

    def predict(batch: torch.Tensor) -> torch.Tensor:
        out = subject.model(batch.to(device))
        progress.advance(task, batch.shape[0])
        return (out[0] if isinstance(out, (tuple, list)) else out).cpu()

    out = {}
    for i, (name, occluder) in enumerate(occluders.items()):
        # the same seed for both models: identical pixels hidden
        curve = occlusion_curve(predict, images.images, images.labels, occluder, levels,
                                seed=settings.seed * 1000 + i, batch_size=settings.batch_size)
        out[name] = curve
    return out


# -- pass 4: deletion -----------------------------------------------------------------------------------


# rerun chunks: up to 8 batches of edited features, and about this many bytes of them (the tail's
# activations take several times more)
_RERUN_BYTES = 256 * 2**20


def _auto_rerun_rows(subject: Subject, batch_size: int) -> int:
    split = subject.split
    widest = max((split.features(a.name)[0].numel() * split.features(a.name).element_size()
                  for a in subject.anchors), default=1)
    return max(batch_size, min(8 * batch_size, _RERUN_BYTES // max(1, widest)))


def _delete_batch(subject: Subject, logits: torch.Tensor, labels: torch.Tensor, rankings: Sequence[str],
                  gens: dict[str, torch.Generator], settings: EvalSettings, rows: int):
    """Every deletion curve of the batch the split has just run clean: ``((layer, ranking, order), curve,
    rerun counts)`` items (the counts once per layer)."""
    split = subject.split
    # energies now, before reruns at one mask re-run (and overwrite) the masks after it
    energies = {n: subject.masks[n].state.energy for n in subject.masks}
    for a in subject.anchors:
        feats = split.features(a.name)
        scores = {}
        if "energy" in rankings and a.name in energies:
            scores["energy"] = energy_scores(energies[a.name])
        if "magnitude" in rankings:
            scores["magnitude"] = magnitude_scores(feats)
        if "random" in rankings:
            b, _, h, w = feats.shape
            scores["random"] = random_scores((b, h, w), generator=gens[a.name], device=feats.device)
        # a random ranking has no order: removing the k "least" or "most" important tokens of a random
        # ranking draws the same uniformly random k tokens, so one curve serves both orders
        jobs = [DeletionJob(r, o, s) for r, s in scores.items() for o in (ORDERS[:1] if r == "random" else ORDERS)]
        curves, counts = run_deletion_jobs(feats, jobs, partial(split.rerun, a.name), logits, labels,
                                           list(settings.deletion_fractions), settings.deletion_fill, rows)
        first = True
        for (r, o), curve in curves.items():
            for order in (ORDERS if r == "random" else (o,)):
                yield (a.name, r, order), curve, (counts if first else {})
                first = False


def deletion_pass(subject: Subject, images: EvalImages, settings: EvalSettings, device: torch.device,
              rankings: Sequence[str], progress: Progress) -> dict:
    task = f"deletion ({subject.role})"
    progress.start(task, len(images))
    split = subject.split
    rows = settings.rerun_rows
    gens = {a.name: torch.Generator().manual_seed(settings.seed * 7919 + i) for i, a in enumerate(subject.anchors)}
    parts: dict[tuple[str, str, str], list[dict]] = {}
    counts = {"rows": 0, "calls": 0, "reused": 0}
    clock = Clock()
    with torch.no_grad():
        for _, x, y in images.batches(settings.batch_size):
            x, y = x.to(device), y.to(device)
            with clock.timing(device):
                logits = split.clean(x)
                rows = rows or _auto_rerun_rows(subject, settings.batch_size)
                for (name, r, o), curve, c in _delete_batch(subject, logits, y, rankings, gens, settings, rows):
                    parts.setdefault((name, r, o), []).append(curve)
                    for k in counts:
                        counts[k] += c.get(k, 0)
            progress.advance(task, x.shape[0])
    layers: dict[str, dict] = {}
    for (name, r, o), curves in parts.items():
        pooled = combine_deletion_curves(curves)
        layers.setdefault(name, {}).setdefault(r, {})[o] = {
            **{k: pooled[k] for k in ("accuracy", "probability", "accuracy_auc", "probability_auc")},
            "per_image_auc": per_image_auc(settings.deletion_fractions, pooled["per_image_correct"])}
    return {"layers": layers, "seconds": clock.wall, "cpu_seconds": clock.cpu, "reruns": counts, "method": split.method,
            "note": subject.split_note}
