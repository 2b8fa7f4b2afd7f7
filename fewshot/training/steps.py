"""Optimiser steps of several episodes (`--episodes-per-step B`), in one process or spread over ranks.

A step of B episodes averages their gradients (gradient accumulation in one process; DDP's all-reduce
over processes). Batch-norm running statistics need the same care: updated episode after episode they
would depend on the order of the episodes and on which process saw which, so within a step every
episode's update starts from the statistics at the start of the step and the step applies the mean of
the B updates. A step of one episode (the default in one process) is an ordinary training step.
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot.runtime import World, all_reduce_sum, collective_device


class StepBatchNorm:
    """Running statistics of a B-episode step: ``r <- r0 + mean_b (r_b - r0)``, where ``r_b`` is what
    episode b's forward alone would leave and ``r0`` the statistics before the step. For batch norm's
    linear update ``r_b = (1 - m) r0 + m x_b`` that is ``(1 - m) r0 + m mean_b x_b``: the step moves the
    statistics once, towards the mean of its episodes' batch statistics, whatever the process count."""

    NAMES = ("running_mean", "running_var")

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        self.start: list[dict[str, torch.Tensor]] = []
        self.change: list[dict[str, torch.Tensor]] = []

    def begin(self) -> None:
        """Remember the statistics at the start of a step."""
        self.start = [{name: getattr(m, name).clone() for name in (*self.NAMES, "num_batches_tracked")} for m in self.layers]
        self.change = [{name: torch.zeros_like(getattr(m, name)) for name in self.NAMES} for m in self.layers]

    def after_episode(self) -> None:
        """Add the episode's update to the step's sum and put the start-of-step statistics back."""
        for m, start, change in zip(self.layers, self.start, self.change):
            for name in self.NAMES:
                buffer = getattr(m, name)
                change[name] += buffer - start[name]
                buffer.copy_(start[name])
            m.num_batches_tracked.copy_(start["num_batches_tracked"])

    def finish(self, episodes: int, world: World) -> None:
        """Apply the mean update of the step's `episodes` episodes (summed over the ranks)."""
        if not self.layers:
            return
        flat = torch.cat([change[name].flatten() for change in self.change for name in self.NAMES])
        flat = all_reduce_sum(flat.to(collective_device()), world, "averaging batch-norm statistics").to(flat.device)
        offset = 0
        for m, start in zip(self.layers, self.start):
            for name in self.NAMES:
                buffer = getattr(m, name)
                size = buffer.numel()
                buffer.copy_(start[name] + flat[offset:offset + size].view_as(buffer) / episodes)
                offset += size
            m.num_batches_tracked.copy_(start["num_batches_tracked"] + (1 if m.training else 0))
