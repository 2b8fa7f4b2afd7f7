"""The settings of a training run, section by section, and the choices of the training's own.

A run's settings fall in six frozen sections, grouped as the command line groups its flags: `episode`
(what a training and an evaluation episode hold), `model` (the architecture and where it starts),
`data`, `optimisation`, `run` (validation, checkpoints, output, device) and `processes` (torchrun).
Each section's dataclass holds its settings' defaults; `SECTIONS`, `SETTING_SECTIONS` and `FLAT_ORDER`
say where each setting lives and in which order config.json lists them. `fewshot.training.config.TrainConfig`
gathers the sections into one config and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from fewshot.model.network import ModelSpec

# "episodes": N-way K-shot episodes with queries; "balanced": class-balanced batches (P classes x M images);
# "meta-dataset": Meta-Dataset's variable-way, variable-shot, imbalanced episodes (`episodes.MetaDatasetSampler`).
SAMPLINGS = ("episodes", "balanced", "meta-dataset")
#: Meta-Dataset's most ways per episode (the paper's 50), when `max_ways` is left out.
META_DATASET_MAX_WAYS = 50
#: Meta-Dataset's fewest ways per episode (the paper's 5).
META_DATASET_MIN_WAYS = 5
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
TRAIN_SPLITS = ("train", "trainval")
#: The episode sizes left to the data when not given (None in a config): a dataset's declaration may
#: replace these (`DatasetInfo.training_defaults`), and a run lowers each to what its split holds (a
#: folder of 26 classes trains 16-way, not 60-way). Omniglot's and miniImageNet's runs take them as they are.
DATA_DEFAULTS: dict[str, int] = {"train_ways": 60, "queries": 5, "eval_queries": 15}


@dataclass(frozen=True)
class EpisodeSettings:
    """What training and evaluation episodes (or class-balanced batches) hold.

    `sampling="balanced"` trains on class-balanced batches of `batch_classes` x `batch_images` images
    (each a pure function of (seed, step), like the episodes) instead of `train_ways`-way episodes with
    `queries`; `sampling="meta-dataset"` trains on Meta-Dataset's episodes (5 to `max_ways` ways, per-class
    shots and per-episode queries drawn by `episodes.MetaDatasetSampler` with the paper's defaults; `train_ways`,
    `shots` and `queries` do not shape them). Validation and test always use `ways`-way `shots`-shot episodes
    with `eval_queries`. `train_ways`,
    `queries` and `eval_queries` left as None take the dataset's defaults (`DATA_DEFAULTS`), lowered to
    what the split holds, when the config is resolved (`data_defaults`); given values are never changed.
    """

    ways: int = 5
    shots: int = 1
    queries: int | None = None  # None: 5, or fewer when the train split's classes hold fewer images
    train_ways: int | None = None  # None: 60, or the train split's class count when it has fewer
    eval_queries: int | None = None  # None: 15, or fewer when the val / test classes hold fewer images
    sampling: str = "episodes"  # "balanced": class-balanced batches, for the proxy and pair losses
    batch_classes: int = 64  # P, classes per balanced batch
    batch_images: int = 4  # M, images per class in a balanced batch
    max_ways: int | None = None  # sampling "meta-dataset": the most ways per training episode (None: 50)


@dataclass(frozen=True)
class ModelSettings:
    """The architecture (what `ModelSpec` is built from) and where training starts.

    `learner_args`, `metric_args` and `backbone_args` are the keyword arguments of the registered
    learner, distance and backbone (`--loss-arg name=value` and friends). `init` names a checkpoint
    whose backbone the run starts from (its learner parameters dropped); `init_sha256` is that file's
    digest, filled in when the run starts (a given value must match the file). `freeze_backbone`
    trains only the learner's parameters.
    """

    learner: str = "protonet"
    metric: str | None = None  # None: the learner's default distance
    backbone: str = "conv4"
    normalize: bool | None = None  # None: the learner's default (on for siamese and triplet: their margins assume unit norm)
    learner_args: dict[str, Any] = field(default_factory=dict)
    metric_args: dict[str, Any] = field(default_factory=dict)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # a checkpoint whose backbone the run starts from (pretrain, then fine-tune)
    init_sha256: str | None = None  # SHA-256 of `init`, recorded when the run starts
    freeze_backbone: bool = False  # train the learner's parameters only; backbone BN layers in eval mode

    #: The settings that are the architecture, passed to `ModelSpec` as they are.
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("backbone", "learner", "metric", "normalize", "backbone_args",
                                               "learner_args", "metric_args")

    def spec(self, in_channels: int, image_size: int, num_classes: int | None) -> ModelSpec:
        """The `ModelSpec` of this section for images of `in_channels` x `image_size`^2 (checked there)."""
        return ModelSpec(**{name: getattr(self, name) for name in self.ARCHITECTURE}, in_channels=in_channels,
                         image_size=image_size, num_classes=num_classes)


@dataclass(frozen=True)
class DataSettings:
    """The dataset, its split, and what the training images go through."""

    dataset: str = "omniglot"
    split: str | None = None
    dataset_args: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"  # "trainval": train on train + val classes, keep the final model
    image_size: int | None = None
    augment: str = "none"  # "affine": a random small affine distortion of every training image
    data_root: str | None = None


@dataclass(frozen=True)
class OptimisationSettings:
    """The optimiser, its learning-rate schedule, the run's length and its seed."""

    episodes: int = 6000
    lr: float = 1e-3
    schedule: str = "step"
    lr_step: int = 1500
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class RunSettings:
    """Validation, checkpoints, the run directory and where the run computes."""

    val_every: int = 500
    val_episodes: int = 200
    test_episodes: int = 1000
    checkpoint_every: int = 100
    output: str | None = None  # default: a new runs/<dataset>-<learner>-<ways>w<shots>s-<time> directory
    device: str = "auto"
    precision: str = "fp32"  # "bf16": backbone under bfloat16 autocast (fast on CPUs with AVX512-BF16 or AMX)
    threads: int | None = None
    tensorboard: bool = False  # a TensorBoard log in RUN/tensorboard beside metrics.jsonl (needs the tensorboard package)


