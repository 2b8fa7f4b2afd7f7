"""learn2learn 0.2.0 interop: samplers from an l2l MetaDataset, and an unchanged l2l training loop
(TaskDataset-style `sample()` + `partition_task` + MAML) running on our tasks, on real Omniglot."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # learn2learn imports gym, which warns about its own deprecation
    l2l = pytest.importorskip("learn2learn")
from learn2learn.data.utils import partition_task  # noqa: E402

from episodes.learn2learn import (  # noqa: E402
    EpisodeTaskset,
    labels_from_metadataset,
    meta_dataset_sampler_from_metadataset,
    partition_episode_task,
    sampler_from_metadataset,
)


@pytest.fixture(scope="module")
def train_split():
    if not os.environ.get("FEWSHOT_DATA"):
        pytest.skip("FEWSHOT_DATA is unset: no real Omniglot to test on")
    from fewshot.data import load_omniglot

    return load_omniglot(download=False).split("train")


@pytest.fixture(scope="module")
def meta_train(train_split):
    """An l2l MetaDataset over the split (bookkeeping given, so l2l does not load all 82,240 items)."""
    labels_to_indices = {int(c): np.flatnonzero(train_split.labels == c).tolist() for c in range(train_split.num_classes)}
    return l2l.data.MetaDataset(train_split, labels_to_indices=labels_to_indices)


def l2l_training_steps(tasks, shots: int, ways: int, steps: int) -> list[float]:
    """A typical learn2learn MAML loop body, as in l2l's examples; it must run unchanged on any taskset."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, ways))
    maml = l2l.algorithms.MAML(model, lr=0.5, first_order=True)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        X, y = tasks.sample()
        (support_x, support_y), (query_x, query_y) = partition_task(X, y, shots=shots)
        learner = maml.clone()
        learner.adapt(loss_fn(learner(support_x), support_y))
        query_loss = loss_fn(learner(query_x), query_y)
        optimizer.zero_grad()
        query_loss.backward()
        optimizer.step()
        losses.append(query_loss.item())
    return losses


def test_labels_and_sampler_from_metadataset(meta_train, train_split):
    assert np.array_equal(labels_from_metadataset(meta_train), train_split.labels)
    filtered = l2l.data.FilteredMetaDataset(meta_train, labels=[3, 10, 11, 40, 41])
    sampler = sampler_from_metadataset(filtered, ways=5, shots=1, queries=2, seed=0)
    assert sampler.num_classes == 5 and len(sampler.labels) == 5 * 20
    episode = sampler.episode(0)
    assert [int(filtered[int(i)][1]) for i in episode.support] == episode.classes.tolist()
    with pytest.raises(ValueError, match="has no labels_to_indices"):
        labels_from_metadataset(train_split)


def test_an_unchanged_l2l_loop_runs_on_l2l_tasks_and_on_ours(meta_train, train_split):
    ways, shots, queries = 5, 1, 1
    theirs = l2l.data.Taskset(meta_train, task_transforms=[
        l2l.data.transforms.FusedNWaysKShots(meta_train, n=ways, k=shots + queries),
        l2l.data.transforms.LoadData(meta_train),
        l2l.data.transforms.RemapLabels(meta_train),
        l2l.data.transforms.ConsecutiveLabels(meta_train),
    ], num_tasks=-1)
    sampler = sampler_from_metadataset(meta_train, ways, shots, queries, seed=0)
    for source in (meta_train, train_split):  # per-item loading, and the tensor-store fast path
        ours = EpisodeTaskset(source, sampler)
        losses = l2l_training_steps(ours, shots, ways, steps=5)
        assert len(losses) == 5 and all(np.isfinite(losses))
    reference = l2l_training_steps(theirs, shots, ways, steps=5)
    assert all(np.isfinite(reference))


def test_partition_task_recovers_our_support_and_query(train_split, meta_train):
    sampler = sampler_from_metadataset(meta_train, ways=5, shots=2, queries=3, seed=4, num_episodes=6)
    tasks = EpisodeTaskset(train_split, sampler)
    for index in range(6):
        X, y = tasks.sample()
        episode = sampler.episode(index)
        (support_x, support_y), (query_x, query_y) = partition_task(X, y, shots=2)
        assert torch.equal(support_y, torch.from_numpy(episode.support_labels))
        assert torch.equal(query_y, torch.from_numpy(episode.query_labels))
        assert torch.equal(support_x, tasks.store.gather(episode.support))
        assert torch.equal(query_x, tasks.store.gather(episode.query))
        # Same images as l2l's own LoadData would read item by item.
        assert torch.equal(X[0], meta_train[int(episode.support[0])][0])
    with pytest.raises(StopIteration, match="all 6 tasks"):
        tasks.sample()


