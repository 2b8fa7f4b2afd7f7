"""Per-episode accuracy of named models on identical episodes: the core of every evaluation.

What is scored are `Candidate`s (one model each, named by its role: the evaluated model, the compared one,
an ensemble member) and `Ensemble`s of candidates; `score_episodes` returns each one's accuracies by name.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from tqdm import tqdm

from episodes.hierarchy import parents_from_names, within_parent_episodes
from episodes.metadataset import MetaDatasetSampler
from episodes.sampler import Episode, EpisodeSampler
from fewshot import metrics
from fewshot.data.splits import ClassSplit
from fewshot.runtime import World, all_reduce_sum, collective_device, current_world, shard
from fewshot.evaluation.cache import SplitEmbeddings
from fewshot.evaluation.settings import EvaluationSettings
from fewshot.model.network import FewShotModel


def terminal_progress() -> bool:
    """Whether progress is shown when the caller does not say: only to a person watching (stderr is a terminal),
    so that logs, pipes and tests stay quiet."""
    return sys.stderr.isatty()


def announce(message: str, progress: bool) -> None:
    """Say on stderr which phase starts (one without a progress bar of its own), when progress is shown."""
    if progress:
        tqdm.write(message, file=sys.stderr)


def evaluation_episodes(split: ClassSplit, ways: int, shots: int, queries: int, episodes: int, seed: int) -> list[Episode]:
    """The `episodes` evaluation episodes of a split for a seed: the same list for every model."""
    sampler = EpisodeSampler(split.labels, ways, shots, queries, seed=seed, num_episodes=episodes)
    return sampler.episodes(np.arange(episodes))


#: A rotated copy's class name ends with its turn in degrees ("Alphabet/character01/rot090").
ROTATED_CLASS = re.compile(r"/rot(\d{3})$")


def within_parent_evaluation(split: ClassSplit, ways: int, shots: int, queries: int, episodes: int,
                             seed: int) -> tuple[list[Episode], dict[str, Any]]:
    """Lake et al. (2015)'s within-alphabet protocol on `split`: `ways`-way `shots`-shot episodes whose classes
    all share the first part of their names (an Omniglot alphabet), and what was drawn, for the report.

    A split with rotated classes (names ending /rotDDD) is restricted to its rot000 classes: a turned
    character is not another character of its alphabet, and Lake's runs use the unturned ones. Parents with
    fewer than `ways` classes are left out (warned) and listed in the record with their class counts.
    """
    names = split.class_names
    rotated = [ROTATED_CLASS.search(name) for name in names]
    classes = None
    if any(rotated):
        classes = [c for c, match in enumerate(rotated) if match is None or match.group(1) == "000"]
    try:
        parents, parent_names = parents_from_names(names)
    except ValueError as error:
        raise ValueError(f"within-parent episodes group classes by the first part of their names "
                         f"(Alphabet/character): {error}") from None
    sampler = within_parent_episodes(split.labels, parents, ways=ways, shots=shots, queries=queries,
                                     classes=classes, seed=seed, num_episodes=episodes)
    record = {"kind": "within-parent", "seed": seed, "sampler": "episodes.hierarchy.within_parent_episodes",
              "parents": "first part of the class names", "rotations": "rot000 classes only" if classes else "none",
              "included_parents": [parent_names[p] for p in sampler.parent_ids.tolist()],
              "excluded_parents": {parent_names[p]: n for p, n in sampler.excluded_parents.items()}}
    return sampler.draw(np.arange(episodes)).episodes(), record


def metadataset_evaluation(split: ClassSplit, episodes: int, seed: int,
                           max_ways: int | None = None) -> tuple[list[Episode], dict[str, Any]]:
    """Meta-Dataset's variable-way, variable-shot, imbalanced episodes of `split` (its defaults; `max_ways`
    caps the ways) and the sampler's settings, for the report."""
    options = {} if max_ways is None else {"max_ways": max_ways}
    sampler = MetaDatasetSampler(split.labels, seed=seed, num_episodes=episodes, **options)
    record = {"kind": "meta-dataset", "seed": seed, "sampler": "episodes.MetaDatasetSampler",
              "ways_range": list(sampler.ways_range), "max_num_query": sampler.max_num_query,
              "max_support_set_size": sampler.max_support_set_size,
              "max_support_size_contrib_per_class": sampler.max_support_size_contrib_per_class,
              "log_weights": [sampler.min_log_weight, sampler.max_log_weight]}
    return sampler.episodes(np.arange(episodes)), record


