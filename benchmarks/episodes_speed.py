"""Episode throughput of `episodes` against learn2learn (and easyfsl when it runs), one thread.

(a) A synthetic Omniglot-like layout in memory: 1623 characters x 20 images, 28x28 uint8; 4112 classes
    = 1028 characters x 4 rotations, rotations applied lazily (never stored): index sampling plus
    tensor gather of 5-way, 1-shot + 15-query episodes.
(b) Real Omniglot, Vinyals train split: episodes as float tensors ready for a model, against
    learn2learn's standard `get_tasksets('omniglot', ...)` pipeline.
(c) Variable and imbalanced episodes (Meta-Dataset's procedure, `MetaDatasetSampler`) on the layout of
    (a), against the fixed-shape path at the same mean episode size and against learn2learn, which has
    no such procedure: its fixed-shape Taskset at that mean size. Episodes differ in size, so images/s
    is the rate compared.

Each contender runs in interleaved rounds; the table shows the best round. The machine may be
shared, so both wall-clock episodes/s and episodes per CPU-second of this process are printed;
ratios compare contenders measured in the same run.

Usage: python -m benchmarks.episodes_speed [--part a|b|c|all] [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from episodes import EpisodeSampler, MetaDatasetSampler
from episodes.torch import EpisodeBatchSampler, EpisodeDataset, TensorStore

WAYS, SHOTS, QUERIES = 5, 1, 15


def measure(make_stream: Callable[[], Iterator], seconds: float, min_episodes: int = 3) -> tuple[float, float]:
    """Consume episodes for about `seconds`; return (episodes per wall second, per CPU second)."""
    stream = make_stream()
    next(stream)  # warm-up: first draws, worker start-up, lazy imports
    wall, cpu, count = time.perf_counter(), time.process_time(), 0
    while count < min_episodes or time.perf_counter() - wall < seconds:
        next(stream)
        count += 1
    return count / (time.perf_counter() - wall), count / max(time.process_time() - cpu, 1e-9)


def run_rounds(contenders: dict[str, Callable[[], Iterator]], seconds: float, rounds: int,
               min_episodes: dict[str, int] | None = None) -> dict[str, tuple[float, float]]:
    """Best (wall, cpu) rate of each contender over interleaved rounds."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for name, make_stream in contenders.items():
            wall, cpu = measure(make_stream, seconds, (min_episodes or {}).get(name, 3))
            previous = best.get(name, (0.0, 0.0))
            best[name] = (max(previous[0], wall), max(previous[1], cpu))
    return best


def print_table(title: str, results: dict[str, tuple[float, float]], reference: str, notes: list[str]) -> None:
    print(f"\n{title}")
    print(f"{'contender':<62} {'episodes/s':>11} {'eps/CPU-s':>10} {'x ref (wall)':>13} {'x ref (CPU)':>12}")
    ref_wall, ref_cpu = results[reference]
    for name, (wall, cpu) in results.items():
        print(f"{name:<62} {wall:>11,.0f} {cpu:>10,.0f} {wall / ref_wall:>13.1f} {cpu / ref_cpu:>12.1f}")
    for note in notes:
        print(f"  {note}")


def ratio(results: dict[str, tuple[float, float]], ours: str, reference: str) -> str:
    return (f"{results[ours][0] / results[reference][0]:.1f}x (wall), "
            f"{results[ours][1] / results[reference][1]:.1f}x (CPU)")


def forever(sample: Callable[[], object]) -> Iterator:
    while True:
        yield sample()


# --- (a) synthetic layout ------------------------------------------------------------------------

class LazyRotations(torch.utils.data.Dataset):
    """learn2learn's view of the same data: item i = rot90(images[image_index[i]], rotation[i]), rotated on access."""

    def __init__(self, images: torch.Tensor, image_index: np.ndarray, rotation: np.ndarray, labels: np.ndarray):
        self.images, self.image_index, self.rotation, self.labels = images, image_index, rotation, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[int(self.image_index[index])]
        return torch.rot90(image, int(self.rotation[index]), dims=(-2, -1)), int(self.labels[index])


