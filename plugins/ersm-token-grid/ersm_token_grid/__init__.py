"""ersm-token-grid: an ersm-surgery plugin that masks token and channels-last stages.

It registers one model adapter, ``token_grid`` (see :class:`~ersm_token_grid.adapter.TokenGridAdapter`):

- token stages (B, N, C) of ViT, DeiT, EVA and their kin: the prefix tokens (class, register tokens:
  ``model.num_prefix_tokens``) are kept aside, the patch tokens are laid out on the patch grid
  (``model.patch_embed``), masked, and put back in order;
- channels-last stages (B, H, W, C) of Swin and MambaOut: permuted to (B, C, H, W) and back.

With it installed, ``ersm_surgery.inject("vit_small_patch16_224", stages=[6])`` works like it does
on a CNN, and the recipe records the adapter, so ``load()`` rebuilds the same model.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["register", "__version__"]


def register(registry) -> None:
    """Entry point of the ``ersm_surgery.plugins`` group: add the ``token_grid`` adapter."""
    from .adapter import TokenGridAdapter

    registry.register_adapter("token_grid", TokenGridAdapter)
