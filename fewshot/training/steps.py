"""Optimiser steps of several episodes (`--episodes-per-step B`), in one process or spread over ranks.

A step of B episodes averages their gradients (gradient accumulation in one process; DDP's all-reduce
over processes). Batch-norm running statistics need the same care: updated episode after episode they
would depend on the order of the episodes and on which process saw which, so within a step every
episode's update starts from the statistics at the start of the step and the step applies the mean of
the B updates. A step of one episode (the default in one process) is an ordinary training step.

`keep_freed_memory` is the allocator setting training runs under: each step reuses the previous step's
memory instead of faulting in fresh pages. `make_optimizer` builds the training's Adam.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch
from torch import nn

from fewshot.runtime import World, all_reduce_sum, collective_device


# glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations up to this size come from (and go back to) the process heap instead of fresh pages.
HEAP_ALLOCATION_LIMIT = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for the next allocation instead of returning it to the system.

    A training step allocates the same large activation and gradient tensors every episode (a Conv-4
    20-way episode of 64x64 images: 52 MB per bf16 activation of the first block). glibc serves
    allocations above its mmap threshold (at most 32 MB) with fresh pages from the kernel and unmaps them
    on free, so every episode pays a page fault per 4 KB page of each such tensor, on the CPU the step
    computes on. Raising the mmap and trim thresholds keeps those pages in the heap and reuses them, as a
    caching allocator does on a GPU; the numbers computed are unchanged. The process keeps its peak
    memory until it exits. Returns whether the setting took (False off glibc, e.g. macOS or musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    kept = bool(mallopt(_M_MMAP_THRESHOLD, HEAP_ALLOCATION_LIMIT))
    return kept and bool(mallopt(_M_TRIM_THRESHOLD, 2 * HEAP_ALLOCATION_LIMIT - 1))


def make_optimizer(parameters, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """The training's Adam; PyTorch's fused implementation on CPUs and GPUs (one kernel over all parameters
    instead of a loop of tensor operations). Fused and unfused Adam differ only in float32 rounding."""
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


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
