"""All deletion curves of one batch at one feature map, with batched and deduplicated reruns.

:func:`~.deletion.deletion_curve` calls the rest of the network once per fraction. Here the edited
feature maps of every ranking, order and fraction are queued and the rest of the network runs on
chunks of up to ``max_rows`` of them at once (one large call is much cheaper per image than many
small ones, on CPUs above all). Two exact shortcuts cut the work further:

- a fraction that removes no token (``f = 0``) uses the clean logits;
- an image whose edited features equal those of the previous fraction (every newly removed token
  already held the fill value, e.g. a token the hard mask had zeroed, with ``fill="zero"``) reuses
  that fraction's logits instead of being recomputed.

Both give bit-identical results to :func:`~.deletion.deletion_curve` (the tests check this); they only
skip calls whose answer is already known.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .deletion_reference import curve_from_logits, deleted_features, fill_values, removal_rank, tokens_removed

__all__ = ["DeletionJob", "run_deletion_jobs"]

RerunFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``rerun(features, rows) -> logits``: the rest of the network on edited features of clean images ``rows``."""


@dataclass
class DeletionJob:
    """One curve to measure: a ranking (higher score = more important) and a removal order."""

    ranking: str
    order: str
    scores: torch.Tensor


class _Queue:
    """Rows waiting for the rest of the network, flushed in chunks of at most ``max_rows``."""

    def __init__(self, rerun: RerunFn, max_rows: int) -> None:
        self.rerun = rerun
        self.max_rows = max(1, int(max_rows))
        self.items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (features, rows, dest)
        self.pending = 0
        self.rows_run = 0
        self.calls = 0

    def add(self, features: torch.Tensor, rows: torch.Tensor, dest: torch.Tensor) -> None:
        """Queue ``features`` (R, C, H, W) of clean images ``rows``; their logits go into ``dest[rows]``."""
        self.items.append((features, rows, dest))
        self.pending += features.shape[0]
        if self.pending >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        while self.items:
            chunk, taken = [], 0
            while self.items and taken < self.max_rows:
                feats, rows, dest = self.items.pop(0)
                room = self.max_rows - taken
                if feats.shape[0] > room:  # split an item that does not fit
                    self.items.insert(0, (feats[room:], rows[room:], dest))
                    feats, rows = feats[:room], rows[:room]
                chunk.append((feats, rows, dest))
                taken += feats.shape[0]
            logits = self.rerun(torch.cat([c[0] for c in chunk]), torch.cat([c[1] for c in chunk]))
            self.calls += 1
            self.rows_run += taken
            start = 0
            for feats, rows, dest in chunk:
                dest[rows] = logits[start : start + feats.shape[0]].to(dest.dtype)
                start += feats.shape[0]
        self.pending = 0


def run_deletion_jobs(
    features: torch.Tensor,
    jobs: Sequence[DeletionJob],
    rerun: RerunFn,
    clean_logits: torch.Tensor,
    labels: torch.Tensor | None,
    fractions: Sequence[float],
    fill: str = "zero",
    max_rows: int = 256,
) -> tuple[dict[tuple[str, str], dict], dict[str, int]]:
    """Deletion curves of one batch for every job, as :func:`~.deletion.deletion_curve` would give them.

    Args:
        features: (B, C, H, W) feature map the network actually uses at the layer (clean run).
        jobs: rankings and orders to measure.
        rerun: the rest of the network (see :data:`RerunFn`), called under no_grad.
        clean_logits: (B, K) logits of the clean run.
        labels: (B,) true classes, or None to score agreement with the clean prediction.
        fractions: strictly increasing fractions of tokens to remove.
        fill: ``"zero"`` or ``"mean"`` (see :func:`~.deletion.fill_values`).
        max_rows: most rows per ``rerun`` call.

    Returns:
        ``({(ranking, order): curve}, counts)``: each curve as :func:`~.deletion.deletion_curve` returns
        it (per-image tensors included, for :func:`~.deletion.combine_deletion_curves`), and counts
        ``{"rows": rows rerun, "calls": rerun calls, "reused": image-fractions answered without a rerun}``.
    """
    b, _, h, w = features.shape
    n = h * w
    removed = [tokens_removed(float(f), n) for f in fractions]
    fill_value = fill_values(features, fill)
    queue = _Queue(rerun, max_rows)
    plans: list[tuple[DeletionJob, list[torch.Tensor], list[torch.Tensor]]] = []
    reused = 0
    with torch.no_grad():
        for job in jobs:
            rank = removal_rank(job.scores.to(features.device), job.order)
            computed: list[torch.Tensor] = []  # logits filled where the features changed
            changed_at: list[torch.Tensor] = []  # (B,) bool: recomputed at this fraction
            previous = features
            for k in removed:
                dest = torch.empty_like(clean_logits)
                z = previous if k == 0 else deleted_features(features, rank, k, fill_value)
                changed = (z != previous).flatten(1).any(dim=1)
                rows = changed.nonzero()[:, 0]
                if rows.numel():
                    queue.add(z.index_select(0, rows), rows.cpu(), dest)
                reused += b - rows.numel()
                computed.append(dest)
                changed_at.append(changed.cpu())
                previous = z
            plans.append((job, computed, changed_at))
        queue.flush()
        curves = {}
        for job, computed, changed_at in plans:
            outputs, last = [], clean_logits
            for dest, changed in zip(computed, changed_at, strict=True):
                last = torch.where(changed.to(dest.device)[:, None], dest, last)
                outputs.append(last)
            curves[(job.ranking, job.order)] = curve_from_logits(
                outputs, clean_logits, labels, fractions, removed, job.order, fill)
    return curves, {"rows": queue.rows_run, "calls": queue.calls, "reused": reused}
