"""Training as library code: `TrainConfig` and `train(config, splits=None)`; the CLI is `fewshot.cli.train`."""

from fewshot.training.config import (
    PRECISIONS,
    SAMPLINGS,
    SCHEDULES,
    NonFiniteLoss,
    NonFiniteParameters,
    TrainConfig,
    check_config,
    check_settings,
    model_spec,
)
from fewshot.training.loop import STOP_SIGNALS, TrainingInterrupted, episode_generator, train, validation_interval
from fewshot.training.rundir import OutputError, RunInUse, RunLock
from fewshot.training.runlog import MetricsLog, plot_curve, read_records

__all__ = [
    "PRECISIONS",
    "SAMPLINGS",
    "SCHEDULES",
    "STOP_SIGNALS",
    "MetricsLog",
    "NonFiniteLoss",
    "NonFiniteParameters",
    "OutputError",
    "RunInUse",
    "RunLock",
    "TrainConfig",
    "TrainingInterrupted",
    "check_config",
    "check_settings",
    "episode_generator",
    "model_spec",
    "plot_curve",
    "read_records",
    "train",
    "validation_interval",
]
