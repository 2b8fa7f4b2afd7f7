"""Learning-rate schedules by name (`--schedule`), registered like learners.

A schedule factory takes the optimizer and the run's length and step settings (keyword arguments
`episodes`, `lr_step`, `lr_gamma`) and returns a torch scheduler that the training loop steps once per
episode. A new schedule registers with `@SCHEDULES.register("name")`.
"""

from __future__ import annotations

from typing import Callable

import torch

from fewshot.registry import Registry

Scheduler = torch.optim.lr_scheduler.LRScheduler
ScheduleFactory = Callable[..., Scheduler]

SCHEDULES: Registry[ScheduleFactory] = Registry("schedule")


@SCHEDULES.register("step")
def step_schedule(optimizer: torch.optim.Optimizer, episodes: int, lr_step: int, lr_gamma: float) -> Scheduler:
    """The learning rate times `lr_gamma` every `lr_step` episodes."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step, gamma=lr_gamma)


@SCHEDULES.register("cosine")
def cosine_schedule(optimizer: torch.optim.Optimizer, episodes: int, lr_step: int, lr_gamma: float) -> Scheduler:
    """Cosine annealing from the learning rate to zero over the run's `episodes`."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=episodes)


@SCHEDULES.register("none")
def constant_schedule(optimizer: torch.optim.Optimizer, episodes: int, lr_step: int, lr_gamma: float) -> Scheduler:
    """A constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, episodes: int, lr_step: int,
                   lr_gamma: float) -> Scheduler:
    """The per-episode scheduler registered as `schedule`."""
    return SCHEDULES.get_or_raise(schedule)(optimizer, episodes=episodes, lr_step=lr_step, lr_gamma=lr_gamma)


__all__ = ["SCHEDULES", "constant_schedule", "cosine_schedule", "make_scheduler", "step_schedule"]
