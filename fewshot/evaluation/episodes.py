"""Per-episode accuracy of models on identical episodes: the core of every evaluation."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from episodes.sampler import Episode, EpisodeSampler
from fewshot import metrics
from fewshot.data.store import ClassSplit
from fewshot.model import FewShotModel

def evaluation_episodes(split: ClassSplit, ways: int, shots: int, queries: int, episodes: int, seed: int) -> list[Episode]:
    """The `episodes` evaluation episodes of a split for a seed: the same list for every model."""
    sampler = EpisodeSampler(split.labels, ways, shots, queries, seed=seed, num_episodes=episodes)
    return sampler.episodes(np.arange(episodes))


@torch.no_grad()
def evaluate_model(
    model: FewShotModel | list[FewShotModel],
    split: ClassSplit,
    ways: int,
    shots: int,
    queries: int,
    episodes: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    episode_list: list[Episode] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Per-episode nearest-prototype accuracy of `model` (or of each model, on identical episodes).

    Returns [episodes] (or [models, episodes]) accuracies. Models are put in eval mode and restored.
    """
    models = model if isinstance(model, list) else [model]
    device = torch.device(device)
    chosen = episode_list if episode_list is not None else evaluation_episodes(split, ways, shots, queries, episodes, seed)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    accuracies = np.zeros((len(models), len(chosen)))
    try:
        for e, episode in enumerate(tqdm(chosen, desc=f"{ways}-way {shots}-shot", disable=not progress, leave=False)):
            support_x, support_y, query_x, query_y = split.episode_tensors(episode, device)
            for m_index, m in enumerate(models):
                logits = m.logits(support_x, support_y, query_x)
                accuracies[m_index, e] = metrics.episode_accuracy(logits, query_y)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return accuracies if isinstance(model, list) else accuracies[0]