def synthetic_layout() -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """1623 x 20 random 28x28 uint8 images; classes = first 1028 characters x 4 rotations (4112)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1623 * 20, 28, 28), dtype=torch.uint8, generator=generator)
    characters, turns = np.repeat(np.arange(1028), 4), np.tile(np.arange(4), 1028)
    image_index = (characters[:, None] * 20 + np.arange(20)).reshape(-1)
    rotation = np.repeat(turns, 20).astype(np.int8)
    labels = np.repeat(np.arange(len(characters)), 20)
    return images, image_index, rotation, labels


def easyfsl_contender(dataset: torch.utils.data.Dataset, labels: np.ndarray) -> Callable[[], Iterator] | str:
    """easyfsl 1.5.0's TaskSampler in a DataLoader, or the reason it cannot run."""
    try:
        from easyfsl.samplers import TaskSampler

        dataset.get_labels = lambda: labels.tolist()  # the FewShotDataset interface TaskSampler reads
        sampler = TaskSampler(dataset, n_way=WAYS, n_shot=SHOTS, n_query=QUERIES, n_tasks=10**9)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn)
        return lambda: iter(loader)
    except Exception as error:  # noqa: BLE001 - report whatever stops it
        return f"{type(error).__name__}: {error}"


def part_a(seconds: float, rounds: int) -> None:
    import learn2learn as l2l

    images, image_index, rotation, labels = synthetic_layout()
    sampler = EpisodeSampler(labels, WAYS, SHOTS, QUERIES, seed=0)
    on_the_fly = TensorStore(images, image_index, rotation)
    cached = TensorStore(images, image_index, rotation, cache_rotations=True)

    dataset = LazyRotations(images, image_index, rotation, labels)
    labels_to_indices = {int(c): np.flatnonzero(labels == c).tolist() for c in range(labels.max() + 1)}
    meta = l2l.data.MetaDataset(dataset, labels_to_indices=labels_to_indices)
    taskset = l2l.data.Taskset(meta, task_transforms=[
        l2l.data.transforms.FusedNWaysKShots(meta, n=WAYS, k=SHOTS + QUERIES),
        l2l.data.transforms.LoadData(meta),
        l2l.data.transforms.RemapLabels(meta),
    ], num_tasks=-1)

    # For the cached rows, a fair learn2learn counterpart reads pre-rotated images too.
    rotated = torch.stack([torch.rot90(images[int(i)], int(k), dims=(-2, -1)) for i, k in zip(image_index, rotation)])
    pre_rotated = LazyRotations(rotated, np.arange(len(labels)), np.zeros(len(labels), np.int8), labels)
    meta_cached = l2l.data.MetaDataset(pre_rotated, labels_to_indices=labels_to_indices)
    taskset_cached = l2l.data.Taskset(meta_cached, task_transforms=[
        l2l.data.transforms.FusedNWaysKShots(meta_cached, n=WAYS, k=SHOTS + QUERIES),
        l2l.data.transforms.LoadData(meta_cached),
        l2l.data.transforms.RemapLabels(meta_cached),
    ], num_tasks=-1)

    starts = itertools.count(0, 10**7)  # each round draws fresh episodes
    contenders = {
        "episodes EpisodeDataset, uint8, rotated on the fly": lambda: iter(
            EpisodeDataset(sampler, on_the_fly, dtype=torch.uint8, start=next(starts))),
        "episodes EpisodeDataset, float32 [0,1], rotated on the fly": lambda: iter(
            EpisodeDataset(sampler, on_the_fly, start=next(starts))),
        "episodes EpisodeDataset, uint8, cache_rotations=True": lambda: iter(
            EpisodeDataset(sampler, cached, dtype=torch.uint8, start=next(starts))),
        "episodes EpisodeDataset, float32 [0,1], cache_rotations=True": lambda: iter(
            EpisodeDataset(sampler, cached, start=next(starts))),
        "learn2learn Taskset(FusedNWaysKShots+LoadData+RemapLabels)": lambda: forever(taskset.sample),
        "learn2learn Taskset, same, over pre-rotated images": lambda: forever(taskset_cached.sample),
    }
    easyfsl = easyfsl_contender(LazyRotations(images, image_index, rotation, labels), labels)
    if callable(easyfsl):
        contenders["easyfsl TaskSampler + DataLoader"] = easyfsl
    results = run_rounds(contenders, seconds, rounds)
    reference = "learn2learn Taskset(FusedNWaysKShots+LoadData+RemapLabels)"
    reference_cached = "learn2learn Taskset, same, over pre-rotated images"
    ours, ours_cached = "episodes EpisodeDataset, uint8, rotated on the fly", "episodes EpisodeDataset, uint8, cache_rotations=True"
    notes = [
        "learn2learn reads a Dataset whose __getitem__ rotates lazily with torch.rot90 (uint8 out, like ours),",
        "  wrapped in MetaDataset with labels_to_indices given (bookkeeping not timed).",
        f"easyfsl 1.5.0: {'ran' if callable(easyfsl) else 'skipped: ' + easyfsl}",
        f"floor: >= 20x learn2learn. uint8, on the fly vs learn2learn: {ratio(results, ours, reference)}; "
        f"cached vs learn2learn over pre-rotated images: {ratio(results, ours_cached, reference_cached)}",
    ]
    print_table(f"(a) synthetic Omniglot layout in memory, {WAYS}-way {SHOTS}-shot {QUERIES}-query, "
                "index sampling + tensor gather", results, reference, notes)