def episode_distribution(episodes: Sequence[Episode]) -> dict[str, dict[str, float]]:
    """Mean, min and max over `episodes` of their ways, of their support items per class (over every class of
    every episode) and of their query items per class."""
    def summary(values: np.ndarray) -> dict[str, float]:
        if not len(values):
            return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
        return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}

    counts = [e.support_counts for e in episodes]
    return {"ways": summary(np.array([e.ways for e in episodes])),
            "support_per_class": summary(np.concatenate(counts) if counts else np.zeros(0)),
            "queries_per_class": summary(np.array([e.queries for e in episodes]))}


def episodes_label(episodes: Sequence[Episode]) -> str:
    """A progress label: "5-way 1-shot" when the first episode is balanced, else "variable episodes"."""
    if not episodes:
        return "episodes"
    counts = episodes[0].support_counts
    if len(counts) and np.all(counts == counts[0]):
        return f"{episodes[0].ways}-way {int(counts[0])}-shot"
    return "variable episodes"


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


@dataclass(eq=False)
class Candidate:
    """One model under evaluation, named by its role (e.g. "model", "compare", an ensemble member's path),
    with its own copy of the evaluation split (the same items, prepared with its preprocessing) and its
    embed-once cache (made from the evaluation settings when not given)."""

    name: str
    model: FewShotModel
    split: ClassSplit
    embeddings: SplitEmbeddings | None = None

    def cache(self, settings: EvaluationSettings) -> SplitEmbeddings:
        """This candidate's `SplitEmbeddings` (made on first use, without test-time views)."""
        if self.embeddings is None:
            self.embeddings = SplitEmbeddings(self.model, self.split, settings.device, batch_size=settings.batch_size,
                                              max_bytes=settings.max_bytes, progress=settings.progress)
        if self.embeddings.model is not self.model or self.embeddings.split is not self.split:
            raise ValueError(f"the embeddings of candidate {self.name!r} must be over its own model and split")
        return self.embeddings


@dataclass(eq=False)
class Ensemble:
    """Members scored as one model: each query goes to the class with the largest sum of the members'
    log-softmax prototype scores (the product of their class probabilities)."""

    name: str
    members: list[Candidate]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError(f"ensemble {self.name!r} has no members")


Scorer = Union[Candidate, Ensemble]


def _candidates(scorers: Sequence[Scorer]) -> list[Candidate]:
    """Every distinct candidate the scorers need, in order of first appearance."""
    seen: dict[int, Candidate] = {}
    for scorer in scorers:
        for candidate in scorer.members if isinstance(scorer, Ensemble) else [scorer]:
            seen.setdefault(id(candidate), candidate)
    return list(seen.values())


@torch.no_grad()
def score_episodes(scorers: Sequence[Scorer], episodes: list[Episode],
                   settings: EvaluationSettings | None = None) -> dict[str, np.ndarray]:
    """Per-episode nearest-prototype accuracy [len(episodes)] of each scorer, by name, on identical episodes.

    A `Candidate` is scored by its model's own logits; an `Ensemble` by the sum of its members' log-softmax
    scores. Models are put in eval mode and restored. Each image an episode touches is embedded once per
    candidate (its `SplitEmbeddings`; a test-time view's turned copies are scored one by one and their
    scores summed) and episodes index those rows; `settings.per_episode` embeds every episode's images
    afresh instead. Both give the same accuracies.

    Inside an initialised torch.distributed group (e.g. under torchrun), every rank must call this
    together: rank r scores episodes r, r + size, ... (embedding only the images those touch), and the
    per-episode accuracies are gathered in episode order, so every rank returns the single-process
    arrays. `settings.distributed=False` scores every episode in this process alone.
    """
    settings = settings or EvaluationSettings()
    names = [scorer.name for scorer in scorers]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"scorers need distinct names, got {names}")
    candidates = _candidates(scorers)
    reference = candidates[0].split
    if any(c.split is not reference and not np.array_equal(c.split.item_ids, reference.item_ids) for c in candidates):
        raise ValueError("every candidate's split must hold the same items, for identical episodes")
    device = torch.device(settings.device)
    world = current_world() if settings.distributed else World()
    mine = list(shard(len(episodes), world))  # this rank's episodes: all of them in one process
    label = episodes_label(episodes)
    accuracies = np.zeros((len(scorers), len(episodes)))
    # Ensembles: each member's log-softmax scores [queries, ways] per episode, summed in member order at the end.
    member_scores: dict[tuple[int, int], list[torch.Tensor | None]] = {}
    users = {id(c): [(i, s) for i, s in enumerate(scorers) if s is c or (isinstance(s, Ensemble)
                                                                         and any(m is c for m in s.members))]
             for c in candidates}

    def score(candidate: Candidate, e: int, logits: torch.Tensor, query_y: torch.Tensor) -> None:
        for i, scorer in users[id(candidate)]:
            if isinstance(scorer, Ensemble):
                slots = member_scores.setdefault((i, e), [None] * len(scorer.members))
                for position, member in enumerate(scorer.members):
                    if member is candidate:
                        slots[position] = logits.float().log_softmax(dim=1)
            else:
                accuracies[i, e] = metrics.episode_accuracy(logits, query_y)

    modes = [c.model.training for c in candidates]
    for c in candidates:
        c.model.eval()
    try:
        if settings.per_episode:
            for e in tqdm(mine, desc=label, disable=not settings.progress, leave=False):
                tensors: dict[int, tuple[torch.Tensor, ...]] = {}  # one copy per distinct split
                for c in candidates:
                    if id(c.split) not in tensors:
                        tensors[id(c.split)] = c.split.episode_tensors(episodes[e], device)
                    support_x, support_y, query_x, query_y = tensors[id(c.split)]
                    score(c, e, c.model.logits(support_x, support_y, query_x), query_y)
        else:
            for c in candidates:
                _score_embedded(c, c.cache(settings), episodes, mine, device, score,
                                f"{label} {c.name}" if len(candidates) > 1 else label, settings.progress)
    finally:
        for c, mode in zip(candidates, modes):
            c.model.train(mode)
    for (i, e), slots in member_scores.items():
        summed = slots[0]
        for log_probs in slots[1:]:
            summed = summed + log_probs
        query_y = torch.from_numpy(episodes[e].query_labels).to(summed.device)
        accuracies[i, e] = metrics.episode_accuracy(summed, query_y)
    if world.distributed:
        # Each episode's accuracy is non-zero on one rank only, so the sum is exact: the single-process array.
        gathered = torch.from_numpy(accuracies).to(collective_device(), torch.float64)
        accuracies = all_reduce_sum(gathered, world, f"gathering {label} accuracies").cpu().numpy()
    return {name: accuracies[i] for i, name in enumerate(names)}


