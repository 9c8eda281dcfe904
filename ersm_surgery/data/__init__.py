"""Data for ersm-surgery: timm-layout image folders and the built-in offline ``builtin:clutter`` set.

Every data set yields ``(normalised CxHxW tensor, int target)`` and exposes ``classes``, ``num_classes``,
``has_boxes``, ``box(i)``, ``mean``, ``std``, ``preprocessing`` and ``description()``. Images go through timm's
transforms of a data config (:class:`Preprocessing`), normally the model's own (:func:`resolve_preprocessing`).
"""
from ._base import EVAL_SPLITS, TRAIN_SPLITS, Box, ErsmDataset, build_transform, canonical_split
from ._factory import BUILTIN_PREFIX, create_dataset, list_builtin_datasets, make_loader
from .clutter import CLUTTER_CLASSES, CLUTTER_MEAN, CLUTTER_STD, ClutterDataset, ClutterSample
from .folder import FolderDataset, find_split_dir
from .preprocessing import Preprocessing, legacy_preprocessing
from .resolve import base_preprocessing, recorded_data_config, resolve_preprocessing

__all__ = [
    "Box",
    "ErsmDataset",
    "TRAIN_SPLITS",
    "EVAL_SPLITS",
    "canonical_split",
    "build_transform",
    "BUILTIN_PREFIX",
    "create_dataset",
    "list_builtin_datasets",
    "make_loader",
    "CLUTTER_CLASSES",
    "CLUTTER_MEAN",
    "CLUTTER_STD",
    "ClutterDataset",
    "ClutterSample",
    "FolderDataset",
    "find_split_dir",
    "Preprocessing",
    "legacy_preprocessing",
    "base_preprocessing",
    "recorded_data_config",
    "resolve_preprocessing",
]
