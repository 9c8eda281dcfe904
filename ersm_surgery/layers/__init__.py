"""Energy-Mask layer and energy regularizer (pure torch: no timm, no CLI)."""
from .adapted_mask import AdaptedMask, SpatialAdapter
from .config import EVAL_MODES, GATE_POOLS, GATES, TRAIN_MODES, MaskConfig
from .energy import mean_field, neighbour_kernel, neighbour_offsets, potts_energy, straight_through
from .energy_mask import EnergyMask, MaskState
from .gate import StageGate, kept_tokens, pool_mask
from .heads import (
    ConvUnaryHead,
    PottsPairwise,
    auto_hidden,
    create_pairwise,
    create_unary_head,
    get_pairwise,
    get_unary_head,
    list_pairwise,
    list_unary_heads,
    register_pairwise,
    register_unary_head,
    unregister_pairwise,
    unregister_unary_head,
)
from .loss import EnergyLoss, energy_regularizer, gamma_at, layer_regularizer

__all__ = [
    "AdaptedMask",
    "SpatialAdapter",
    "EVAL_MODES",
    "GATES",
    "GATE_POOLS",
    "StageGate",
    "pool_mask",
    "kept_tokens",
    "TRAIN_MODES",
    "MaskConfig",
    "mean_field",
    "neighbour_kernel",
    "neighbour_offsets",
    "potts_energy",
    "straight_through",
    "EnergyMask",
    "MaskState",
    "ConvUnaryHead",
    "PottsPairwise",
    "auto_hidden",
    "create_pairwise",
    "create_unary_head",
    "get_pairwise",
    "get_unary_head",
    "list_pairwise",
    "list_unary_heads",
    "register_pairwise",
    "register_unary_head",
    "unregister_pairwise",
    "unregister_unary_head",
    "EnergyLoss",
    "energy_regularizer",
    "gamma_at",
    "layer_regularizer",
]
