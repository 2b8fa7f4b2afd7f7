"""One training step's forward and backward passes, and the sampler of the episodes they train on.

`training_sampler` makes the run's episodes (or class-balanced batches), each a pure function of (seed,
episode number). `train_step` runs this rank's share of the step's episodes and accumulates their gradients;
the loop applies them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from episodes.batches import ClassBalancedSampler
from episodes.sampler import EpisodeSampler
from fewshot.data.splits import ClassSplit
from fewshot.runtime import RankFailure, World, all_reduce_sum, collective_device
from fewshot.training.augment import augment_episode
from fewshot.training.config import TrainConfig, meta_dataset_sampler
from fewshot.training.rngs import augment_generator, episode_generator
from fewshot.training.steps import StepBatchNorm


def training_sampler(config: TrainConfig, train_split: ClassSplit) -> tuple[EpisodeSampler | ClassBalancedSampler, str]:
    """The training episodes (or class-balanced batches) of the run and how the progress bar names them."""
    if config.sampling == "balanced":  # P x M batches without queries (a P-way M-shot 0-query draw)
        sampler = ClassBalancedSampler(train_split.labels, config.batch_classes, config.batch_images,
                                       seed=config.seed, num_batches=config.episodes)
        return sampler, f"{config.learner} {config.batch_classes} classes x {config.batch_images} images"
    # A MetaDatasetSampler is an EpisodeSampler, so EpisodeDataset gathers its unequal shots as they are, and
    # episode i is still a pure function of (seed, i): resume and processes see the same episodes.
    if config.sampling == "meta-dataset":
        sampler = meta_dataset_sampler(config, train_split, num_episodes=config.episodes)
        low, high = sampler.ways_range
        return sampler, f"{config.learner} Meta-Dataset {low}-{high}-way"
    sampler = EpisodeSampler(train_split.labels, config.train_ways, config.shots, config.queries,
                             seed=config.seed, num_episodes=config.episodes)
    return sampler, f"{config.learner} {config.train_ways}-way {config.shots}-shot"


def train_step(first: int, config: TrainConfig, trainer: nn.Module, episode_stream: Any, device: torch.device,
                world: World, stop_signal: int | None, batch_norm: StepBatchNorm | None,
                intact: Callable[[], str]) -> tuple[torch.Tensor, float, Any]:
    """The forward and backward passes of this rank's episodes of the step that starts at episode `first`
    (gradients accumulated, not applied). Returns the step's totals summed over the ranks: loss sum,
    accuracy sum, accuracy count, stop signal, non-finite losses, then one slot per episode of the step
    holding its number (from 1), each filled exactly once; the last non-finite loss; the last output."""
    per_step = config.episodes_per_step
    local = per_step // world.size  # episodes each rank trains on per step
    totals = torch.zeros(5 + per_step, dtype=torch.float64)
    bad_loss = float("nan")
    output = None
    try:
        for j in range(local):
            index = first + world.rank + world.size * j  # the global episode number
            totals[5 + index - first] += index + 1
            episode = next(episode_stream)
            support_x, support_y, query_x, query_y, classes = (t.to(device, non_blocking=True) for t in episode)
            support_x, query_x = augment_episode(config.augment, support_x, query_x,
                                                 augment_generator(config.seed, index))
            # DDP all-reduces the gradients in the backward of the step's last local episode only.
            sync = contextlib.nullcontext() if j == local - 1 or not world.distributed else trainer.no_sync()
            with sync:
                output = trainer(support_x, support_y, query_x, query_y,
                                 generator=episode_generator(config.seed, index), classes=classes)
                loss = output.loss
                if not torch.isfinite(loss):
                    totals[4] += 1
                    bad_loss = loss.item()
                    if not world.distributed:
                        break
                (loss / local if local > 1 else loss).backward()
            if batch_norm is not None:
                batch_norm.after_episode()
            totals[0] += loss.item()
            if len(query_y):
                totals[1] += (output.logits.argmax(1) == query_y).float().mean().item()
                totals[2] += 1
        totals[3] = stop_signal or 0
        if world.distributed:
            totals = all_reduce_sum(totals.to(collective_device()), world, f"the step at episode {first + 1}").cpu()
    except (RuntimeError, torch.distributed.DistError) as error:
        if not world.distributed or not is_collective_error(error):
            raise
        raise RankFailure(f"rank {world.rank} of {world.size}: another rank stopped during the step at episode "
                          f"{first + 1} ({str(error).splitlines()[0] if str(error) else type(error).__name__}). "
                          f"{intact()}; torchrun --max-restarts restarts the job from it") from error
    return totals, bad_loss, output


def is_collective_error(error: BaseException) -> bool:
    """A failed collective (a peer gone, a timeout), as gloo and nccl report it."""
    if isinstance(error, (RankFailure, torch.distributed.DistError)):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))
