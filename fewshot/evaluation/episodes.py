"""Per-episode accuracy of named models on identical episodes: the core of every evaluation.

What is scored are `Candidate`s (one model each, named by its role: the evaluated model, the compared one,
an ensemble member, a test-time head) and `Ensemble`s of candidates; `score_episodes` returns each one's accuracies
by name. Candidates of one model may share one embed-once cache, each classifying the episodes with its own head
(`fewshot.evaluation.heads`): the images are embedded once and every head scores identical episodes.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
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
from fewshot.evaluation.heads import Head, HeadContext, build_head, episode_generator, episode_logits
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


def evaluation_episodes(split: ClassSplit, ways: int, shots: int, queries: int, episodes: int, seed: int,
                        query_dirichlet: float | None = None) -> list[Episode]:
    """The `episodes` evaluation episodes of a split for a seed: the same list for every model. With
    `query_dirichlet` (a concentration alpha), each episode's `ways * queries` queries are spread over its classes
    by Dirichlet(alpha) proportions (`episodes.EpisodeSampler`); its classes and support are the balanced ones."""
    sampler = EpisodeSampler(split.labels, ways, shots, queries, seed=seed, num_episodes=episodes,
                             query_dirichlet=query_dirichlet)
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
    every episode) and of their query items per class (per episode; over every class of every episode when some
    episode's classes have unequal query counts, as with Dirichlet queries)."""
    def summary(values: np.ndarray) -> dict[str, float]:
        if not len(values):
            return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
        return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}

    counts = [e.support_counts for e in episodes]
    return {"ways": summary(np.array([e.ways for e in episodes])),
            "support_per_class": summary(np.concatenate(counts) if counts else np.zeros(0)),
            "queries_per_class": summary(np.concatenate([e.query_counts for e in episodes])
                                         if any(len(set(e.query_counts.tolist())) > 1 for e in episodes)
                                         else np.array([e.queries for e in episodes]))}


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
    """One model under evaluation, named by its role (e.g. "model", "compare", an ensemble member's path, a
    head), with its own copy of the evaluation split (the same items, prepared with its preprocessing) and its
    embed-once cache (made from the evaluation settings when not given; candidates of one model and split may
    share one, and are then scored from it together).

    `head` classifies each episode (`fewshot.evaluation.heads`; None: the learner's own rule,
    `Learner.episode_logits`, the numbers of an evaluation without heads). `base_mean` returns the mean embedding
    of the model's training classes, for heads with `needs_base_mean` (SimpleShot's centring); None where those
    classes are unknown, which such a head refuses."""

    name: str
    model: FewShotModel
    split: ClassSplit
    embeddings: SplitEmbeddings | None = None
    head: Head | None = None
    base_mean: Callable[[], torch.Tensor] | None = None

    def context(self, seed: int, episode: int) -> HeadContext:
        """What this candidate's head may use on episode number `episode` of an evaluation seeded `seed`."""
        return HeadContext(self.model.learner, episode_generator(seed, episode), self.base_mean, self.model)

    def episode_logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
                       context: HeadContext | None) -> torch.Tensor:
        """``[n_query, ways]`` scores of an episode's embedded queries: this candidate's head's (given its `context`),
        or the learner's own rule without a head."""
        if self.head is not None and context is None:
            raise ValueError(f"the head of candidate {self.name!r} needs its context (Candidate.context)")
        return episode_logits(self.model.learner, support, support_labels, query, ways, self.head, context)

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
                   settings: EvaluationSettings | None = None,
                   timings: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Per-episode accuracy [len(episodes)] of each scorer, by name, on identical episodes.

    A `Candidate` is scored by its head (default: its learner's own rule, nearest prototype); an `Ensemble` by
    the sum of its members' log-softmax scores. A head's random draws come from a generator seeded from
    (`settings.seed`, episode number), so its numbers do not depend on the process or the order; a head with
    `needs_images` gets the episode's images (`ClassSplit.episode_tensors`) instead of embeddings. `timings`, when
    given, receives the mean seconds per episode each candidate's head took on this rank, by candidate name (the
    embedding excluded on the embed-once path). Models are put in eval mode and restored. Each image an episode
    touches is embedded once per cache (a candidate's `SplitEmbeddings`, which candidates of one model may share; a test-time view's turned copies are scored one by one and their
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
    for c in candidates:
        if c.head is not None and c.head.needs_base_mean and c.base_mean is None:
            raise ValueError(f"the head of {c.name!r} needs the mean embedding of the model's training (base) classes, "
                             "which is unknown here: give the Candidate base_mean= (evaluate_model(..., base_mean=)), "
                             "or evaluate the checkpoint (evaluate_checkpoint knows its base classes)")
        if c.head is not None and c.head.needs_images and c.embeddings is not None and c.embeddings.views is not None:
            raise ValueError(f"the head of {c.name!r} adapts the model on the episode's images, so test-time views "
                             "(embedded copies) cannot apply to it: evaluate it without views")
    spent = {c.name: 0.0 for c in candidates}
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
        by_images = [c for c in candidates if c.head is not None and c.head.needs_images]
        if settings.per_episode or by_images:
            from_images = candidates if settings.per_episode else by_images
            for e in tqdm(mine, desc=label, disable=not settings.progress, leave=False):
                tensors: dict[int, tuple[torch.Tensor, ...]] = {}  # one copy per distinct split
                for c in from_images:
                    if id(c.split) not in tensors:
                        tensors[id(c.split)] = c.split.episode_tensors(episodes[e], device)
                    support_x, support_y, query_x, query_y = tensors[id(c.split)]
                    started = time.perf_counter()
                    logits = _logits_from_images(c, support_x, support_y, query_x, episodes[e].ways, settings.seed, e)
                    spent[c.name] += time.perf_counter() - started
                    score(c, e, logits, query_y)
        if not settings.per_episode:
            # Candidates sharing one cache are scored together: each chunk of episodes is embedded once for all.
            groups: dict[int, list[Candidate]] = {}
            for c in candidates:
                if not (c.head is not None and c.head.needs_images):
                    groups.setdefault(id(c.cache(settings)), []).append(c)
            for group in groups.values():
                together = ", ".join(c.name for c in group)
                _score_embedded(group, group[0].cache(settings), episodes, mine, device, score,
                                f"{label} {together}" if len(candidates) > 1 else label, settings.progress,
                                settings.seed, spent)
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
    if timings is not None:
        timings.update({name: seconds / max(len(mine), 1) for name, seconds in spent.items()})
    return {name: accuracies[i] for i, name in enumerate(names)}


def _logits_from_images(candidate: Candidate, support_x: torch.Tensor, support_y: torch.Tensor,
                        query_x: torch.Tensor, ways: int, seed: int, episode: int) -> torch.Tensor:
    """A candidate's scores of an episode from its images: its model's own logits without a head, its head's
    `logits_from_images` for heads that adapt the model, else its head on the images embedded now."""
    if candidate.head is None:
        return candidate.model.logits(support_x, support_y, query_x)
    context = candidate.context(seed, episode)
    if candidate.head.needs_images:
        return candidate.head.logits_from_images(support_x, support_y, query_x, ways, context)
    embeddings = candidate.model.embed(torch.cat([support_x, query_x]))
    return candidate.head.logits(embeddings[:len(support_x)], support_y, embeddings[len(support_x):], ways, context)


def _score_embedded(group: list[Candidate], cache: SplitEmbeddings, episodes: list[Episode], mine: list[int],
                    device: torch.device, score: Any, label: str = "episodes", progress: bool = False, seed: int = 0,
                    spent: dict[str, float] | None = None) -> None:
    """Score candidates sharing one embed-once cache on this rank's episodes, a memory-sized chunk at a time,
    adding each one's seconds to `spent`."""
    if cache.dim is None and mine:  # the embedding size (hence the capacity) from the first episode
        cache.ensure(episodes[mine[0]].indices())
    spent = {} if spent is None else spent
    bar = tqdm(total=len(mine), desc=f"scoring {label}", unit="episode", disable=not progress, leave=False)
    for chunk in _episode_chunks([episodes[e] for e in mine], cache.capacity):
        cache.ensure(np.concatenate([episodes[mine[g]].indices() for g in chunk]))
        for g in chunk:
            bar.update()
            e = mine[g]
            episode = episodes[e]
            support_y = torch.from_numpy(episode.support_labels).to(device)
            query_y = torch.from_numpy(episode.query_labels).to(device)
            support, query = cache.rows(episode.support), cache.rows(episode.query)
            copies = list(zip(support.chunk(cache.copies, dim=1), query.chunk(cache.copies, dim=1)))
            for candidate in group:
                started = time.perf_counter()
                context = None if candidate.head is None else candidate.context(seed, e)
                # Turned copies (test-time views) are scored one by one and their scores summed, so a
                # learned or normalised distance sees embeddings of the size it was trained on.
                logits = sum(candidate.episode_logits(s, support_y, q, episode.ways, context) for s, q in copies)
                spent[candidate.name] = spent.get(candidate.name, 0.0) + time.perf_counter() - started
                score(candidate, e, logits, query_y)
    bar.close()


def evaluate_model(model: FewShotModel, split: ClassSplit, ways: int, shots: int, queries: int,
                   settings: EvaluationSettings | None = None, *, episode_list: list[Episode] | None = None,
                   embeddings: SplitEmbeddings | None = None, head: Head | str | None = None,
                   base_mean: torch.Tensor | Callable[[], torch.Tensor] | None = None,
                   **overrides: Any) -> np.ndarray:
    """Per-episode accuracy [episodes] of one model on `ways`-way `shots`-shot episodes of `split`
    (`score_episodes` with one candidate), classified by `head` (a `Head` or a registered head's name; default:
    the learner's own rule, nearest prototype).

    `base_mean` is the mean embedding [d] of the model's training classes (or a callable returning it), for a
    head that needs it (SimpleShot's CL2N); `evaluate_checkpoint` finds it itself.

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
        split, ways, shots, queries, settings.episodes, settings.seed, settings.query_dirichlet)
    if isinstance(head, str):
        head = build_head(head)
    mean = base_mean if base_mean is None or callable(base_mean) else (lambda: base_mean)
    return score_episodes([Candidate("model", model, split, embeddings, head, mean)], chosen, settings)["model"]
