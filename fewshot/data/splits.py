"""Named datasets and split schemes -> train / val / test class splits, read from the dataset registry."""

from __future__ import annotations

import numpy as np

from fewshot.data.base import DATASETS, DatasetSplits, load_splits
from fewshot.data.store import ClassSplit


def split_schemes() -> dict[str, tuple[str, ...]]:
    """Each registered dataset's split schemes (the first is its default)."""
    return {name: info.schemes for name, info in DATASETS.items()}


def subset_classes(split: ClassSplit, keep: np.ndarray) -> ClassSplit:
    """The classes `keep` (indices into split.class_names) of `split`, relabelled 0..len(keep)-1."""
    return split.subset(keep)


__all__ = ["DatasetSplits", "load_splits", "split_schemes", "subset_classes"]
