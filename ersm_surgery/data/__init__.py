"""Data for ersm-surgery: timm-layout image folders and the built-in offline ``builtin:clutter`` set.

Every data set yields ``(normalised CxHxW tensor, int target)`` and exposes ``classes``, ``num_classes``,
``has_boxes``, ``box(i)``, ``mean``, ``std`` and ``description()``.
"""
from ._base import EVAL_SPLITS, TRAIN_SPLITS, Box, ErsmDataset, build_transform, canonical_split
from ._factory import BUILTIN_PREFIX, create_dataset, list_builtin_datasets, make_loader
from .clutter import CLUTTER_CLASSES, CLUTTER_MEAN, CLUTTER_STD, ClutterDataset, ClutterSample
from .folder import FolderDataset, find_split_dir

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
]
