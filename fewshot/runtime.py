"""Where code runs: the one device parser, and torch.distributed for training and evaluation: the process group from torchrun's environment, and
the few collectives the rest of the library needs.

`torchrun --nproc_per_node=N -m fewshot.train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous variables; `init_from_environment` joins that group (gloo on CPU, nccl on CUDA) with a
timeout, so that a rank that dies makes the others fail with an error instead of waiting forever.
Without those variables (or with WORLD_SIZE=1) everything here is a no-op and a run is the ordinary
single-process one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def resolve_device(name: str | torch.device) -> torch.device:
    """The one device parser (command lines and the Python API alike): `auto` picks CUDA when present; `cpu`,
    `cuda`, `cuda:N` (and `mps`) are checked to be present here; anything else, e.g. `meta` (no data), is
    refused with a ValueError naming the value."""
    expected = "expected 'cpu', 'cuda', 'cuda:N' or 'auto'"
    if not isinstance(name, (str, torch.device)):
        raise TypeError(f"unknown device {name!r}; {expected}")
    text = str(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {text!r}; {expected}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} asked for CUDA, but torch sees no CUDA device here; use device='cpu' "
                             "or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             "numbered from 0")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {text!r} asked for Apple MPS, but torch sees none here; use device='cpu' or 'auto'")
    elif device.type != "cpu":
        raise ValueError(f"device {text!r} ({device.type}) cannot run a model here; {expected}")
    return device


#: Seconds a collective may wait for the other ranks before it fails (`--dist-timeout`).
DEFAULT_TIMEOUT = 300.0


class RankFailure(RuntimeError):
    """Another rank stopped (died, was killed, or timed out), so this one cannot go on."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: `rank` of `size` processes; `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs, curves and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The initialised process group's world, or the single-process one when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def environment_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when unset)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE={value!r} is not a whole number; torchrun sets it to the number of processes") from None
    if size < 1:
        raise ValueError(f"WORLD_SIZE={value!r} must be 1 or more")
    return size


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_from_environment(device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> tuple[World, torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1; returns the world and this rank's device.

    On CUDA each process takes the GPU of its LOCAL_RANK (`cuda` becomes `cuda:LOCAL_RANK`). An
    already initialised group is used as it is. `timeout` (seconds) bounds every collective.
    """
    if not (timeout > 0 and timeout != float("inf")):
        raise ValueError(f"--dist-timeout must be a finite number of seconds > 0, got {timeout!r}")
    if dist.is_available() and dist.is_initialized():
        world = current_world()
    elif environment_world_size() > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set: launch with "
                             "torchrun (see docs/distributed.md)")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            if device.index is None:
                device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        wait = datetime.timedelta(seconds=timeout)
        store, rank, size = next(dist.rendezvous("env://", timeout=wait))
        # A job that torchrun restarts keeps its rendezvous store: without a prefix of its own, each attempt's
        # process group would read the previous attempt's (dead) peer addresses and fail to connect.
        store = dist.PrefixStore(f"fewshot/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=size, timeout=wait,
                                **({"device_id": device} if device.type == "cuda" else {}))
        world = current_world()
    else:
        world = World()
    if world.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", world.local_rank)
    return world, device


def all_reduce_sum(tensor: torch.Tensor, world: World, what: str) -> torch.Tensor:
    """`tensor` summed over all ranks (in place, returned); `RankFailure` naming `what` if a rank is gone."""
    if not world.distributed:
        return tensor
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    except (RuntimeError, dist.DistError) as error:
        raise RankFailure(f"rank {world.rank} of {world.size}: {what} failed because another rank stopped or did not "
                          f"answer in time ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    return tensor


def barrier(world: World, what: str) -> None:
    """Wait for every rank; `RankFailure` naming `what` if one is gone."""
    if world.distributed:
        all_reduce_sum(torch.zeros(1, device=collective_device()), world, what)


def broadcast_from_main(value: Any, world: World, what: str) -> Any:
    """Rank 0's `value` (any picklable object) on every rank: a decision only rank 0 makes (a run
    directory, a refusal), taken by all."""
    if not world.distributed:
        return value
    box = [value]
    try:
        dist.broadcast_object_list(box, src=0)
    except (RuntimeError, dist.DistError) as error:
        raise RankFailure(f"rank {world.rank} of {world.size}: {what} failed because another rank stopped or did not "
                          f"answer in time ({type(error).__name__})") from error
    return box[0]


def collective_device() -> torch.device:
    """Where small control tensors live: the current GPU under nccl, the CPU under gloo."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(count: int, world: World) -> range:
    """The positions 0..count-1 that this rank handles: rank, rank + size, ... (disjoint, covering all)."""
    return range(world.rank, count, world.size)


def leave_process_group() -> None:
    """Destroy the process group this process joined, if any (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
