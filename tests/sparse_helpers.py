"""Masks with chosen densities for the gate and sparse-runtime tests.

A freshly injected model keeps almost every token, so these tests set each mask layer's output
themselves: image 0 keeps every token, image 1 none, the others a random coherent blob of a random
density -- the mixed batches the sparse runtime must get right.
"""
from __future__ import annotations

import types

import torch

import ersm_surgery
from ersm_surgery.layers import MaskState


def blob_masks(batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) 0/1 masks: all on, all off, then blobs around random centres with random densities."""
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    out = torch.zeros(batch, 1, height, width)
    for b in range(batch):
        if b == 0:
            out[b] = 1
        elif b > 1:
            cy, cx = torch.rand(2, generator=generator) * torch.tensor([height, width])
            dist = ((yy - cy) ** 2 + (xx - cx) ** 2).flatten()
            keep = max(1, int(float(torch.rand(1, generator=generator)) * height * width))
            out[b, 0].view(-1)[dist.argsort()[:keep]] = 1
    return out


def fix_masks(model: torch.nn.Module, seed: int = 0) -> None:
    """Make every mask layer of ``model`` apply :func:`blob_masks` (the same masks for the same input shape)."""
    for i, layer in enumerate(ersm_surgery.masks(model)):
        def forward(self, x, _seed=seed + i):
            mask = blob_masks(x.shape[0], x.shape[2], x.shape[3], torch.Generator().manual_seed(_seed)).to(x)
            self.state = MaskState(q=mask, energy=0.5 - mask, hard=mask, mask=mask)
            return x * mask
        layer.forward = types.MethodType(forward, layer)


def randomise_norms(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so a folded bias that leaks would show."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
