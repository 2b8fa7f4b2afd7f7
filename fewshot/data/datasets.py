"""Datasets as declarations: each dataset module registers one `DatasetInfo` (its loader, the
preprocessing of one raw image, channels, default image size, split schemes and options), and
everything else (`load_splits`, the CLIs, `fewshot.api`) reads that declaration.

Adding a dataset is one new module that calls `register_dataset` (see docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from fewshot.data.splits import ClassSplit, drop_small_classes
from fewshot.data.images import load_resized
from fewshot.registry import Registry

ImageLike = Union[str, Path, Image.Image]
SPLIT_NAMES = ("train", "val", "test", "trainval")
#: The training settings a dataset's declaration may give defaults for (`DatasetInfo.training_defaults`).
TRAINING_DEFAULT_NAMES = ("train_ways", "queries", "eval_queries")


@dataclass
class DatasetSplits:
    """The class splits of one dataset under one scheme, plus what a model needs to know.

    `options` are the dataset arguments the splits were made with (recorded in runs and checkpoints,
    so evaluation and `fewshot.api` prepare images the same way). `fingerprints` identify classes by
    content ({class name: SHA-256}, see `fewshot.data.identity`), for datasets that hash their files.
    `dropped_classes` is the record of `without_small_classes` (None when no class filter was applied).
    """

    dataset: str
    scheme: str
    train: ClassSplit
    val: ClassSplit
    test: ClassSplit
    in_channels: int
    image_size: int
    trainval: ClassSplit | None = None  # train + val classes, where the scheme defines it (final models)
    options: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    dropped_classes: dict[str, Any] | None = None

    def get(self, name: str) -> ClassSplit:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        split = getattr(self, name)
        if split is None:
            raise ValueError(f"the {self.dataset} {self.scheme} scheme defines no {name} split")
        return split

    def describe(self) -> str:
        """One line per split: its class and image counts."""
        rows = [f"{self.dataset} ({self.scheme}), {self.in_channels} channel(s), {self.image_size}px:"]
        for name in ("train", "val", "test"):
            split = self.get(name)
            rows.append(f"  {name}: {split.num_classes} classes, {len(split)} images")
        if self.dropped_classes is not None:
            dropped = self.dropped_classes["classes"]
            rows.append(f"  dropped, fewer than {self.dropped_classes['min_images']} images: "
                        + ", ".join(f"{len(dropped[name])} {name}" for name in ("train", "val", "test")) + " classes")
        return "\n".join(rows)

    def without_small_classes(self, min_images: int) -> "DatasetSplits":
        """These splits without the classes of fewer than `min_images` images (in train, val, test and
        trainval alike), the dropped ones recorded in `dropped_classes` as {"min_images": N, "classes":
        {split: {class name: image count}}}. A split left with fewer than 2 classes is refused."""
        kept, dropped = {}, {}
        for name in ("train", "val", "test"):
            kept[name], dropped[name] = drop_small_classes(self.get(name), min_images)
            if kept[name].num_classes < 2:
                raise ValueError(f"min_images={min_images} leaves the {self.dataset} {name} split "
                                 f"{kept[name].num_classes} class(es) of its {self.get(name).num_classes} (few-shot "
                                 "episodes need at least 2); lower it")
        trainval = None if self.trainval is None else drop_small_classes(self.trainval, min_images)[0]
        return replace(self, **kept, trainval=trainval,
                       dropped_classes={"min_images": min_images, "classes": dropped})

    def class_lists(self) -> dict[str, list[str]]:
        """The class names of each split, for the run's record (novel classes stay novel)."""
        return {name: list(self.get(name).class_names) for name in ("train", "val", "test")}


