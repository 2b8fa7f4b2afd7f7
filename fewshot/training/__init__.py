"""Training as library code: `TrainConfig` and `train(config, splits=None)`; the CLI is `fewshot.cli.train`."""

from fewshot.training.augment import AUGMENTATIONS
from fewshot.training.config import (
    NonFiniteLoss,
    NonFiniteParameters,
    TrainConfig,
    check_data,
    check_processes,
    check_settings,
    model_spec,
)
from fewshot.training.loop import (
    STOP_SIGNALS,
    TrainingInterrupted,
    train,
    validation_interval,
)
from fewshot.training.rngs import episode_generator
from fewshot.training.rundir import OutputError, RunInUse, RunLock
from fewshot.training.runlog import MetricsLog, plot_curve, read_records
from fewshot.training.schedules import SCHEDULES
from fewshot.training.settings import (
    PRECISIONS,
    SAMPLINGS,
    SECTIONS,
    DataSettings,
    EpisodeSettings,
    ModelSettings,
    OptimisationSettings,
    ProcessSettings,
    RunSettings,
)

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