@dataclass(frozen=True)
class ProcessSettings:
    """Several processes under torchrun (docs/distributed.md)."""

    episodes_per_step: int | None = None  # B episodes per optimiser step (gradients averaged); None: one per process
    sync_batchnorm: bool = False  # SyncBatchNorm across processes (CUDA only)
    dist_timeout: float = 300.0  # seconds a collective waits for the other ranks before failing


#: Section name -> its settings class, in the order of the command line's flag groups.
SECTIONS: dict[str, type] = {"episode": EpisodeSettings, "model": ModelSettings, "data": DataSettings,
                             "optimisation": OptimisationSettings, "run": RunSettings, "processes": ProcessSettings}
#: Each setting's section.
SETTING_SECTIONS: dict[str, str] = {f.name: name for name, kind in SECTIONS.items() for f in fields(kind)}
#: The flat order of config.json (the order of the flat `TrainConfig` that wrote it before the sections).
FLAT_ORDER = ("ways", "shots", "queries", "train_ways", "eval_queries", "learner", "metric", "backbone", "normalize",
              "learner_args", "metric_args", "backbone_args", "dataset", "split", "dataset_args", "train_split",
              "image_size", "augment", "episodes", "lr", "schedule", "lr_step", "lr_gamma", "weight_decay", "val_every",
              "val_episodes", "test_episodes", "checkpoint_every", "seed", "data_root", "output", "device", "threads",
              "precision", "sampling", "batch_classes", "batch_images", "init", "init_sha256", "freeze_backbone",
              "episodes_per_step", "sync_batchnorm", "dist_timeout", "tensorboard", "max_ways")
#: Settings that saved configs once held and that now live elsewhere: `margin` and `miner` were
#: shorthands for the learner arguments of the same names (the command line still takes them).
LEGACY_LEARNER_SETTINGS = ("margin", "miner")


def upgrade_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Flat settings as this version names them: `margin` and `miner` (configs saved before learner
    arguments existed) become `learner_args` entries (given ones win, as they always did)."""
    legacy = {key: settings[key] for key in LEGACY_LEARNER_SETTINGS if settings.get(key) is not None}
    upgraded = {key: value for key, value in settings.items() if key not in LEGACY_LEARNER_SETTINGS}
    if legacy:
        upgraded["learner_args"] = {**dict(upgraded.get("learner_args") or {}), **legacy}
    return upgraded