# --- (c) variable, imbalanced episodes ------------------------------------------------------------

def mean_items(sampler: EpisodeSampler, count: int = 2000) -> float:
    """Mean dataset items (support + query) per episode of a sampler."""
    return float(np.mean([len(e.indices()) for e in sampler.episodes(range(count))]))


def indices_only(sampler: EpisodeSampler, start: int) -> Iterator:
    """Episodes as index arrays, drawn 256 at a time (no images)."""
    return sampler.iterate(start, chunk=256)


def part_c(seconds: float, rounds: int) -> None:
    import learn2learn as l2l

    images, image_index, rotation, labels = synthetic_layout()
    store = TensorStore(images, image_index, rotation)
    meta_dataset = MetaDatasetSampler(labels, seed=0)  # the paper's defaults
    draw = meta_dataset.draw(np.arange(2000))
    mean_ways = int(round(float(draw.ways.mean())))
    mean_shots = int(round(float(draw.support_counts.mean())))
    queries = int(round(float(draw.queries.mean())))
    fixed_small = EpisodeSampler(labels, WAYS, SHOTS, QUERIES, seed=0)
    fixed_same_size = EpisodeSampler(labels, mean_ways, mean_shots, queries, seed=0)
    variable_balanced = EpisodeSampler(labels, (5, 50), (1, 10), queries, seed=0)

    dataset = LazyRotations(images, image_index, rotation, labels)
    labels_to_indices = {int(c): np.flatnonzero(labels == c).tolist() for c in range(labels.max() + 1)}
    meta = l2l.data.MetaDataset(dataset, labels_to_indices=labels_to_indices)
    taskset = l2l.data.Taskset(meta, task_transforms=[
        l2l.data.transforms.FusedNWaysKShots(meta, n=mean_ways, k=mean_shots + queries),
        l2l.data.transforms.LoadData(meta),
        l2l.data.transforms.RemapLabels(meta),
    ], num_tasks=-1)

    starts = itertools.count(0, 10**7)
    reference = f"learn2learn Taskset, fixed {mean_ways}-way {mean_shots}+{queries} (Meta-Dataset's mean size)"
    contenders = {
        f"episodes EpisodeDataset, fixed {WAYS}-way {SHOTS}+{QUERIES} (part a)": (fixed_small, lambda: iter(
            EpisodeDataset(fixed_small, store, dtype=torch.uint8, start=next(starts)))),
        f"episodes EpisodeDataset, fixed {mean_ways}-way {mean_shots}+{queries}": (fixed_same_size, lambda: iter(
            EpisodeDataset(fixed_same_size, store, dtype=torch.uint8, start=next(starts)))),
        f"episodes EpisodeDataset, EpisodeSampler ways 5-50, shots 1-10, +{queries}": (variable_balanced, lambda: iter(
            EpisodeDataset(variable_balanced, store, dtype=torch.uint8, start=next(starts)))),
        "episodes EpisodeDataset, MetaDatasetSampler (paper's defaults)": (meta_dataset, lambda: iter(
            EpisodeDataset(meta_dataset, store, dtype=torch.uint8, start=next(starts)))),
        f"episodes indices only, fixed {mean_ways}-way {mean_shots}+{queries}": (
            fixed_same_size, lambda: indices_only(fixed_same_size, next(starts))),
        "episodes indices only, MetaDatasetSampler": (meta_dataset, lambda: indices_only(meta_dataset, next(starts))),
        reference: (None, lambda: forever(taskset.sample)),
    }
    sizes = {name: mean_items(sampler) if sampler is not None else mean_ways * (mean_shots + queries)
             for name, (sampler, _) in contenders.items()}
    results = run_rounds({name: make for name, (_, make) in contenders.items()}, seconds, rounds)
    print("\n(c) variable and imbalanced episodes on the synthetic Omniglot layout of (a), uint8, rotated on the fly")
    print(f"{'contender':<70} {'items/ep':>8} {'episodes/s':>11} {'images/s':>10} {'x ref':>7} {'x ref CPU':>9}")
    ref_wall, ref_cpu = (rate * sizes[reference] for rate in results[reference])
    for name, (wall, cpu) in results.items():
        print(f"{name:<70} {sizes[name]:>8.0f} {wall:>11,.0f} {wall * sizes[name]:>10,.0f} "
              f"{wall * sizes[name] / ref_wall:>7.1f} {cpu * sizes[name] / ref_cpu:>9.1f}")
    ours = "episodes EpisodeDataset, MetaDatasetSampler (paper's defaults)"
    same_size = f"episodes EpisodeDataset, fixed {mean_ways}-way {mean_shots}+{queries}"
    print(f"  Meta-Dataset episodes here: mean {draw.ways.mean():.1f} ways, {draw.support_counts.mean():.1f} shots per "
          f"class, {draw.queries.mean():.0f} queries per class, {sizes[ours]:.0f} items.")
    print(f"  images/s, MetaDatasetSampler vs fixed shape at the same mean size: "
          f"{results[ours][0] * sizes[ours] / (results[same_size][0] * sizes[same_size]):.2f}x; "
          f"vs learn2learn at that size: {results[ours][0] * sizes[ours] / ref_wall:.1f}x")


