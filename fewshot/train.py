"""`python -m fewshot.train`: the training command line (`fewshot.cli.train`).

The library lives in `fewshot.training`; the names below are re-exported so that
`from fewshot.train import TrainConfig, train` keeps working.
"""

from __future__ import annotations

import sys

from fewshot.cli.train import build_parser, config_from_args, main
from fewshot.devices import resolve_device
from fewshot.training import NonFiniteLoss, TrainConfig, episode_generator, train

__all__ = ["NonFiniteLoss", "TrainConfig", "build_parser", "config_from_args", "episode_generator", "main",
           "resolve_device", "train"]

if __name__ == "__main__":
    sys.exit(main())
