"""A training run's settings (`TrainConfig`), their checks, and the model spec they describe."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from fewshot.training.augment import AUGMENTATIONS
from fewshot.data.datasets import DatasetSplits
from fewshot.learners import LEARNERS
from fewshot.model.network import ModelSpec

SCHEDULES = ("step", "cosine", "none")
# "episodes": N-way K-shot episodes with queries; "balanced": class-balanced batches (P classes x M images).
SAMPLINGS = ("episodes", "balanced")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as config.json and inside each checkpoint.

    `learner_args`, `metric_args`, `backbone_args` and `dataset_args` are the keyword arguments of the
    registered learner, distance, backbone and dataset loader (`--loss-arg name=value` and friends).
    `margin` and `miner` are shorthands for the learner arguments of the same names.

    `sampling="balanced"` trains on class-balanced batches of `batch_classes` x `batch_images` images
    (each a pure function of (seed, step), like the episodes) instead of `train_ways`-way episodes with
    `queries`; `episodes` then counts batches. `init` names a checkpoint whose backbone the run starts
    from (its learner parameters dropped); `init_sha256` is that file's digest, filled in when the run
    starts (a given value must match the file). `freeze_backbone` trains only the learner's parameters.
    """

    ways: int = 5
    shots: int = 1
    queries: int = 5
    train_ways: int = 60
    eval_queries: int = 15
    learner: str = "protonet"
    metric: str | None = None  # None: the learner's default distance
    backbone: str = "conv4"
    normalize: bool | None = None  # None: the learner's default (on for siamese and triplet: their margins assume unit norm)
    margin: float | None = None
    miner: str | None = None
    learner_args: dict[str, Any] = field(default_factory=dict)
    metric_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "omniglot"
    split: str | None = None
    dataset_args: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"  # "trainval": train on train + val classes, keep the final model
    image_size: int | None = None
    augment: str = "none"  # "affine": a random small affine distortion of every training image
    episodes: int = 6000
    lr: float = 1e-3
    schedule: str = "step"
    lr_step: int = 1500
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    val_every: int = 500
    val_episodes: int = 200
    test_episodes: int = 1000
    checkpoint_every: int = 100
    seed: int = 0
    data_root: str | None = None
    output: str | None = None  # default: a new runs/<dataset>-<learner>-<ways>w<shots>s-<time> directory
    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"  # "bf16": backbone under bfloat16 autocast (2x faster on CPUs with AVX512-BF16 or AMX)
    sampling: str = "episodes"  # "balanced": class-balanced batches, for the proxy and pair losses
    batch_classes: int = 64  # P, classes per balanced batch
    batch_images: int = 4  # M, images per class in a balanced batch
    init: str | None = None  # a checkpoint whose backbone the run starts from (pretrain, then fine-tune)
    init_sha256: str | None = None  # SHA-256 of `init`, recorded when the run starts
    freeze_backbone: bool = False  # train the learner's parameters only; backbone BN layers in eval mode
    episodes_per_step: int | None = None  # B episodes per optimiser step (gradients averaged); None: one per process
    sync_batchnorm: bool = False  # SyncBatchNorm across processes (CUDA only)
    dist_timeout: float = 300.0  # seconds a collective waits for the other ranks before failing

    # Settings that may change between a run and its resumption without changing its numbers.
    RESUMABLE_CHANGES = ("episodes", "output", "device", "data_root", "test_episodes", "threads", "dist_timeout")


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


class NonFiniteParameters(NonFiniteLoss):
    """Training produced NaN or infinite weights (or optimizer state); they are never saved."""


def resolved_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A saved or current config as a dict with every default filled in: settings added since a run
    was saved take their defaults, and `metric` / `normalize` left to the learner are made explicit,
    so that two configs compare equal exactly when they train the same way."""
    merged = {**asdict(TrainConfig()), **settings}
    if merged["episodes_per_step"] is None:  # runs from before the setting, and single-process defaults
        merged["episodes_per_step"] = 1
    learner = LEARNERS.get(merged["learner"])
    if learner is not None:
        if merged["metric"] is None:
            merged["metric"] = learner.default_distance
        if merged["normalize"] is None:
            merged["normalize"] = bool(learner.normalize)
    return merged


def model_spec(config: TrainConfig, splits: DatasetSplits) -> ModelSpec:
    """The architecture a config trains on `splits` (the learner's own defaults filled in)."""
    return ModelSpec(
        backbone=config.backbone,
        learner=config.learner,
        metric=config.metric,
        normalize=config.normalize,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        backbone_args=config.backbone_args,
        learner_args=config.learner_args,
        metric_args=config.metric_args,
        # Only learners with per-class parameters (proxies) record the class count: other specs stay as before.
        num_classes=(splits.get(config.train_split).num_classes
                     if "num_classes" in LEARNERS.signature(config.learner) else None),
        margin=config.margin,
        miner=config.miner,
    )


def _too_small(split, needed: int) -> str:
    counts = split.class_counts()
    small = np.flatnonzero(counts < needed)
    listed = ", ".join(f"{split.class_names[c]} ({counts[c]})" for c in small[:5])
    return f"{len(small)} classes have fewer: {listed}{', ...' if len(small) > 5 else ''}"


def _non_finite_arguments(values: Any, where: str) -> list[str]:
    """`where` names of the float values in component arguments (nested tuples included) that are NaN or inf."""
    if isinstance(values, dict):
        return [name for key, value in values.items() for name in _non_finite_arguments(value, f"{where} {key}")]
    if isinstance(values, (list, tuple)):
        return [name for value in values for name in _non_finite_arguments(value, where)]
    if isinstance(values, float) and not math.isfinite(values):
        return [f"{where}={values}"]
    return []


def check_settings(config: TrainConfig) -> None:
    """Fail on settings that are wrong whatever the data: non-finite hyper-parameters (one update with
    --lr inf fills the weights with NaN, and a model of NaN scores chance), a thread count torch refuses."""
    bounds = (("lr", config.lr, 0.0, False), ("lr_gamma", config.lr_gamma, 0.0, False),
              ("weight_decay", config.weight_decay, 0.0, True))
    for name, value, low, low_allowed in bounds:
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value!r}")
        if value < low or (value == low and not low_allowed):
            raise ValueError(f"{flag} must be {'at least' if low_allowed else 'greater than'} {low:g}, got {value!r}")
    if config.margin is not None and (isinstance(config.margin, bool) or not isinstance(config.margin, (int, float))
                                      or not math.isfinite(config.margin)):
        raise ValueError(f"--margin must be a finite number, got {config.margin!r}")
    bad = [*_non_finite_arguments(config.learner_args, "--loss-arg"), *_non_finite_arguments(config.metric_args, "--metric-arg"),
           *_non_finite_arguments(config.backbone_args, "--backbone-arg"), *_non_finite_arguments(config.dataset_args, "--dataset-arg")]
    if bad:
        raise ValueError(f"non-finite argument values {', '.join(bad)}; give finite numbers")
    if config.threads is not None and (isinstance(config.threads, bool) or not isinstance(config.threads, int)
                                       or config.threads < 1):
        raise ValueError(f"--threads must be a positive int (or left out for torch's choice), got {config.threads!r}")


