"""Named datasets and split schemes -> train / val / test class splits, as the CLIs use them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fewshot.data.store import ClassSplit

SPLIT_SCHEMES: dict[str, tuple[str, ...]] = {
    "omniglot": ("vinyals", "lake"),
    "miniimagenet": ("ravi",),
}
# Lake's protocol has no validation alphabets; hold out the last few background alphabets for
# model selection so that the evaluation alphabets stay novel.
LAKE_VAL_ALPHABETS = 5


@dataclass
class DatasetSplits:
    """The three class splits of one dataset under one scheme, plus what a model needs to know."""

    dataset: str
    scheme: str
    train: ClassSplit
    val: ClassSplit
    test: ClassSplit
    in_channels: int
    image_size: int
    trainval: ClassSplit | None = None  # train + val classes, where the scheme defines it (final models)

    def get(self, name: str) -> ClassSplit:
        if name not in ("train", "val", "test", "trainval"):
            raise ValueError(f"unknown split {name!r}; expected one of train, val, test, trainval")
        split = getattr(self, name)
        if split is None:
            raise ValueError(f"the {self.dataset} {self.scheme} scheme defines no {name} split")
        return split


def subset_classes(split: ClassSplit, keep: np.ndarray) -> ClassSplit:
    """The classes `keep` (indices into split.class_names) of `split`, relabelled 0..len(keep)-1."""
    keep = np.asarray(keep, dtype=np.int64)
    relabel = np.full(split.num_classes, -1, dtype=np.int64)
    relabel[keep] = np.arange(len(keep))
    rows = np.flatnonzero(relabel[split.labels] >= 0)
    return ClassSplit(
        images=split.images,
        image_index=split.image_index[rows],
        rotation=split.rotation[rows],
        labels=relabel[split.labels[rows]],
        class_names=[split.class_names[i] for i in keep],
        item_ids=split.item_ids[rows],
    )


def load_splits(dataset: str = "omniglot", scheme: str | None = None, root: str | Path | None = None, image_size: int | None = None) -> DatasetSplits:
    """Load `dataset` and return its train / val / test class splits under `scheme` (default: the first listed)."""
    if dataset not in SPLIT_SCHEMES:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(SPLIT_SCHEMES)}")
    scheme = scheme or SPLIT_SCHEMES[dataset][0]
    if scheme not in SPLIT_SCHEMES[dataset]:
        raise ValueError(f"unknown split scheme {scheme!r} for {dataset}; valid schemes: {', '.join(SPLIT_SCHEMES[dataset])}")
    if dataset == "omniglot":
        from fewshot.data.omniglot import load_omniglot

        size = image_size or 28
        store = load_omniglot(root, image_size=size)
        if scheme == "vinyals":
            train, val, test = store.split("train"), store.split("val"), store.split("test")
            return DatasetSplits(dataset, scheme, train, val, test, in_channels=1, image_size=size,
                                 trainval=store.split("trainval"))
        else:
            background = store.split("background", rotations=(0, 90, 180, 270))
            alphabet = np.array([name.split("/")[0] for name in background.class_names])
            held_out = sorted(set(alphabet))[-LAKE_VAL_ALPHABETS:]
            is_val = np.isin(alphabet, held_out)
            train = subset_classes(background, np.flatnonzero(~is_val))
            val = subset_classes(background, np.flatnonzero(is_val))
            test = store.split("evaluation")
        return DatasetSplits(dataset, scheme, train, val, test, in_channels=1, image_size=size)
    from fewshot.data.miniimagenet import load_miniimagenet

    size = image_size or 84
    splits = load_miniimagenet(root, image_size=size)
    return DatasetSplits(dataset, scheme, splits["train"], splits["val"], splits["test"], in_channels=3, image_size=size)
