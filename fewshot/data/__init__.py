"""Datasets as in-memory uint8 tensors with class-split views. Importing this package registers the
built-in datasets (Omniglot, miniImageNet, a user's image folder, arrays in memory)."""

from fewshot.data import miniimagenet as _miniimagenet  # noqa: F401  (registers "miniimagenet")
from fewshot.data.arrays import from_arrays
from fewshot.data.datasets import DATASETS, DatasetInfo, DatasetSplits, load_splits, register_dataset
from fewshot.data.folder import from_folder
from fewshot.data.omniglot import SPLIT_NAMES, OmniglotStore, load_omniglot, preprocess_image
from fewshot.data.splits import ClassSplit, to_float
from fewshot.data.storage import cache_dir, describe_data_root, resolve_data_root

__all__ = [
    "DATASETS",
    "SPLIT_NAMES",
    "ClassSplit",
    "DatasetInfo",
    "DatasetSplits",
    "OmniglotStore",
    "cache_dir",
    "describe_data_root",
    "from_arrays",
    "from_folder",
    "load_omniglot",
    "load_splits",
    "preprocess_image",
    "register_dataset",
    "resolve_data_root",
    "to_float",
]
