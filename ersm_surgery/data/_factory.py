"""One entry point for every data set (``create_dataset``) and one for loaders (``make_loader``)."""
from __future__ import annotations

import inspect
import logging
import os

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..errors import DataError
from ._base import ErsmDataset
from .clutter import ClutterDataset
from .folder import FolderDataset
from .preprocessing import Preprocessing

_log = logging.getLogger(__name__)

__all__ = ["create_dataset", "make_loader", "list_builtin_datasets", "BUILTIN_PREFIX"]

BUILTIN_PREFIX = "builtin:"
_BUILTINS: dict[str, type[ErsmDataset]] = {"clutter": ClutterDataset}


def list_builtin_datasets() -> list[str]:
    """Specs of the built-in data sets, e.g. ``["builtin:clutter"]``."""
    return [BUILTIN_PREFIX + name for name in sorted(_BUILTINS)]


def _accepts(factory, name: str) -> bool:
    if factory is None:
        return False
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _check_kwargs(cls: type, kwargs: dict, fixed: set[str], what: str) -> None:
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"} - fixed
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise DataError(f"unknown option(s) for {what}: {', '.join(unknown)}",
                        f"use only {', '.join(sorted(allowed))}")


def create_dataset(
    spec: str | os.PathLike,
    split: str = "train",
    img_size: int | None = None,
    seed: int = 0,
    strict: bool = False,
    preprocessing: Preprocessing | None = None,
    **kwargs,
) -> ErsmDataset:
    """Build a data set from a spec: ``"builtin:clutter"``, a plugin's ``"<plugin>:<name>"`` or a directory.

    Args:
        spec: ``"builtin:<name>"`` (see :func:`list_builtin_datasets`), a spec a plugin registered (see
            ``ersm_surgery.plugins.list_datasets``; its factory gets ``split``, ``img_size``, ``seed``, the
            kwargs, and ``strict`` only when true) or a path in timm's ImageFolder layout holding ``train/``
            and ``validation/`` (timm's synonyms such as ``training/``, ``val/``, ``valid/`` are accepted).
        split: ``train``/``training`` or ``validation``/``val``/``valid``/``validate``/``eval``/``test``.
        img_size: side of the returned square images (default: the side of ``preprocessing``, else 64).
        seed: seed of a generated data set (ignored for folders: their order is fixed by file names).
        strict: folders only: raise on an unreadable image instead of skipping and counting it.
        preprocessing: the timm data config the images go through (the model's: see
            ``ersm_surgery.data.resolve_preprocessing``); None keeps the data set's own (recipe version 1)
            preprocessing. A plugin data set gets it only when its factory takes a ``preprocessing`` argument.
        **kwargs: ``train_augment`` and ``auto_augment`` for every data set; ``num_classes``, ``size`` and
            ``spurious_cue`` for ``builtin:clutter``.

    Returns:
        An :class:`ErsmDataset` yielding ``(normalised CxHxW float tensor, int target)``.

    Raises:
        DataError: unknown built-in or plugin data set, unknown option, or a folder problem (missing
            directory or split, empty class folder, no images, unreadable image with ``strict``).
    """
    text = os.fspath(spec)
    if preprocessing is not None:
        if img_size is not None and int(img_size) != preprocessing.img_size:
            raise DataError(f"img_size {img_size} differs from the preprocessing's input size "
                            f"{preprocessing.img_size}", "pass one of them, or the same size to both")
        img_size = preprocessing.img_size
        kwargs["preprocessing"] = preprocessing
    img_size = 64 if img_size is None else int(img_size)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        if name not in _BUILTINS:
            raise DataError(f"unknown built-in data set {text!r}",
                            f"use one of {', '.join(list_builtin_datasets())} or a data directory")
        cls = _BUILTINS[name]
        _check_kwargs(cls, kwargs, {"split", "img_size", "seed"}, text)
        return cls(split=split, img_size=img_size, seed=seed, **kwargs)
    from .. import plugins  # "<plugin>:<name>" specs come from plugins (see ersm_surgery.plugins)

    if plugins.is_plugin_dataset_spec(text):
        # strict goes to a plugin only when asked for, so factories that do not know it keep working
        extra = {"strict": True} if strict else {}
        if "preprocessing" in kwargs and not _accepts(plugins.get_dataset_factory(text), "preprocessing"):
            kwargs.pop("preprocessing")
            _log.warning("the plugin data set %s prepares its own images; the model's preprocessing is not applied",
                         text)
        return plugins.create_plugin_dataset(text, split=split, img_size=img_size, seed=seed, **extra, **kwargs)
    _check_kwargs(FolderDataset, kwargs, {"root", "split", "img_size", "strict"}, "a data directory")
    return FolderDataset(text, split=split, img_size=img_size, strict=strict, **kwargs)


def make_loader(
    dataset: ErsmDataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    drop_last: bool = False,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader whose order and worker seeds are fixed by ``seed``.

    The loader's generator fixes the shuffle order and the base seed of every worker (so augmentation in
    workers is reproducible too). With ``distributed`` a :class:`DistributedSampler` shards the data over
    the process group; call ``loader.sampler.set_epoch(epoch)`` each epoch to reshuffle.

    Args:
        dataset: the data set.
        batch_size: samples per batch (per process when distributed).
        shuffle: reshuffle every epoch.
        workers: worker processes; 0 loads in the main process.
        seed: seed of the order.
        drop_last: drop the last incomplete batch.
        distributed: shard with a DistributedSampler (needs an initialised process group).

    Returns:
        The DataLoader.

    Raises:
        DataError: a bad batch size or worker count, or ``distributed`` without a process group.
    """
    if int(batch_size) < 1 or int(workers) < 0:
        raise DataError(f"invalid loader settings batch_size={batch_size}, workers={workers}",
                        "use a batch size of at least 1 and a worker count of at least 0")
    sampler = None
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise DataError("distributed loading requested but no process group is initialised",
                            "launch with torchrun and call torch.distributed.init_process_group first")
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=int(workers),
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=int(workers) > 0,
    )
