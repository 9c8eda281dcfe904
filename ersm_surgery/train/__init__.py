"""Fine-tuning with the energy regularizer (ERSM, arXiv 2604.06893): one process or torchrun DDP.

    from ersm_surgery.train import FinetuneConfig, RunInputs, finetune
    result = finetune(RunInputs("r18-ersm/", output="r18-ft/"), FinetuneConfig(data="builtin:clutter"))

``fit`` is the loop itself, for a model and data sets built by the caller.
"""
from ..io.source import SourceError, load_source, strip_masks
from .checkpoint import STATE_FILE, RunFolder, capture_rng, find_train_state, load_train_state, restore_rng
from .config import FinetuneConfig
from .data import EpochSampler, build_datasets, build_loader, set_epoch
from .distributed import DistInfo, init_distributed
from .errors import DivergedError, TrainingError
from .finetune import MUTABLE_MASK_KEYS, RunInputs, finetune, recorded_settings, set_mask_settings
from .loop import Callbacks, FitResult, fit, seed_everything
from .schedule import MaskSchedule
from .settings import default_run_output, resolve_finetune_settings
from .source import freeze_backbone, reset_head

__all__ = [
    "STATE_FILE",
    "RunFolder",
    "capture_rng",
    "find_train_state",
    "load_train_state",
    "restore_rng",
    "FinetuneConfig",
    "EpochSampler",
    "build_datasets",
    "build_loader",
    "set_epoch",
    "DistInfo",
    "init_distributed",
    "DivergedError",
    "TrainingError",
    "Callbacks",
    "FitResult",
    "fit",
    "seed_everything",
    "MUTABLE_MASK_KEYS",
    "RunInputs",
    "finetune",
    "recorded_settings",
    "set_mask_settings",
    "MaskSchedule",
    "default_run_output",
    "resolve_finetune_settings",
    "SourceError",
    "freeze_backbone",
    "load_source",
    "reset_head",
    "strip_masks",
]