@dataclass(frozen=True)
class DatasetInfo:
    """What the framework needs to know of a dataset.

    Attributes:
        name: the registered name (`--dataset NAME`).
        load: `load(root, scheme, image_size, **options) -> DatasetSplits`; options are its keyword
            parameters (`--dataset-arg name=value`).
        preprocess: `preprocess(image, image_size, channels) -> uint8 tensor` for one raw image (a path or
            PIL image), exactly as the loader prepares the images it stores.
        channels: image channels, or None when the data decides (a user's folder).
        default_image_size: the side used when `--image-size` is not given.
        schemes: the split schemes, the first being the default.
        background: the float value (0..1) of an empty pixel, what test-time shifts fill the uncovered
            border with; 0 (black, the value of zero padding) unless the dataset declares otherwise.
        training_defaults: episode sizes a training run takes when it is not given them, over the
            generic ones (`fewshot.training.settings.DATA_DEFAULTS`: `train_ways`, `queries`,
            `eval_queries`); the run still lowers each to what the loaded split holds.
    """

    name: str
    load: Callable[..., DatasetSplits]
    preprocess: Callable[[ImageLike, int, int], torch.Tensor]
    channels: int | None
    default_image_size: int
    schemes: tuple[str, ...]
    background: float = 0.0
    training_defaults: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.training_defaults) - set(TRAINING_DEFAULT_NAMES))
        if unknown:
            raise ValueError(f"dataset {self.name!r} declares training defaults {', '.join(unknown)}; a dataset "
                             f"may declare {', '.join(TRAINING_DEFAULT_NAMES)}")
        bad = {k: v for k, v in self.training_defaults.items()
               if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"dataset {self.name!r} training defaults must be positive ints, got {bad}")


#: Datasets by name; built-in ones register when `fewshot.data` is imported.
DATASETS: Registry = Registry("dataset")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Register a dataset declaration under `info.name`."""
    DATASETS.register(info.name, info)
    return info


def dataset_options(name: str) -> Registry:
    """A one-entry registry over the loader's options, to list and parse `--dataset-arg` values."""
    options: Registry = Registry(f"{name} dataset", injected=("root", "scheme", "image_size"))
    options.register(name, DATASETS.get_or_raise(name).load)
    return options


def load_splits(dataset: str, scheme: str | None = None, root: str | Path | None = None,
                image_size: int | None = None, **options: Any) -> DatasetSplits:
    """Load `dataset` and return its train / val / test class splits under `scheme` (default: the first listed)."""
    info = DATASETS.get_or_raise(dataset)
    scheme = scheme or info.schemes[0]
    if scheme not in info.schemes:
        raise ValueError(f"unknown split scheme {scheme!r} for {dataset}; valid schemes: {', '.join(info.schemes)}")
    size = info.default_image_size if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image size must be a positive int, got {image_size!r}")
    dataset_options(dataset).check_arguments(dataset, options, "--dataset-arg")
    return info.load(root, scheme, size, **options)


def preprocess_generic(image: ImageLike, image_size: int, channels: int) -> torch.Tensor:
    """One image as uint8 [H,W] (channels=1) or [3,H,W] (channels=3): grayscale or RGB, antialiased
    square resize. The preprocessing of datasets that store images as they come."""
    if channels == 1:
        return torch.from_numpy(load_resized(image, image_size, "L"))
    if channels == 3:
        return torch.from_numpy(load_resized(image, image_size, "RGB")).permute(2, 0, 1).contiguous()
    raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")


def split_classes(num_classes: int, fractions: tuple[float, float, float], seed: int) -> tuple[np.ndarray, ...]:
    """A seeded class-level train / val / test partition of class ids 0..num_classes-1.

    Each part gets round(fraction * num_classes) classes (at least one for a positive fraction), the
    test part what remains; the same (num_classes, fractions, seed) always gives the same partition.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1 (train, val, test), "
                         f"got {tuple(fractions)}")
    if num_classes < 3:
        raise ValueError(f"a train / val / test class split needs at least 3 classes, got {num_classes}")
    order = np.random.default_rng(seed).permutation(num_classes)
    n_train = max(1, round(fractions[0] * num_classes))
    n_val = max(1 if fractions[1] > 0 else 0, round(fractions[1] * num_classes))
    if n_train + n_val >= num_classes:
        raise ValueError(f"split fractions {tuple(fractions)} leave no test classes out of {num_classes}")
    return (np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_val]), np.sort(order[n_train + n_val:]))
