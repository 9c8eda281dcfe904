"""ersm-edge-aware: an ersm-surgery plugin with an edge-aware pairwise term for the Energy-Mask.

The plain Potts term charges beta for every pair of neighbouring tokens whose mask values differ. The
``edge_aware`` term charges beta * w_ij with

    w_ij = exp(-||f_i - f_j||^2 / (2 sigma^2)),   f = per-token normalised features,

so a mask boundary is cheap where the features change (an object edge) and expensive inside a
region: masks follow object edges instead of cutting corners. Select it in a recipe::

    mask:
      pairwise: edge_aware
      pairwise_args: {sigma: 0.5, norm: l2}

or ``--set mask.pairwise=edge_aware --set "mask.pairwise_args={sigma: 0.3}"``.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["register", "__version__"]


def register(registry) -> None:
    """Entry point of the ``ersm_surgery.plugins`` group: add the ``edge_aware`` pairwise term."""
    from .pairwise import create_edge_aware

    registry.register_pairwise("edge_aware", create_edge_aware)
