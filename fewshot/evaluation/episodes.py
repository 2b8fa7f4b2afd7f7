"""Per-episode accuracy of models on identical episodes: the core of every evaluation."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from episodes.sampler import Episode, EpisodeSampler
from fewshot import metrics
from fewshot.data.splits import ClassSplit
from fewshot.runtime import World, all_reduce_sum, collective_device, current_world, shard
from fewshot.evaluation.cache import DEFAULT_MAX_BYTES, SplitEmbeddings
from fewshot.learners.base import prototype_logits
from fewshot.model.network import FewShotModel


def evaluation_episodes(split: ClassSplit, ways: int, shots: int, queries: int, episodes: int, seed: int) -> list[Episode]:
    """The `episodes` evaluation episodes of a split for a seed: the same list for every model."""
    sampler = EpisodeSampler(split.labels, ways, shots, queries, seed=seed, num_episodes=episodes)
    return sampler.episodes(np.arange(episodes))


def _episode_chunks(episodes: list[Episode], capacity: int) -> list[list[int]]:
    """Consecutive groups of episode positions whose distinct items number at most `capacity` each
    (an episode larger than that on its own is a group of its own)."""
    groups: list[list[int]] = [[]]
    seen: set[int] = set()
    for e, episode in enumerate(episodes):
        items = set(episode.support.tolist()) | set(episode.query.tolist())
        if groups[-1] and len(seen | items) > capacity:
            groups.append([])
            seen = set()
        groups[-1].append(e)
        seen |= items
    return groups


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
    *,
    per_episode: bool = False,
    embeddings: list[SplitEmbeddings] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    distributed: bool = True,
    ensemble: bool = False,
    splits: list[ClassSplit] | None = None,
) -> np.ndarray:
    """Per-episode nearest-prototype accuracy of `model` (or of each model, on identical episodes).

    Returns [episodes] (or [models, episodes]) accuracies. Models are put in eval mode and restored.
    `ensemble=True` scores the models as one ensemble instead and returns [episodes]: each query goes
    to the class with the largest sum of the models' log-softmax prototype scores (the product of
    their class probabilities). `splits` gives each model its own copy of `split` (the same items,
    prepared with that model's preprocessing); by default every model reads `split`.
    Each image an episode touches is embedded once per model (`SplitEmbeddings`; pass `embeddings`
    to share them across calls) and episodes index those rows; `per_episode=True`, or a model whose
    `embeds_independently` is False (its embedding of an image depends on the episode), embeds every
    episode's images afresh instead. Both give the same accuracies.

    Inside an initialised torch.distributed group (e.g. under torchrun), every rank must call this
    together: rank r scores episodes r, r + size, ... (embedding only the images those touch), and the
    per-episode accuracies are gathered in episode order, so every rank returns the single-process
    array. `distributed=False` scores every episode in this process alone.
    """
    models = model if isinstance(model, list) else [model]
    device = torch.device(device)
    chosen = episode_list if episode_list is not None else evaluation_episodes(split, ways, shots, queries, episodes, seed)
    model_splits = [split] * len(models) if splits is None else list(splits)
    if len(model_splits) != len(models):
        raise ValueError(f"splits must hold one ClassSplit per model ({len(models)}), got {len(model_splits)}")
    if any(s is not split and not np.array_equal(s.item_ids, split.item_ids) for s in model_splits):
        raise ValueError("every model's split must hold the same items as `split`, for identical episodes")
    if embeddings is None:
        embeddings = [SplitEmbeddings(m, s, device, max_bytes=max_bytes, progress=progress)
                      for m, s in zip(models, model_splits)]
    if len(embeddings) != len(models) or any(e.model is not m or e.split is not s
                                             for e, m, s in zip(embeddings, models, model_splits)):
        raise ValueError("embeddings must hold one SplitEmbeddings per model, over its split")
    world = current_world() if distributed else World()
    mine = list(shard(len(chosen), world))  # this rank's episodes: all of them in one process
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    accuracies = np.zeros((len(models), len(chosen)))
    # Ensemble: each of this rank's episodes accumulates the models' log-softmax scores [queries, ways].
    summed: dict[int, torch.Tensor] = {}

    def score(m_index: int, e: int, logits: torch.Tensor, query_y: torch.Tensor) -> None:
        if ensemble:
            log_probs = logits.float().log_softmax(dim=1)
            summed[e] = log_probs if e not in summed else summed[e] + log_probs
        else:
            accuracies[m_index, e] = metrics.episode_accuracy(logits, query_y)

    try:
        for m_index, m in enumerate(models):
            if per_episode or not m.embeds_independently:
                continue
            cache = embeddings[m_index]
            if cache.dim is None and mine:  # the embedding size (hence the capacity) from the first episode
                cache.ensure(chosen[mine[0]].indices())
            for group in _episode_chunks([chosen[e] for e in mine], cache.capacity):
                cache.ensure(np.concatenate([chosen[mine[g]].indices() for g in group]))
                for g in group:
                    e = mine[g]
                    episode = chosen[e]
                    support_y = torch.from_numpy(episode.support_labels).to(device)
                    support, query = cache.rows(episode.support), cache.rows(episode.query)
                    # Turned copies (test-time views) are scored one by one and their scores summed, so a
                    # learned or normalised distance sees embeddings of the size it was trained on.
                    logits = sum(prototype_logits(m.learner.scoring_distance, s, support_y, q, episode.ways)
                                 for s, q in zip(support.chunk(cache.copies, dim=1), query.chunk(cache.copies, dim=1)))
                    score(m_index, e, logits, torch.from_numpy(episode.query_labels).to(device))
        slow = [i for i, m in enumerate(models) if per_episode or not m.embeds_independently]
        if slow:
            for e in tqdm(mine, desc=f"{ways}-way {shots}-shot", disable=not progress, leave=False):
                tensors: dict[int, tuple[torch.Tensor, ...]] = {}  # one copy per distinct split
                for m_index in slow:
                    own = model_splits[m_index]
                    if id(own) not in tensors:
                        tensors[id(own)] = own.episode_tensors(chosen[e], device)
                    support_x, support_y, query_x, query_y = tensors[id(own)]
                    score(m_index, e, models[m_index].logits(support_x, support_y, query_x), query_y)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if ensemble:
        accuracies = accuracies[:1]
        for e in mine:
            query_y = torch.from_numpy(chosen[e].query_labels).to(summed[e].device)
            accuracies[0, e] = metrics.episode_accuracy(summed[e], query_y)
    if world.distributed:
        # Each episode's accuracy is non-zero on one rank only, so the sum is exact: the single-process array.
        gathered = torch.from_numpy(accuracies).to(collective_device(), torch.float64)
        accuracies = all_reduce_sum(gathered, world, f"gathering {ways}-way {shots}-shot accuracies").cpu().numpy()
    return accuracies[0] if ensemble or not isinstance(model, list) else accuracies