def _score_embedded(candidate: Candidate, cache: SplitEmbeddings, episodes: list[Episode], mine: list[int],
                    device: torch.device, score: Any, label: str = "episodes", progress: bool = False) -> None:
    """Score a candidate on this rank's episodes from its embed-once cache, a memory-sized chunk at a time."""
    if cache.dim is None and mine:  # the embedding size (hence the capacity) from the first episode
        cache.ensure(episodes[mine[0]].indices())
    learner = candidate.model.learner
    bar = tqdm(total=len(mine), desc=f"scoring {label}", unit="episode", disable=not progress, leave=False)
    for group in _episode_chunks([episodes[e] for e in mine], cache.capacity):
        cache.ensure(np.concatenate([episodes[mine[g]].indices() for g in group]))
        for g in group:
            bar.update()
            e = mine[g]
            episode = episodes[e]
            support_y = torch.from_numpy(episode.support_labels).to(device)
            support, query = cache.rows(episode.support), cache.rows(episode.query)
            # Turned copies (test-time views) are scored one by one and their scores summed, so a
            # learned or normalised distance sees embeddings of the size it was trained on.
            logits = sum(learner.episode_logits(s, support_y, q, episode.ways)
                         for s, q in zip(support.chunk(cache.copies, dim=1), query.chunk(cache.copies, dim=1)))
            score(candidate, e, logits, torch.from_numpy(episode.query_labels).to(device))
    bar.close()


def evaluate_model(model: FewShotModel, split: ClassSplit, ways: int, shots: int, queries: int,
                   settings: EvaluationSettings | None = None, *, episode_list: list[Episode] | None = None,
                   embeddings: SplitEmbeddings | None = None, **overrides: Any) -> np.ndarray:
    """Per-episode nearest-prototype accuracy [episodes] of one model on `ways`-way `shots`-shot episodes
    of `split` (`score_episodes` with one candidate).

    The episodes are `episode_list`, else `settings.episodes` drawn from `settings.seed`. `overrides` are
    `EvaluationSettings` fields (e.g. `episodes=200, seed=1, device="cuda"`); `embeddings` shares an
    embed-once cache across calls. Test-time views need the dataset's declaration: give them through
    `embeddings` (a `SplitEmbeddings` made with `views`) or use `evaluate_checkpoint`. Without `settings`,
    progress bars show when stderr is a terminal (`progress=False` silences them).
    """
    settings = EvaluationSettings.of(settings, overrides, progress=terminal_progress())
    if settings.views:
        raise ValueError("evaluate_model applies no test-time views; pass embeddings=SplitEmbeddings(..., views=...)")
    chosen = episode_list if episode_list is not None else evaluation_episodes(
        split, ways, shots, queries, settings.episodes, settings.seed)
    return score_episodes([Candidate("model", model, split, embeddings)], chosen, settings)["model"]
