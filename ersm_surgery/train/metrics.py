"""Per-epoch sums that are reduced over processes: losses, top-k hits, per-layer mask density.

The density of a mask layer on one image is the fraction of its tokens that the hard mask keeps
(``MaskSet.density()``). Over the validation images we report its mean and its standard deviation: a
standard deviation well above 0 is sparsity that adapts to the input, which a fixed budget would not give.
"""
from __future__ import annotations

import math

import torch

from .distributed import DistInfo, all_reduce_sum

__all__ = ["EpochMeter", "short_name", "topk_hits"]


def short_name(layer: str) -> str:
    """``layer2.ersm_mask`` -> ``layer2``; ``layer3.2.ersm_mask_add`` -> ``layer3.2.add``."""
    return layer.replace(".ersm_mask_", ".").replace(".ersm_mask", "").replace("ersm_mask_", "") or layer


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the classes)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return [float(hit[:, : min(k, logits.shape[1])].any(1).sum()) for k in ks]


class EpochMeter:
    """Sums of one epoch's values; :meth:`reduce` adds them up over processes and returns the means.

    Args:
        layers: names of the mask layers (density columns).
    """

    def __init__(self, layers: list[str]) -> None:
        self.layers = list(layers)
        self.names = ["batches", "loss", "energy", "samples", "top1", "top5"]
        for name in self.layers:
            self.names += [f"d:{name}", f"d2:{name}"]
        self.sums = torch.zeros(len(self.names), dtype=torch.float64)
        self._index = {n: i for i, n in enumerate(self.names)}

    def add(self, key: str, value: float) -> None:
        self.sums[self._index[key]] += value

    def add_batch(self, loss: float, energy: float, logits: torch.Tensor, target: torch.Tensor,
                  density: dict[str, torch.Tensor] | None = None) -> None:
        """One batch: its mean losses, its hits, and the per-image density of each mask layer."""
        self.add("batches", 1)
        self.add("loss", loss)
        self.add("energy", energy)
        self.add("samples", float(target.numel()))
        top1, top5 = topk_hits(logits.detach().float(), target)
        self.add("top1", top1)
        self.add("top5", top5)
        for name, per_image in (density or {}).items():
            d = per_image.detach().double().cpu()
            self.add(f"d:{name}", float(d.sum()))
            self.add(f"d2:{name}", float((d * d).sum()))

    def reduce(self, info: DistInfo) -> dict[str, float]:
        """Means over batches (losses) and over images (accuracy in %, density and its std)."""
        s = all_reduce_sum(self.sums.clone(), info).cpu()
        get = {n: float(s[i]) for i, n in enumerate(self.names)}
        batches, n = max(get["batches"], 1.0), max(get["samples"], 1.0)
        out = {"loss": get["loss"] / batches, "energy": get["energy"] / batches,
               "top1": 100.0 * get["top1"] / n, "top5": 100.0 * get["top5"] / n, "samples": int(get["samples"])}
        for name in self.layers:
            mean = get[f"d:{name}"] / n
            var = max(0.0, get[f"d2:{name}"] / n - mean * mean)
            out[f"density/{short_name(name)}"] = mean
            out[f"density_std/{short_name(name)}"] = math.sqrt(var)
        return out
