"""Training as library code: `TrainConfig` and `train(config, splits=None)`; the CLI is `fewshot.cli.train`."""

from fewshot.training.config import PRECISIONS, SCHEDULES, NonFiniteLoss, TrainConfig, check_config, model_spec
from fewshot.training.loop import episode_generator, train, validation_interval
from fewshot.training.runlog import MetricsLog, plot_curve, read_records

__all__ = [
    "PRECISIONS",
    "SCHEDULES",
    "MetricsLog",
    "NonFiniteLoss",
    "TrainConfig",
    "check_config",
    "episode_generator",
    "model_spec",
    "plot_curve",
    "read_records",
    "train",
    "validation_interval",
]