# --- (b) real Omniglot ---------------------------------------------------------------------------

def part_b(seconds: float, rounds: int, l2l_root: Path) -> None:
    try:
        from fewshot.data import load_omniglot
    except ImportError as error:
        print(f"\n(b) skipped: fewshot.data.load_omniglot is not importable yet ({error})")
        return
    import learn2learn as l2l

    from benchmarks.peers import extract_for_torchvision, skip_torchvision_omniglot_md5
    from fewshot.data import resolve_data_root

    split = load_omniglot().split("train")
    sampler = EpisodeSampler(split, WAYS, SHOTS, QUERIES, seed=0)
    batch_sampler = EpisodeBatchSampler(sampler)
    loader = torch.utils.data.DataLoader(split, batch_sampler=batch_sampler, collate_fn=batch_sampler.collate)

    setup = time.perf_counter()
    extract_for_torchvision(resolve_data_root(), l2l_root)
    skip_torchvision_omniglot_md5()  # our re-encoded copy's zips differ from the official MD5 (see peers.py)
    tasksets = l2l.vision.benchmarks.get_tasksets(
        "omniglot", train_ways=WAYS, train_samples=SHOTS + QUERIES, test_ways=WAYS,
        test_samples=SHOTS + QUERIES, root=str(l2l_root))
    setup = time.perf_counter() - setup

    contenders = {
        "episodes EpisodeDataset(ClassSplit), float32 [0,1], on the fly": lambda: iter(EpisodeDataset(sampler, split)),
        "episodes batch_sampler + DataLoader(ClassSplit), per-item fetch": lambda: iter(loader),
        "learn2learn get_tasksets('omniglot').train.sample()": lambda: forever(tasksets.train.sample),
    }
    reference = "learn2learn get_tasksets('omniglot').train.sample()"
    results = run_rounds(contenders, seconds, rounds, min_episodes={reference: 10})
    ours = next(iter(contenders))
    notes = [
        f"ours: fewshot.data.load_omniglot() Vinyals train split (4112 classes), {WAYS}-way {SHOTS}+{QUERIES}.",
        f"learn2learn: {WAYS} ways x {SHOTS + QUERIES} samples from PNGs in {l2l_root} (extracted from FEWSHOT_DATA's "
        f"zips; torchvision's MD5 check patched for this run); set-up {setup:.0f} s, not timed.",
        f"floor: >= 200x learn2learn; measured {ratio(results, ours, reference)}",
    ]
    print_table("(b) real Omniglot, episodes as float tensors ready for a model", results, reference, notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("a", "b", "c", "all"), default="all")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per contender per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--l2l-root", type=Path, default=Path(tempfile.gettempdir()) / "episodes-bench-l2l",
                        help="where learn2learn's Omniglot folders go (reused across runs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # learn2learn's gym import and deprecation notices
    print(f"torch {torch.__version__}, 1 thread; {os.cpu_count()} CPUs visible; load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.part in ("a", "all"):
        part_a(args.seconds, args.rounds)
    if args.part in ("b", "all"):
        part_b(args.seconds, args.rounds, args.l2l_root)
    if args.part in ("c", "all"):
        part_c(args.seconds, args.rounds)


if __name__ == "__main__":
    main()
