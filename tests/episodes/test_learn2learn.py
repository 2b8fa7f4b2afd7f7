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

from episodes.learn2learn import EpisodeTaskset, labels_from_metadataset, sampler_from_metadataset  # noqa: E402


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