def check_config(config: TrainConfig, splits: DatasetSplits) -> None:
    """Fail before training on settings the data cannot serve (and on those `check_settings` refuses)."""
    check_settings(config)
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {config.precision!r}; expected one of {sorted(PRECISIONS)}")
    for name, value in (("ways", config.ways), ("shots", config.shots), ("queries", config.queries),
                        ("train_ways", config.train_ways), ("eval_queries", config.eval_queries), ("episodes", config.episodes),
                        ("val_every", config.val_every), ("checkpoint_every", config.checkpoint_every),
                        ("lr_step", config.lr_step)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name, value in (("val_episodes", config.val_episodes), ("test_episodes", config.test_episodes)):
        if value < 2:  # a confidence interval needs two episodes; the test episodes come after all the training
            raise ValueError(f"--{name.replace('_', '-')} must be at least 2 (for a confidence interval), got {value}")
    if config.train_split not in ("train", "trainval"):
        raise ValueError(f"unknown --train-split {config.train_split!r}; expected train or trainval")
    if config.sampling not in SAMPLINGS:
        raise ValueError(f"unknown --sampling {config.sampling!r}; expected one of {', '.join(SAMPLINGS)}")
    balanced = config.sampling == "balanced"
    if balanced:
        check_balanced(config, splits)
    # Balanced batches replace the training episodes: --train-ways and --queries then do not apply.
    episode_splits = (("val", "test") if balanced else (config.train_split, "val", "test"))
    for split_name in episode_splits:
        ways = config.train_ways if split_name == config.train_split else config.ways
        available = splits.get(split_name).num_classes
        if ways > available:
            flag = "--train-ways" if split_name == config.train_split else "--ways"
            raise ValueError(f"{flag} {ways} exceeds the {available} classes of the {splits.dataset} {splits.scheme} {split_name} split")
    # Validation samples its first episode only after --val-every training episodes: check it now.
    for split_name in episode_splits:
        queries, flag = ((config.queries, "--queries") if split_name == config.train_split
                         else (config.eval_queries, "--eval-queries"))
        split = splits.get(split_name)
        smallest = int(split.class_counts().min())
        if config.shots + queries > smallest:
            raise ValueError(f"--shots {config.shots} + {flag} {queries} needs {config.shots + queries} images per class, but "
                             f"classes of the {splits.dataset} {splits.scheme} {split_name} split have as few as {smallest} "
                             f"({_too_small(split, config.shots + queries)})")
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown --augment {config.augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")


def check_balanced(config: TrainConfig, splits: DatasetSplits) -> None:
    """Fail on class-balanced batches that the learner or the training split cannot serve."""
    learner = LEARNERS.get_or_raise(config.learner)
    if learner.needs_queries:
        usable = ", ".join(name for name, factory in LEARNERS.items() if not factory.needs_queries)
        raise ValueError(f"--sampling balanced gives batches without queries, and the {config.learner} loss needs "
                         f"queries (it scores them against the support); train {config.learner} on episodes "
                         f"(--sampling episodes), or use a loss over the whole batch: {usable}")
    for flag, value in (("--batch-classes", config.batch_classes), ("--batch-images", config.batch_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be a positive int, got {value!r}")
    split = splits.get(config.train_split)
    if config.batch_classes > split.num_classes:
        raise ValueError(f"--batch-classes {config.batch_classes} exceeds the {split.num_classes} classes of the "
                         f"{splits.dataset} {splits.scheme} {config.train_split} split")
    smallest = int(split.class_counts().min())
    if config.batch_images > smallest:
        raise ValueError(f"--batch-images {config.batch_images} exceeds the images of some classes of the "
                         f"{splits.dataset} {splits.scheme} {config.train_split} split, which have as few as {smallest} "
                         f"({_too_small(split, config.batch_images)})")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-episode learning-rate schedule."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.episodes)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
