"""Datasets as in-memory uint8 tensors with class-split views (Omniglot; shared store helpers)."""

from fewshot.data.omniglot import SPLIT_NAMES, OmniglotStore, load_omniglot, preprocess_image
from fewshot.data.store import (
    ClassSplit,
    atomic_write,
    cache_dir,
    describe_data_root,
    resolve_data_root,
    to_float,
)

__all__ = [
    "SPLIT_NAMES",
    "ClassSplit",
    "OmniglotStore",
    "atomic_write",
    "cache_dir",
    "describe_data_root",
    "load_omniglot",
    "preprocess_image",
    "resolve_data_root",
    "to_float",
]
