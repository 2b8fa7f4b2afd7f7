"""PyTorch adapters: the uint8 tensor store with on-the-fly rotations, the DataLoader batch_sampler and
collate, and the worker/rank-sharded IterableDataset, on real Omniglot (Vinyals train split)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from episodes import EpisodeSampler, MetaDatasetSampler
from episodes.torch import EpisodeBatchSampler, EpisodeCollate, EpisodeDataset, TensorStore


@pytest.fixture(scope="module")
def train_split():
    if not os.environ.get("FEWSHOT_DATA"):
        pytest.skip("FEWSHOT_DATA is unset: no real Omniglot to test on")
    from fewshot.data import load_omniglot

    return load_omniglot(download=False).split("train")


def rotated_reference(images: torch.Tensor, image_index: np.ndarray, rotation: np.ndarray, items) -> torch.Tensor:
    """Item by item with torch.rot90: the definition the store must match."""
    out = torch.stack([torch.rot90(images[image_index[i]], int(rotation[i]), dims=(-2, -1)) for i in items])
    return out.unsqueeze(1) if out.dim() == 3 else out


# --- the tensor store ----------------------------------------------------------------------------

@pytest.mark.parametrize("cache_rotations", [False, True])
def test_store_rotates_like_rot90_on_real_omniglot(train_split, cache_rotations):
    store = TensorStore.from_arrays(train_split, cache_rotations=cache_rotations)
    rng = np.random.default_rng(0)
    items = rng.integers(0, len(train_split), 600)
    assert set(train_split.rotation[items].tolist()) == {0, 1, 2, 3}
    expected = rotated_reference(train_split.images, train_split.image_index, train_split.rotation, items)
    raw = store.gather(items, torch.uint8)
    assert raw.dtype == torch.uint8 and raw.shape == (600, 1, 28, 28)
    assert torch.equal(raw, expected)
    assert torch.equal(raw[:, 0], train_split.gather(items))  # agrees with the Omniglot layer's own gather
    floats = store.gather(items)
    assert floats.dtype == torch.float32 and 0.0 <= floats.min() and floats.max() == 1.0
    assert torch.equal(floats, expected.float() / 255)


@pytest.mark.parametrize("side", [5, 4])  # odd and even image sides
def test_store_handles_channels_and_no_rotation(side):
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (7, 3, side, side), dtype=np.uint8))
    image_index = rng.integers(0, 7, 40)
    rotation = rng.integers(0, 4, 40).astype(np.int8)
    store = TensorStore(images, image_index, rotation)
    items = np.arange(40)
    assert torch.equal(store.gather(items, torch.uint8), rotated_reference(images, image_index, rotation, items))
    plain = TensorStore(images)
    assert torch.equal(plain.gather([6, 0], torch.uint8), images[[6, 0]])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(images=torch.zeros(4, 5, 5)), r"images must be uint8 \[N,H,W\] or \[N,C,H,W\], got float32"),
        (dict(images=torch.zeros(4, 5, 5, dtype=torch.uint8), image_index=np.array([0, 4])),
         r"image_index must be 1-D with values in \[0, 4\)"),
        (dict(images=torch.zeros(4, 5, 5, dtype=torch.uint8), image_index=np.array([0, 1]), rotation=np.array([0, 4])),
         r"rotation must be quarter turns 0..3, got 0..4"),
        (dict(images=torch.zeros(4, 5, 6, dtype=torch.uint8), image_index=np.array([0, 1]), rotation=np.array([0, 1])),
         r"odd quarter turns need square images, got 5x6"),
    ],
)
def test_store_rejects_bad_input(arguments, message):
    with pytest.raises(ValueError, match=message):
        TensorStore(**arguments)


def test_store_rejects_bad_items():
    store = TensorStore(torch.zeros(4, 5, 5, dtype=torch.uint8))
    with pytest.raises(IndexError, match=r"items must lie in \[0, 4\), got 0..4"):
        store.gather([0, 4])
    with pytest.raises(ValueError, match="dtype must be torch.uint8, float16, float32 or float64, got torch.int32"):
        store.gather([0], torch.int32)


# --- DataLoader batch_sampler + collate ----------------------------------------------------------

def episodes_via_dataloader(split, sampler: EpisodeSampler, num_workers: int, **kwargs) -> list:
    batch_sampler = EpisodeBatchSampler(sampler, **kwargs)
    loader = DataLoader(split, batch_sampler=batch_sampler, collate_fn=batch_sampler.collate, num_workers=num_workers)
    return list(loader)


def assert_same_episodes(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_batch_sampler_drives_a_dataloader_with_0_and_2_workers(train_split):
    sampler = EpisodeSampler(train_split, 5, 1, 15, seed=7, num_episodes=6)
    in_process = episodes_via_dataloader(train_split, sampler, num_workers=0)
    with_workers = episodes_via_dataloader(train_split, sampler, num_workers=2)
    assert_same_episodes(in_process, with_workers)
    store = TensorStore.from_arrays(train_split)
    for (support_x, support_y, query_x, query_y), episode in zip(in_process, sampler):
        assert support_x.shape == (5, 1, 28, 28) and query_x.shape == (75, 1, 28, 28)
        assert torch.equal(support_y, torch.from_numpy(episode.support_labels))
        assert torch.equal(query_y, torch.from_numpy(episode.query_labels))
        assert torch.equal(support_x, store.gather(episode.support))
        assert torch.equal(query_x, store.gather(episode.query))


def test_batch_sampler_shards_ranks_and_resumes(train_split):
    sampler = EpisodeSampler(train_split.labels, 3, 2, 2, seed=1, num_episodes=9)
    full = [list(map(int, e.indices())) for e in sampler]
    ranks = [list(EpisodeBatchSampler(sampler, rank=r, world_size=2)) for r in range(2)]
    assert [len(EpisodeBatchSampler(sampler, rank=r, world_size=2)) for r in range(2)] == [5, 4]
    assert ranks[0] == full[0::2] and ranks[1] == full[1::2]
    assert list(EpisodeBatchSampler(sampler, start=4)) == full[4:]
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), got 2"):
        EpisodeBatchSampler(sampler, rank=2, world_size=2)


def test_collate_handles_variable_ways_and_shots(train_split):
    sampler = EpisodeSampler(train_split, (2, 5), (1, 3), 2, seed=3, num_episodes=12)
    for (support_x, support_y, query_x, query_y), episode in zip(
            episodes_via_dataloader(train_split, sampler, num_workers=0), sampler):
        assert torch.equal(support_y, torch.from_numpy(episode.support_labels))
        assert torch.equal(query_y, torch.from_numpy(episode.query_labels))
        assert support_x.shape[0] == episode.ways * episode.shots and query_x.shape[0] == episode.ways * 2


def test_collate_rejects_items_not_laid_out_as_episodes():
    collate = EpisodeCollate(queries=1)
    items = [(torch.zeros(1), label) for label in (0, 1, 1, 0)]  # query block is not class-major in order
    with pytest.raises(ValueError, match="not laid out support then query"):
        collate(items)
    with pytest.raises(ValueError, match="does not split into shots \\+ 1 queries"):
        collate([(torch.zeros(1), label) for label in (0, 1, 0)])


# --- IterableDataset: worker and rank sharding ---------------------------------------------------

def test_iterable_dataset_matches_the_sampler_stream(train_split):
    sampler = EpisodeSampler(train_split, 5, 1, 15, seed=11, num_episodes=40)
    dataset = EpisodeDataset(sampler, train_split, chunk=16)
    store = TensorStore.from_arrays(train_split)
    produced = list(dataset)
    assert len(produced) == len(dataset) == 40
    for (support_x, support_y, query_x, query_y), episode in zip(produced, sampler):
        assert torch.equal(support_x, store.gather(episode.support))
        assert torch.equal(query_x, store.gather(episode.query))
        assert torch.equal(query_y, torch.from_numpy(episode.query_labels))
    raw = list(EpisodeDataset(sampler, train_split, dtype=torch.uint8))  # views of shared block buffers
    assert len(raw) == 40 and raw[0][0].dtype == torch.uint8
    for raw_episode, episode in zip(raw, produced):
        assert torch.equal(raw_episode[0].float() / 255, episode[0])
        assert torch.equal(raw_episode[2].float() / 255, episode[2])
        assert torch.equal(raw_episode[3], episode[3])


def test_episode_streams_over_a_split_share_its_store(train_split):
    # One store per split: training's episode stream and the split's own gathers (validation, the API)
    # must not each make a quarter-turned copy of the images.
    sampler = EpisodeSampler(train_split, 5, 1, 1, seed=0, num_episodes=2)
    first, second = EpisodeDataset(sampler, train_split), EpisodeDataset(sampler, train_split, dtype=torch.uint8)
    assert first.store is second.store is train_split.tensor_store
    episode = next(iter(first))
    assert torch.equal(episode[0], train_split.to_float(train_split.gather(sampler.episode(0).support)))


def test_iterable_dataset_with_2_workers_equals_0_workers(train_split):
    sampler = EpisodeSampler(train_split, 5, 1, 5, seed=2, num_episodes=13)
    dataset = EpisodeDataset(sampler, train_split, chunk=4)
    in_process = list(DataLoader(dataset, batch_size=None, num_workers=0))
    with_workers = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert_same_episodes(in_process, with_workers)


def test_iterable_dataset_shards_over_ranks_and_resumes(train_split):
    sampler = EpisodeSampler(train_split, 3, 1, 2, seed=5, num_episodes=11)
    full = list(EpisodeDataset(sampler, train_split))
    shards = [list(EpisodeDataset(sampler, train_split, rank=r, world_size=3)) for r in range(3)]
    assert [len(shard) for shard in shards] == [4, 4, 3]
    for r in range(3):
        assert_same_episodes(shards[r], full[r::3])
    assert_same_episodes(list(EpisodeDataset(sampler, train_split, start=6)), full[6:])


def test_iterable_dataset_over_a_plain_map_dataset(train_split):
    """Any map-style dataset of (x, y) works; items are fetched one by one and collated."""
    sampler = EpisodeSampler(train_split.labels, (2, 4), 1, 3, seed=8, num_episodes=5)
    plain = torch.utils.data.Subset(train_split, range(len(train_split)))  # hides the fast-path arrays
    fast = list(EpisodeDataset(sampler, train_split))
    slow = list(EpisodeDataset(sampler, plain))
    assert_same_episodes(fast, slow)


# --- variable, imbalanced episodes (MetaDatasetSampler) on synthetic images ---------------------

class LabelledImages(torch.utils.data.Dataset):
    """A plain map-style dataset of (uint8 image [1, H, W] rotated, label): no fast-path arrays."""

    def __init__(self, store: TensorStore, labels: np.ndarray) -> None:
        self.store, self.labels = store, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.store.gather([index], torch.uint8)[0], int(self.labels[index])


@pytest.fixture(scope="module")
def imbalanced_source():
    """Items of 24 classes of 2..60 items, images shared between items and turned by quarter turns."""
    rng = np.random.default_rng(3)
    sizes = rng.integers(2, 61, 24)
    labels = np.repeat(np.arange(24) * 5 + 1, sizes)
    images = torch.from_numpy(rng.integers(0, 256, (300, 6, 6), dtype=np.uint8))
    image_index = rng.integers(0, 300, len(labels))
    rotation = rng.integers(0, 4, len(labels)).astype(np.int8)
    store = TensorStore(images, image_index, rotation)
    return store, labels, LabelledImages(store, labels)


def test_imbalanced_episodes_through_the_store(imbalanced_source):
    store, labels, _ = imbalanced_source
    sampler = MetaDatasetSampler(labels, min_ways=3, max_ways=12, seed=4, num_episodes=30)
    produced = list(EpisodeDataset(sampler, store, chunk=8, with_classes=True))
    episodes = list(sampler)
    assert len(produced) == 30 and any(len(set(e.support_counts.tolist())) > 1 for e in episodes)
    for (support_x, support_y, query_x, query_y, classes), episode in zip(produced, episodes):
        assert torch.equal(support_x, store.gather(episode.support))
        assert torch.equal(query_x, store.gather(episode.query))
        assert torch.equal(support_y, torch.from_numpy(episode.support_labels))
        assert torch.equal(query_y, torch.from_numpy(episode.query_labels))
        assert torch.equal(classes, torch.from_numpy(episode.classes))
        assert torch.equal(torch.bincount(support_y, minlength=episode.ways), torch.from_numpy(episode.support_counts))


def test_imbalanced_episodes_through_a_dataloader_with_0_and_2_workers(imbalanced_source):
    store, labels, plain = imbalanced_source
    sampler = MetaDatasetSampler(labels, min_ways=2, max_ways=10, seed=6, num_episodes=12)
    assert EpisodeBatchSampler(sampler).collate.queries is None
    in_process = episodes_via_dataloader(plain, sampler, num_workers=0)
    assert_same_episodes(in_process, episodes_via_dataloader(plain, sampler, num_workers=2))
    assert_same_episodes(in_process, [e[:4] for e in EpisodeDataset(sampler, store, dtype=torch.uint8)])
    assert_same_episodes(in_process, list(EpisodeDataset(sampler, plain)))  # fetched item by item, collated


def test_imbalanced_episodes_shard_over_ranks_and_workers(imbalanced_source):
    store, labels, _ = imbalanced_source
    sampler = MetaDatasetSampler(labels, min_ways=3, max_ways=8, seed=1, num_episodes=11)
    full = list(EpisodeDataset(sampler, store))
    for r in range(3):
        assert_same_episodes(list(EpisodeDataset(sampler, store, rank=r, world_size=3)), full[r::3])
    dataset = EpisodeDataset(sampler, store, chunk=2)
    assert_same_episodes(list(DataLoader(dataset, batch_size=None, num_workers=2)), full)
    batches = [list(EpisodeBatchSampler(sampler, rank=r, world_size=2)) for r in range(2)]
    everything = [e.indices().tolist() for e in sampler]
    assert batches[0] == everything[0::2] and batches[1] == everything[1::2]


def test_imbalanced_collate_rejects_items_not_laid_out_as_episodes():
    collate = EpisodeCollate(queries=None)
    x = torch.zeros(1)
    support_x, support_y, query_x, query_y = collate([(x, y) for y in (7, 7, 7, 3, 7, 3, 3)])
    assert support_y.tolist() == [0, 0, 0, 1] and query_y.tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="imbalanced episodes need >= 2 classes"):
        collate([(x, y) for y in (7, 7, 7)])
    with pytest.raises(ValueError, match="each class in both"):
        collate([(x, y) for y in (7, 3, 7, 3, 3, 7)])
    with pytest.raises(ValueError, match="each class in both"):
        collate([(x, y) for y in (7, 3, 9, 7, 3)])  # class 9 has no query item