def test_taskset_interface_random_access_iteration_and_resume(train_split):
    sampler = sampler_from_metadataset(
        l2l.data.MetaDataset(train_split, indices_to_labels=dict(enumerate(train_split.labels.tolist()))),
        ways=3, shots=1, queries=1, seed=9, num_episodes=7)
    tasks = EpisodeTaskset(train_split, sampler)
    assert tasks.num_tasks == len(tasks) == 7
    streamed = list(tasks)
    assert len(streamed) == 7
    assert torch.equal(tasks[4][0], streamed[4][0]) and torch.equal(tasks.sample()[0], streamed[0][0])
    resumed = list(EpisodeTaskset(train_split, sampler, start=5))
    assert len(resumed) == 2 and torch.equal(resumed[0][0], streamed[5][0])
    endless = EpisodeTaskset(train_split, sampler_from_metadataset(
        l2l.data.MetaDataset(train_split, indices_to_labels=dict(enumerate(train_split.labels.tolist()))), 3, 1, 1))
    assert endless.num_tasks == -1


# --- variable, imbalanced episodes (MetaDatasetSampler), on a synthetic l2l MetaDataset -----------

@pytest.fixture(scope="module")
def meta_synthetic():
    """An l2l MetaDataset over 30 classes of 4..40 random 28x28 images."""
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(30), rng.integers(4, 41, 30))
    images = torch.from_numpy(rng.random((len(labels), 1, 28, 28), dtype=np.float32))
    dataset = torch.utils.data.TensorDataset(images, torch.from_numpy(labels))
    return l2l.data.MetaDataset(dataset), labels


def test_imbalanced_tasks_keep_l2l_layout_and_partition(meta_synthetic):
    meta, labels = meta_synthetic
    sampler = meta_dataset_sampler_from_metadataset(meta, min_ways=3, max_ways=10, seed=2, num_episodes=20)
    assert np.array_equal(sampler.labels, labels)
    tasks = EpisodeTaskset(meta, sampler)
    imbalanced = 0
    for index in range(20):
        task = tasks.sample()
        X, y = task  # still learn2learn's [X, y]
        episode = sampler.episode(index)
        imbalanced += len(set(episode.support_counts.tolist())) > 1
        per_class = torch.from_numpy(episode.support_counts + episode.queries)
        assert torch.equal(y, torch.arange(episode.ways).repeat_interleave(per_class))  # classes kept together
        (support_x, support_y), (query_x, query_y) = partition_episode_task(task)
        assert torch.equal(support_y, torch.from_numpy(episode.support_labels))
        assert torch.equal(query_y, torch.from_numpy(episode.query_labels))
        assert torch.equal(support_x, torch.stack([meta[int(i)][0] for i in episode.support]))
        assert torch.equal(query_x, torch.stack([meta[int(i)][0] for i in episode.query]))
    assert imbalanced > 10


def test_balanced_tasks_partition_as_l2l_does(meta_synthetic):
    meta, _ = meta_synthetic
    tasks = EpisodeTaskset(meta, sampler_from_metadataset(meta, ways=4, shots=2, queries=2, seed=1))
    for index in range(5):
        task = tasks[index]
        ours, theirs = partition_episode_task(task), partition_task(*task, shots=2)
        assert all(torch.equal(a, b) for pair in zip(ours, theirs) for a, b in zip(*pair))
    with pytest.raises(ValueError, match="needs an EpisodeTask from EpisodeTaskset, got list"):
        partition_episode_task(list(tasks[0]))


def test_an_l2l_maml_loop_runs_on_imbalanced_tasks(meta_synthetic):
    meta, _ = meta_synthetic
    sampler = meta_dataset_sampler_from_metadataset(meta, min_ways=5, max_ways=5, seed=0)
    tasks = EpisodeTaskset(meta, sampler)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 5))
    maml = l2l.algorithms.MAML(model, lr=0.5, first_order=True)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(4):
        (support_x, support_y), (query_x, query_y) = partition_episode_task(tasks.sample())
        learner = maml.clone()
        learner.adapt(loss_fn(learner(support_x), support_y))
        query_loss = loss_fn(learner(query_x), query_y)
        optimizer.zero_grad()
        query_loss.backward()
        optimizer.step()
        assert np.isfinite(query_loss.item())
