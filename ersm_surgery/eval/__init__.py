"""Measuring what the masks bought: pure metric functions over tensors and callables (no timm, no CLI).

- :mod:`.curves`: normalised trapezoid AUC.
- :mod:`.occlusion`: structured occluders and the accuracy-under-occlusion curve (claim (b)).
- :mod:`.deletion`: feature-space deletion curves, energy vs magnitude vs random ranking (claim (e)).
- :mod:`.localization`: pointing game, mass in box, mask-box IoU (claim (c)).
- :mod:`.sparsity`: density, coherence, connected components, random masks of equal density (claim (a)).
"""
from .curves import auc_trapezoid
from .deletion import (
    FILLS,
    ORDERS,
    combine_deletion_curves,
    deletion_curve,
    energy_scores,
    magnitude_scores,
    random_scores,
    tokens_removed,
)
from .localization import box_to_token_mask, mask_box_iou, mass_in_box, pointing_game
from .occlusion import Occluder, cutout, hide_and_seek, occlusion_curve, random_patch_drop
from .sparsity import (
    as_token_maps,
    coherence,
    connected_components,
    density_stats,
    histogram,
    random_mask_like,
)

__all__ = [
    "FILLS",
    "ORDERS",
    "Occluder",
    "as_token_maps",
    "auc_trapezoid",
    "box_to_token_mask",
    "coherence",
    "combine_deletion_curves",
    "connected_components",
    "cutout",
    "deletion_curve",
    "density_stats",
    "energy_scores",
    "hide_and_seek",
    "histogram",
    "magnitude_scores",
    "mask_box_iou",
    "mass_in_box",
    "occlusion_curve",
    "pointing_game",
    "random_mask_like",
    "random_patch_drop",
    "random_scores",
    "tokens_removed",
]
