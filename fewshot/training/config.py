"""A training run's settings in one object (`TrainConfig`), their checks, and the model spec they describe.

`TrainConfig` holds the six frozen sections of `fewshot.training.settings` (`episode`, `model`, `data`,
`optimisation`, `run`, `processes`). It is built either from sections,
`TrainConfig(model=ModelSettings(learner="triplet"))`, or from flat keywords sorted into their sections,
`TrainConfig(ways=5, shots=1, output="runs/a")`; a flat read, `config.ways`, answers from the section that
holds the setting. The object is frozen: derive another with `dataclasses.replace(config, episodes=100)`
(flat keywords work there too).

`config.resolve(splits, world_size)` checks every setting and returns a new config with what the run
fills in itself (the loaded dataset's name, scheme and image size, absolute paths, the default output
directory and episodes per step); the caller's object is never changed. Each setting is checked in one
place: `check_settings` for what is wrong whatever the data, `check_data` for what the data cannot
serve, `check_processes` for what the job's processes cannot run, `ModelSpec` for the model's
registered names and arguments, and `fewshot.backbones.check_backbone` for the backbone's arguments
(the backbone built on the meta device).

On disk (config.json, the `config` of every checkpoint) a config is the flat dict of its settings, as
it always was, so old run directories resume; `TrainConfig.from_dict` and `TrainConfig.from_file`
read flat dicts, sectioned ones (a TOML file of `[episode]`, `[model]`, ... tables) and mixtures.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from episodes.metadataset import MetaDatasetSampler
from fewshot.backbones import check_backbone, starts_pretrained
from fewshot.data.datasets import DATASETS, DatasetSplits, dataset_options
from fewshot.data.splits import ClassSplit
from fewshot.files import absolute_path
from fewshot.learners import LEARNERS
from fewshot.model.network import ModelSpec
from fewshot.training.augment import AUGMENTATIONS
from fewshot.training.schedules import SCHEDULES
from fewshot.training.settings import (
    DATA_DEFAULTS,
    FLAT_ORDER,
    META_DATASET_MAX_WAYS,
    META_DATASET_MIN_WAYS,
    PRECISIONS,
    SAMPLINGS,
    SECTIONS,
    SETTING_SECTIONS,
    TRAIN_SPLITS,
    DataSettings,
    EpisodeSettings,
    ModelSettings,
    OptimisationSettings,
    ProcessSettings,
    RunSettings,
    upgrade_settings,
)


@dataclass(frozen=True, init=False)
class TrainConfig:
    """Every setting of a training run, in sections; saved (flat) as config.json and inside each checkpoint.

    Build it from sections or from flat keywords (see the module docstring); an unknown keyword is a
    TypeError that lists the valid ones. Flat reads (`config.lr`) answer from the sections.
    """

    episode: EpisodeSettings
    model: ModelSettings
    data: DataSettings
    optimisation: OptimisationSettings
    run: RunSettings
    processes: ProcessSettings

    # Settings that may change between a run and its resumption without changing its numbers.
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("episodes", "output", "device", "data_root", "test_episodes",
                                                    "threads", "dist_timeout", "tensorboard")

    def __init__(self, episode: EpisodeSettings | None = None, model: ModelSettings | None = None,
                 data: DataSettings | None = None, optimisation: OptimisationSettings | None = None,
                 run: RunSettings | None = None, processes: ProcessSettings | None = None, **settings: Any) -> None:
        unknown = [name for name in settings if name not in SETTING_SECTIONS]
        if unknown:
            raise TypeError(f"unknown training setting {', '.join(map(repr, unknown))}; expected the sections "
                            f"{', '.join(SECTIONS)} or the settings {', '.join(FLAT_ORDER)}")
        given = {"episode": episode, "model": model, "data": data, "optimisation": optimisation, "run": run,
                 "processes": processes}
        for name, kind in SECTIONS.items():
            section = kind() if given[name] is None else given[name]
            if not isinstance(section, kind):
                raise TypeError(f"the {name} section must be a {kind.__name__}, got {section!r}")
            changes = {key: value for key, value in settings.items() if SETTING_SECTIONS[key] == name}
            object.__setattr__(self, name, replace(section, **changes) if changes else section)

    def __getattr__(self, name: str) -> Any:
        """A flat read (`config.ways`) from the section that holds the setting."""
        section = SETTING_SECTIONS.get(name)
        if section is None:  # section names too: they are missing only half way through unpickling
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        return getattr(object.__getattribute__(self, section), name)

    def to_dict(self) -> dict[str, Any]:
        """The flat dict of every setting (config.json's and the checkpoints' format)."""
        return {name: _plain(getattr(getattr(self, SETTING_SECTIONS[name]), name)) for name in FLAT_ORDER}

    def sections(self) -> dict[str, dict[str, Any]]:
        """The settings as {section: {setting: value}}, the layout of a TOML config file."""
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> TrainConfig:
        """A config from a flat dict (config.json, a checkpoint's config, written by any version), a
        sectioned one (a TOML file) or a mixture; `margin` / `miner` of old configs become learner arguments."""
        flat: dict[str, Any] = {}
        for key, value in settings.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ValueError(f"the {key} section must be a table of settings, got {value!r}")
                misplaced = [name for name in value if SETTING_SECTIONS.get(name, key) != key]
                if misplaced:
                    raise ValueError(f"{', '.join(misplaced)} in the {key} section belong"
                                     f"{'s' if len(misplaced) == 1 else ''} to the "
                                     f"{', '.join(SETTING_SECTIONS[name] for name in misplaced)} section")
                entries = value.items()
            else:
                entries = [(key, value)]
            for name, entry in entries:
                if name in flat:
                    raise ValueError(f"setting {name!r} is given twice")
                flat[name] = entry
        flat = upgrade_settings(flat)
        try:
            return cls(**flat)
        except TypeError as error:
            raise ValueError(str(error)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """A config from a TOML file (sections as tables) or a JSON file (a run directory's config.json)."""
        path = Path(path)
        try:
            if path.suffix == ".toml":
                with open(path, "rb") as file:
                    settings = tomllib.load(file)
            else:
                settings = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                             f"{error}") from None
        if not isinstance(settings, dict):
            raise ValueError(f"config file {path} must hold a table of settings, got {type(settings).__name__}")
        try:
            return cls.from_dict(settings)
        except ValueError as error:
            raise ValueError(f"config file {path}: {error}") from None

    def resolve(self, splits: DatasetSplits, world_size: int = 1) -> TrainConfig:
        """A new, checked config of the run on `splits` by `world_size` processes: the dataset's name,
        scheme and image size as loaded, absolute paths, the default output directory and one episode
        per process and step filled in, and the episode sizes left to the data (`data_defaults`). Raises
        ValueError on any setting the run cannot use."""
        check_settings(self)
        filled = {name: value for name, (value, _) in data_defaults(self, splits).items()}
        if filled:
            check_settings(replace(self, **filled))
        resolved = replace(
            self, **filled,
            dataset=splits.dataset, split=splits.scheme, image_size=splits.image_size,
            data_root=None if self.data_root is None else str(absolute_path(self.data_root)),
            init=None if self.init is None else str(absolute_path(self.init)),
            episodes_per_step=world_size if self.episodes_per_step is None else self.episodes_per_step,
        )
        if resolved.output is None:  # named after the loaded dataset
            resolved = replace(resolved, output=default_output(resolved))
        check_data(resolved, splits)
        spec = resolved.model_spec(splits)  # the model section's names and arguments, checked by ModelSpec
        # The backbone built on the meta device: its arguments and the image size are checked before the run
        # directory exists (a width of 0 would otherwise fail in the first step, after it was written).
        check_backbone(spec.backbone, spec.in_channels, spec.image_size, spec.normalize, **spec.backbone_args)
        return resolved

    def model_spec(self, splits: DatasetSplits) -> ModelSpec:
        """The architecture this config trains on `splits` (the learner's own defaults filled in)."""
        # Only learners with per-class parameters (proxies) record the class count: other specs stay as before.
        num_classes = (splits.get(self.train_split).num_classes
                       if "num_classes" in LEARNERS.signature(self.learner) else None)
        return self.model.spec(splits.in_channels, splits.image_size, num_classes)


def _plain(value: Any) -> Any:
    """A setting's value for JSON (argument dicts copied, so the saved dict shares nothing with the config)."""
    return dict(value) if isinstance(value, dict) else value


def default_output(config: TrainConfig) -> str:
    """A new timestamped run directory, runs/<dataset>-<learner>-<ways>w<shots>s-<time>."""
    return f"runs/{config.dataset}-{config.learner}-{config.ways}w{config.shots}s-{time.strftime('%Y%m%d-%H%M%S')}"


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


class NonFiniteParameters(NonFiniteLoss):
    """Training produced NaN or infinite weights (or optimizer state); they are never saved."""


def data_defaults(config: TrainConfig, splits: DatasetSplits) -> dict[str, tuple[int, str]]:
    """{setting: (value, why the data lowered it, or "")} for each episode size `config` leaves to the data
    (None): the dataset's default (its declaration's `training_defaults` over `DATA_DEFAULTS`), lowered to
    the classes of the training split (`train_ways`) or to the images its smallest class holds beyond the
    shots (`queries` for the training split, `eval_queries` for validation and test). A split too small
    even for the least value keeps the default, so that `check_data` names what is missing."""
    info = DATASETS.get(splits.dataset)
    declared = {**DATA_DEFAULTS, **(dict(info.training_defaults) if info is not None else {})}
    where = f"the {splits.dataset} {splits.scheme}"
    chosen: dict[str, tuple[int, str]] = {}
    episodes = config.sampling == "episodes"  # balanced batches and Meta-Dataset episodes use neither train_ways nor queries

    def limited(name: str, available: int, least: int, why: str) -> None:
        default = declared[name]
        if episodes or name == "eval_queries":
            if least <= available < default:
                chosen[name] = (available, f"{why}; default {default}")
                return
        chosen[name] = (default, "")

    if config.train_ways is None:
        train = splits.get(config.train_split)
        limited("train_ways", train.num_classes, 2, f"{where} {config.train_split} split has {train.num_classes} classes")
    if config.queries is None:
        smallest = int(splits.get(config.train_split).class_counts().min())
        limited("queries", smallest - config.shots, 1, f"{where} {config.train_split} split has classes of "
                f"{smallest} images, {config.shots} of them support")
    if config.eval_queries is None:
        smallest = min(int(splits.get(name).class_counts().min()) for name in ("val", "test"))
        limited("eval_queries", smallest - config.shots, 1, f"{where} val / test splits have classes of "
                f"{smallest} images, {config.shots} of them support")
    return chosen


def describe_data_defaults(config: TrainConfig, splits: DatasetSplits) -> list[str]:
    """One line per episode size left to the data that the data lowered, e.g. "train ways: 16 (the folder
    random train split has 16 classes; default 60)": what a run's header prints. Queries lowered for a few
    small classes get one more line: which `--min-images-per-class` keeps the default, and how many classes it
    would leave out (said only where every split keeps at least 2 classes)."""
    chosen = data_defaults(config, splits)
    lines = [f"{name.replace('_', ' ')}: {value} ({why})" for name, (value, why) in chosen.items() if why]
    if not _takes_min_images(splits.dataset) or "min_images" in splits.options:
        return lines
    info = DATASETS.get(splits.dataset)
    declared = {**DATA_DEFAULTS, **(dict(info.training_defaults) if info is not None else {})}
    for name in ("queries", "eval_queries"):
        if not chosen.get(name, (0, ""))[1]:
            continue
        needed = config.shots + declared[name]
        counts = {split: splits.get(split).class_counts() for split in ("train", "val", "test")}
        if all(int((count >= needed).sum()) >= 2 for count in counts.values()):
            small = ", ".join(f"{int((count < needed).sum())} {split}" for split, count in counts.items())
            lines.append(f"  (--min-images-per-class {needed} keeps {declared[name]} {name.replace('_', ' ')}, leaving "
                         f"out the classes of fewer images: {small})")
    return lines


def _takes_min_images(dataset: str) -> bool:
    """Whether `dataset`'s loader takes the min_images option (`--min-images-per-class`)."""
    return dataset in DATASETS and "min_images" in dataset_options(dataset).parameters(dataset)


def model_spec(config: TrainConfig, splits: DatasetSplits) -> ModelSpec:
    """The architecture a config trains on `splits` (`config.model_spec(splits)`)."""
    return config.model_spec(splits)


def _too_small(split: ClassSplit, needed: int) -> str:
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


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}{'es' if noun.endswith('s') else 's'}"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_settings(config: TrainConfig) -> None:
    """Fail on settings that are wrong whatever the data: non-finite hyper-parameters (one update with
    --lr inf fills the weights with NaN, and a model of NaN scores chance), counts below their least
    value, unknown names of the training's own choices, a thread count torch refuses, balanced batches
    for a learner that needs queries, 1-way episodes, training batches that give the loss no gradient
    (`check_batch_shape`), a frozen backbone that was never trained (--freeze-backbone without --init)."""
    bounds = (("lr", config.lr, 0.0, False), ("lr_gamma", config.lr_gamma, 0.0, False),
              ("weight_decay", config.weight_decay, 0.0, True))
    for name, value, low, low_allowed in bounds:
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value!r}")
        if value < low or (value == low and not low_allowed):
            raise ValueError(f"{flag} must be {'at least' if low_allowed else 'greater than'} {low:g}, got {value!r}")
    bad = [*_non_finite_arguments(config.learner_args, "--loss-arg"), *_non_finite_arguments(config.metric_args, "--metric-arg"),
           *_non_finite_arguments(config.backbone_args, "--backbone-arg"), *_non_finite_arguments(config.dataset_args, "--dataset-arg")]
    if bad:
        raise ValueError(f"non-finite argument values {', '.join(bad)}; give finite numbers")
    if config.threads is not None and (not _is_int(config.threads) or config.threads < 1):
        raise ValueError(f"--threads must be a positive int (or left out for torch's choice), got {config.threads!r}")
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {config.precision!r}; expected one of {sorted(PRECISIONS)}")
    for name, value in (("ways", config.ways), ("shots", config.shots), ("queries", config.queries),
                        ("train_ways", config.train_ways), ("eval_queries", config.eval_queries), ("episodes", config.episodes),
                        ("val_every", config.val_every), ("checkpoint_every", config.checkpoint_every),
                        ("lr_step", config.lr_step)):
        if value is None and name in DATA_DEFAULTS:  # left to the data: filled in and checked by `resolve`
            continue
        if not _is_int(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}")
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name, value in (("val_episodes", config.val_episodes), ("test_episodes", config.test_episodes)):
        if not _is_int(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a whole number, got {value!r}")
        if value < 2:  # a confidence interval needs two episodes; the test episodes come after all the training
            raise ValueError(f"--{name.replace('_', '-')} must be at least 2 (for a confidence interval), got {value}")
    if config.train_split not in TRAIN_SPLITS:
        raise ValueError(f"unknown --train-split {config.train_split!r}; expected train or trainval")
    if config.sampling not in SAMPLINGS:
        raise ValueError(f"unknown --sampling {config.sampling!r}; expected one of {', '.join(SAMPLINGS)}")
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown --augment {config.augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")
    per_step = config.episodes_per_step
    if per_step is not None and (not _is_int(per_step) or per_step < 1):
        raise ValueError(f"--episodes-per-step must be a positive int, got {per_step!r}")
    if config.ways < 2:  # what episode lists refuse too
        raise ValueError(f"--ways must be at least 2, got {config.ways}: a 1-way episode has one class to choose, "
                         "so every answer is right (100% whatever the model)")
    if config.freeze_backbone and config.init is None and not starts_pretrained(config.backbone, config.backbone_args):
        raise ValueError("--freeze-backbone needs --init CHECKPOINT: without it the frozen backbone keeps its random "
                         "initialisation; pretrain a backbone first (its last.pt or best.pt) and start from it, or "
                         "use a pretrained backbone (e.g. --backbone tv-resnet18)")
    learner = LEARNERS.get_or_raise(config.learner)
    if config.max_ways is not None:
        if config.sampling != "meta-dataset":
            raise ValueError(f"--max-ways {config.max_ways} applies to --sampling meta-dataset only, not to "
                             f"--sampling {config.sampling} (whose training episodes have --train-ways classes)")
        if not _is_int(config.max_ways) or config.max_ways < META_DATASET_MIN_WAYS:
            raise ValueError(f"--max-ways must be a whole number of at least {META_DATASET_MIN_WAYS} (Meta-Dataset's "
                             f"fewest ways per episode), got {config.max_ways!r}")
    if config.sampling == "meta-dataset":
        # Every class of a Meta-Dataset episode holds at least one support and one query image, in at least
        # 5 classes: learners whose min_class_images or min_batch_classes ask for more are refused by name.
        if learner.min_batch_classes > META_DATASET_MIN_WAYS or learner.min_class_images > 2:
            raise ValueError(f"--sampling meta-dataset draws episodes of as few as {META_DATASET_MIN_WAYS} classes and "
                             f"2 images of a class (one support, one query), and the {config.learner} loss needs "
                             f"{learner.min_batch_classes} classes and {learner.min_class_images} images of each; "
                             "train it on --sampling episodes or balanced")
    elif config.sampling == "balanced":
        if learner.needs_queries:
            usable = ", ".join(name for name, factory in LEARNERS.items() if not factory.needs_queries)
            raise ValueError(f"--sampling balanced gives batches without queries, and the {config.learner} loss needs "
                             f"queries (it scores them against the support); train {config.learner} on episodes "
                             f"(--sampling episodes), or use a loss over the whole batch: {usable}")
        for flag, value in (("--batch-classes", config.batch_classes), ("--batch-images", config.batch_images)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{flag} must be a positive int, got {value!r}")
        check_batch_shape(config.learner, config.batch_classes, config.batch_images, "--batch-classes",
                          "--batch-images")
    elif config.train_ways is not None and config.queries is not None:  # else checked once resolved
        check_batch_shape(config.learner, config.train_ways, config.shots + config.queries, "--train-ways",
                          "--shots + --queries")


def check_batch_shape(learner: str, classes: int, images: int, classes_flag: str, images_flag: str) -> None:
    """Refuse training batches of `classes` classes with `images` images each that give the `learner` loss no
    gradient: fewer than its `min_batch_classes` or `min_class_images` (`fewshot.learners.base.Learner`)."""
    factory = LEARNERS.get_or_raise(learner)
    if classes < factory.min_batch_classes:
        raise ValueError(f"{classes_flag} {classes} gives training batches of {_count(classes, 'class')}, and the "
                         f"{learner} loss needs at least {factory.min_batch_classes} classes in a batch to learn anything "
                         f"(a class alone has nothing to be told apart from); use {classes_flag} "
                         f"{factory.min_batch_classes} or more")
    if images < factory.min_class_images:
        raise ValueError(f"{images_flag} {images} gives training batches with {_count(images, 'image')} of each class, "
                         f"and the {learner} loss needs at least {factory.min_class_images} images of a class in a batch (a "
                         f"positive pair): without one it has nothing to pull together and learns no class; use {images_flag} "
                         f"{factory.min_class_images} or more, or a proxy loss (e.g. --learner proxy-anchor)")


def check_data(config: TrainConfig, splits: DatasetSplits) -> None:
    """Fail before training on settings the data cannot serve: more ways than a split has classes,
    more shots and queries (or balanced-batch images) than a class holds."""
    balanced = config.sampling == "balanced"
    if config.sampling == "meta-dataset":
        split = splits.get(config.train_split)
        try:  # the sampler's own checks: enough classes for the fewest ways, two images in every class
            meta_dataset_sampler(config, split, num_episodes=1)
        except ValueError as error:
            raise ValueError(f"--sampling meta-dataset on the {splits.dataset} {splits.scheme} {config.train_split} "
                             f"split: {error}") from None
    if balanced:
        split = splits.get(config.train_split)
        if config.batch_classes > split.num_classes:
            raise ValueError(f"--batch-classes {config.batch_classes} exceeds the {split.num_classes} classes of the "
                             f"{splits.dataset} {splits.scheme} {config.train_split} split")
        smallest = int(split.class_counts().min())
        if config.batch_images > smallest:
            raise ValueError(f"--batch-images {config.batch_images} exceeds the images of some classes of the "
                             f"{splits.dataset} {splits.scheme} {config.train_split} split, which have as few as "
                             f"{smallest} ({_too_small(split, config.batch_images)})")
    # Balanced batches and Meta-Dataset episodes replace the training episodes: --train-ways and --queries
    # then do not apply.
    episode_splits = ((config.train_split, "val", "test") if config.sampling == "episodes" else ("val", "test"))
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
            hint = (f"; lower {flag}, or leave out the smaller classes with --min-images-per-class "
                    f"{config.shots + queries}" if _takes_min_images(splits.dataset) else "")
            raise ValueError(f"--shots {config.shots} + {flag} {queries} needs {config.shots + queries} images per class, but "
                             f"classes of the {splits.dataset} {splits.scheme} {split_name} split have as few as {smallest} "
                             f"({_too_small(split, config.shots + queries)}){hint}")


def meta_dataset_sampler(config: TrainConfig, split: ClassSplit, num_episodes: int | None) -> MetaDatasetSampler:
    """The Meta-Dataset sampler of a run's training episodes on `split` (the paper's defaults, `max_ways`
    of the config): episode i is a pure function of (seed, i), as the fixed-shape episodes are."""
    max_ways = META_DATASET_MAX_WAYS if config.max_ways is None else config.max_ways
    return MetaDatasetSampler(split.labels, min_ways=META_DATASET_MIN_WAYS, max_ways=max_ways, seed=config.seed,
                              num_episodes=num_episodes)


def check_processes(config: TrainConfig, world_size: int, device: torch.device) -> None:
    """Refuse what a job of `world_size` processes on `device` cannot run (episodes per step left out:
    one per process)."""
    per_step = world_size if config.episodes_per_step is None else config.episodes_per_step
    if per_step % world_size:
        raise ValueError(f"--episodes-per-step {per_step} must be a multiple of the {world_size} processes, so that "
                         "every process trains on the same number of episodes per step")
    if config.episodes % per_step:
        raise ValueError(f"--episodes {config.episodes} must be a multiple of --episodes-per-step {per_step}")
    if config.sync_batchnorm and device.type != "cuda":
        raise ValueError("--sync-batchnorm needs CUDA devices: torch's SyncBatchNorm runs on GPUs only (on CPU "
                         "each process's batch norm sees its own episodes, which is what an episode-level "
                         "batch norm does anyway)")
