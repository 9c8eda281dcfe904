"""Measuring what the masks bought: pure metric functions over tensors and callables (no timm, no CLI).

- :mod:`.curves`: normalised trapezoid AUC.
- :mod:`.occlusion`: structured occluders and the accuracy-under-occlusion curve (claim (b)).
- :mod:`.deletion_reference`: feature-space deletion curves, energy vs magnitude vs random ranking (claim (e)).
- :mod:`.localization`: pointing game, mass in box, mask-box IoU (claim (c)).
- :mod:`.sparsity`: density, coherence, connected components, random masks of equal density (claim (a)).

The orchestration behind ``ersm-surgery evaluate`` builds on them:

- :mod:`.runner`: :func:`evaluate` a masked model and its baseline on the same images (:mod:`.images`).
- :mod:`.rerun`: run the network before a mask once and only the rest per edited feature map.
- :mod:`.deletion_batched`: every deletion curve of a batch with batched, deduplicated reruns.
- :mod:`.compute`: dense and conditional FLOPs, latency. :mod:`.summaries`: per-layer numbers.
- :mod:`.figures`, :mod:`.report`, :mod:`.results`, :mod:`.tables`: PNGs, the HTML report, results.json
  (imported on use: they need matplotlib); :func:`.outputs.write_evaluation` writes all three in order.
"""
from .compute import conditional_flops, flop_breakdown, measure_latency
from .curves import auc_trapezoid
from .deletion_batched import DeletionJob, run_deletion_jobs
from .deletion_reference import (
    FILLS,
    ORDERS,
    combine_deletion_curves,
    curve_from_logits,
    deleted_features,
    deletion_curve,
    energy_scores,
    fill_values,
    magnitude_scores,
    random_scores,
    removal_rank,
    tokens_removed,
)
from .images import EvalImages, load_images
from .localization import box_to_token_mask, mask_box_iou, mass_in_box, pointing_game, top_tokens_mask
from .occlusion import Occluder, cutout, hide_and_seek, occlusion_curve, random_patch_drop
from .outputs import write_evaluation
from .rerun import Anchor, FxSplit, HookSplit, RerunError, Rerunner, SplitError, make_split
from .runner import METRICS, OCCLUDERS, RANKINGS, EvalError, EvalResult, EvalSettings, evaluate
from .sparsity import (
    as_token_maps,
    coherence,
    connected_components,
    density_stats,
    histogram,
    random_mask_like,
)
from .summaries import localization_summary, sparsity_summary

__all__ = [
    "FILLS",
    "ORDERS",
    "METRICS",
    "OCCLUDERS",
    "RANKINGS",
    "Anchor",
    "DeletionJob",
    "EvalError",
    "EvalImages",
    "EvalResult",
    "EvalSettings",
    "FxSplit",
    "HookSplit",
    "Occluder",
    "RerunError",
    "Rerunner",
    "SplitError",
    "as_token_maps",
    "auc_trapezoid",
    "box_to_token_mask",
    "coherence",
    "combine_deletion_curves",
    "conditional_flops",
    "connected_components",
    "curve_from_logits",
    "cutout",
    "deleted_features",
    "deletion_curve",
    "density_stats",
    "energy_scores",
    "evaluate",
    "fill_values",
    "flop_breakdown",
    "hide_and_seek",
    "histogram",
    "load_images",
    "localization_summary",
    "magnitude_scores",
    "make_split",
    "mask_box_iou",
    "mass_in_box",
    "measure_latency",
    "occlusion_curve",
    "pointing_game",
    "random_mask_like",
    "random_patch_drop",
    "random_scores",
    "removal_rank",
    "run_deletion_jobs",
    "sparsity_summary",
    "tokens_removed",
    "top_tokens_mask",
    "write_evaluation",
]
