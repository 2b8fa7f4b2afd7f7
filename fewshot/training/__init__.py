"""Training as library code: `TrainConfig` and `train(config, splits=None)`; the CLI is `fewshot.cli.train`."""

from fewshot.training.augment import AUGMENTATIONS
from fewshot.training.config import (
    PRECISIONS,
    SAMPLINGS,
    SECTIONS,
    DataSettings,
    EpisodeSettings,
    ModelSettings,
    NonFiniteLoss,
    NonFiniteParameters,
    OptimisationSettings,
    ProcessSettings,
    RunSettings,
    TrainConfig,
    check_data,
    check_processes,
    check_settings,
    model_spec,
)
from fewshot.training.loop import STOP_SIGNALS, TrainingInterrupted, episode_generator, train, validation_interval
from fewshot.training.rundir import OutputError, RunInUse, RunLock
from fewshot.training.runlog import MetricsLog, plot_curve, read_records
from fewshot.training.schedules import SCHEDULES

__all__ = [
    "AUGMENTATIONS",
    "PRECISIONS",
    "SAMPLINGS",
    "SCHEDULES",
    "SECTIONS",
    "STOP_SIGNALS",
    "DataSettings",
    "EpisodeSettings",
    "MetricsLog",
    "ModelSettings",
    "NonFiniteLoss",
    "NonFiniteParameters",
    "OptimisationSettings",
    "OutputError",
    "ProcessSettings",
    "RunInUse",
    "RunLock",
    "RunSettings",
    "TrainConfig",
    "TrainingInterrupted",
    "check_data",
    "check_processes",
    "check_settings",
    "episode_generator",
    "model_spec",
    "plot_curve",
    "read_records",
    "train",
    "validation_interval",
]
