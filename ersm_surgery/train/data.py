"""Data for a fine-tuning run: both splits, and loaders whose order is a function of (seed, epoch).

``ersm_surgery.data.make_loader`` shuffles with one generator for the whole run, so the order of epoch
k depends on how many epochs that generator has served; a resumed run would see epoch 0's order again.
Here the sampler draws epoch k's permutation from ``(seed, k)`` alone, and the loader's generator (the
base seed of its workers' augmentation) is re-seeded from ``(seed, k)`` too, so a run resumed at epoch k
sees exactly the batches the uninterrupted run saw. With several processes each rank takes every
``world_size``-th index of the same permutation (DistributedSampler's sharding).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data import create_dataset
from ..data._base import ErsmDataset
from ..data.preprocessing import Preprocessing
from ..errors import DataError
from .config import FinetuneConfig

__all__ = ["EpochSampler", "build_datasets", "build_loader", "set_epoch", "apply_preprocessing"]


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Indices of one rank's shard for an epoch: a permutation seeded by ``(seed, epoch)``, or in order.

    Args:
        size: number of samples.
        seed: seed of every epoch's permutation.
        shuffle: permute (train) or keep the order (validation).
        rank: this process's rank.
        world_size: number of processes.
        pad: repeat the first indices so every rank gets the same count (training under DDP must take
            the same number of steps everywhere); validation leaves the shards unequal and exact.
    """

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """Every index of this epoch, before sharding."""
        if not self.shuffle:
            return list(range(self.size))
        rng = np.random.default_rng(_seed_of(self.seed, self.epoch, 0x5A3))
        return rng.permutation(self.size).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        if self.pad and self.world_size > 1:
            total = math.ceil(self.size / self.world_size) * self.world_size
            order = (order * math.ceil(total / max(1, len(order))))[:total]
        return iter(order[self.rank::self.world_size])

    def __len__(self) -> int:
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))


def build_datasets(config: FinetuneConfig, img_size: int | None = None,
                   preprocessing: Preprocessing | None = None) -> tuple[ErsmDataset, ErsmDataset]:
    """The train and validation splits of ``config.data``, prepared with ``preprocessing`` (timm's transforms).

    The train split gets timm's training transform when ``config.augment`` (with ``config.aa``), else the
    same deterministic evaluation transform as the validation split. Without ``preprocessing`` the data
    sets keep their own (recipe version 1) preprocessing at ``img_size``.

    Raises:
        DataError: no data named, or a problem with the data (see ``ersm_surgery.data.create_dataset``).
    """
    if not config.data:
        raise DataError("no data given", "pass --data-dir DATA (train/ and validation/ folders) or --dataset "
                        "builtin:clutter")
    opts = dict(config.data_options)
    reserved = sorted(set(opts) & {"split", "img_size", "seed", "strict", "train_augment", "preprocessing",
                                   "auto_augment"})
    if reserved:
        raise DataError(f"data option(s) {', '.join(reserved)} are set by their own flags",
                        "use --img-size, --seed, --strict-data, --augment, --aa and --mean/--std/--crop-pct instead")
    # the pipeline's extra fine-tuning seeds keep the data of the first (reproduce --seeds): only order and init vary
    data_seed = opts.pop("data_seed", None)
    common: dict = dict(seed=config.seed if data_seed is None else int(data_seed), strict=config.strict_data)
    if preprocessing is not None:
        common["preprocessing"] = preprocessing
    else:
        common["img_size"] = img_size
    augment = {"train_augment": config.augment, **({"auto_augment": config.aa} if config.aa else {})}
    # built-in data: more unique train images without a validation split of the same size
    train_size = opts.pop("train_size", None)
    train_opts = opts if train_size is None else {**opts, "size": train_size}
    train = create_dataset(config.data, "train", **augment, **common, **train_opts)
    val = create_dataset(config.data, "validation", **common, **opts)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"the data in {config.data!r} has an empty split", "add images to train/ and validation/")
    if list(val.classes) != list(train.classes):
        raise DataError(f"the splits of {config.data!r} name different classes",
                        "give validation/ the same class folders as train/")
    return train, val


def apply_preprocessing(datasets: tuple[ErsmDataset, ...], preprocessing: Preprocessing,
                        config: FinetuneConfig) -> bool:
    """Point already built splits at ``preprocessing`` (the train split's augmentation as ``config`` says).

    Returns:
        False when a data set (a plugin's) has no ``set_preprocessing`` and keeps its own preparation.
    """
    applied = True
    for ds in datasets:
        if not hasattr(ds, "set_preprocessing"):
            applied = False
            continue
        ds.set_preprocessing(preprocessing, config.aa if getattr(ds, "train_augment", False) else None)
    return applied


def build_loader(dataset: ErsmDataset, config: FinetuneConfig, train: bool, rank: int = 0,
                 world_size: int = 1) -> DataLoader:
    """A loader over ``dataset`` with an :class:`EpochSampler`; call :func:`set_epoch` before each epoch."""
    sampler = EpochSampler(len(dataset), config.seed, shuffle=train, rank=rank, world_size=world_size, pad=train)
    generator = torch.Generator()
    generator.manual_seed(_seed_of(config.seed, 0, int(train)))
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        generator=generator,
        drop_last=train and config.mixes,  # timm's Mixup needs every batch of an even size
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,  # fresh workers each epoch, seeded from (seed, epoch)
    )


def set_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Point the loader's order and its workers' seeds at ``epoch``."""
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(_seed_of(seed, epoch, 0xA06))
