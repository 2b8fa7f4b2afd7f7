"""Colour few-shot training side by side with easyfsl and learn2learn, at equal wall time, on one image folder.

    python -m benchmarks.rgb_peers --root /work/emoji/xd [--seconds 300] [--threads 1] [--episodes 600]

`--root` is an ImageFolder-style set of colour classes with `train/` (trained on) and `test/` (novel
classes, scored); the emoji set of docs/training.md is one. Each system trains its Conv-4 for the same
wall time (`--seconds`, set-up and data loading included), one after the other, then all are
scored on the same seeded 5-way 1-shot test episodes (drawn once by `episodes.EpisodeSampler` over the
test folder's images), each system reading the test images through its own pipeline.

- easyfsl 1.5.0: `PrototypicalNetworks` with the training loop of its episodic-training notebook (SGD
  1e-2, momentum 0.9, weight decay 5e-4, cross-entropy on the query scores), over a torchvision
  `ImageFolder` with easyfsl's `default_transform` (random resized crop, colour jitter, flip,
  ImageNet normalisation). Its `TaskSampler` cannot be built under torch 2.14 (`Sampler.__init__`
  no longer takes `data_source`), so `EpisodeTasks` below, a `TaskSampler` whose indices come from our
  `episodes.EpisodeSampler`, takes its place and easyfsl's own `episodic_collate_fn` makes the tasks.
  easyfsl ships no Conv-4, so it trains learn2learn's `CNN4Backbone`, the network of the next entry.
- learn2learn 0.2.0: its prototypical-network example (`examples/vision/protonet_miniimagenet.py`):
  `CNN4Backbone(64, channels=3, max_pool=True)`, 30-way 1-shot episodes from `TaskDataset` (NWays,
  KShots, LoadData, RemapLabels) over the `ImageFolder`, Adam 1e-3 halved every 2,000 episodes,
  squared Euclidean prototype logits.
- fewshot, twice (`OURS`): the colour recipe of docs/training.md (`fewshot recipe protonet-colour`, 32 px)
  and the same at the peers' 64 px, each through `fewshot.training.train`, stopped by SIGINT when the time
  is up (the loop saves `last.pt` and stops cleanly) and scored from that checkpoint on test images read
  by our folder loader. Its Conv-4 is the same network (3x3 conv, batch norm, ReLU, 2x2 max-pool, x4).
- raw pixels: nearest class mean on the test images' pixels, untrained, as the floor.

The peers keep their documented learning-rate schedules (neither decays within a few minutes); ours
train at a constant rate. Training images per second count every image an optimiser step saw (support and query, or a
class-balanced batch), over the whole wall time.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder

from episodes.sampler import EpisodeSampler
from fewshot.data import load_splits
from fewshot.data.splits import to_float
from fewshot.metrics.statistics import confidence_interval
from fewshot.model.checkpoint import model_from_checkpoint
from fewshot.training import TrainConfig, TrainingInterrupted, train
from fewshot.training.recipes import RECIPES

WAYS, SHOTS, QUERIES = 5, 1, 4  # the test episodes; emoji classes hold 5 or 6 images
IMAGE_SIZE = 64
#: Ours, two ways: "fewshot-64" is the same Conv-4 on the same 64 px images as the peers (protonet, 20-way 1-shot
#: 4-query episodes, the emoji set's crop-flip-jitter, bf16), for training images per second on the same
#: backbone; "fewshot-recipe" is the colour recipe of docs/training.md (`fewshot recipe protonet-colour`: the
#: same at 32 px). Both at a constant learning rate: a run stopped by the clock has no length to decay over.
OURS: dict[str, TrainConfig] = {
    "fewshot-64": replace(RECIPES.get_or_raise("protonet-colour").stages[0][1], image_size=IMAGE_SIZE, schedule="none"),
    "fewshot-recipe": replace(RECIPES.get_or_raise("protonet-colour").stages[0][1], schedule="none"),
}


@dataclass
class Trained:
    """One system after training: how to embed a test image batch and score an episode, and what training cost."""

    name: str
    setup: str
    embed: Callable[[torch.Tensor], torch.Tensor]  # its own test-time preprocessing applied inside
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # support, support labels, query
    steps: int
    images: int
    seconds: float
    test_images: Callable[[list[str]], torch.Tensor]  # test item paths (relative to test/) -> its float images

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")


def squared_euclidean_logits(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Negative squared distance of each query to each class mean of the support (learn2learn's example rule)."""
    ways = int(support_labels.max()) + 1
    prototypes = torch.stack([support[support_labels == c].mean(0) for c in range(ways)])
    return -torch.cdist(query, prototypes).pow(2)


def image_folder(root: Path, transform: Callable | None) -> ImageFolder:
    """torchvision's `ImageFolder` of `root` (one folder per class), images through `transform`."""
    return ImageFolder(str(root), transform=transform)


def folder_images(folder: ImageFolder, paths: list[str]) -> torch.Tensor:
    """The images of `paths` (relative to the folder) through the folder's own transform, stacked."""
    index = {Path(path).relative_to(folder.root).as_posix(): i for i, (path, _) in enumerate(folder.samples)}
    return torch.stack([folder[index[path]][0] for path in paths])


def run_until(seconds: float, steps: Iterator[int]) -> tuple[int, int, float]:
    """Drive a training generator (yielding images per optimiser step) until `seconds` have passed."""
    started = time.perf_counter()
    count = images = 0
    for step_images in steps:
        count += 1
        images += step_images
        if time.perf_counter() - started >= seconds:
            break
    return count, images, time.perf_counter() - started


def train_easyfsl(root: Path, seconds: float) -> Trained:
    """easyfsl's episodic-training loop (see the module docstring) for `seconds`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn as l2l
    from easyfsl.datasets.default_configs import default_transform
    from easyfsl.methods import PrototypicalNetworks
    from easyfsl.methods.utils import compute_prototypes
    from easyfsl.samplers import TaskSampler

    class EpisodeTasks(TaskSampler):
        """easyfsl's TaskSampler (its collate function and task layout) with our episode sampler's indices."""

        def __init__(self, labels: list[int], n_way: int, n_shot: int, n_query: int, seed: int) -> None:
            # TaskSampler.__init__ is not called: its `Sampler.__init__(data_source=None)` is what torch 2.14 refuses.
            self.n_way, self.n_shot, self.n_query = n_way, n_shot, n_query
            self.sampler = EpisodeSampler(np.asarray(labels), n_way, n_shot, n_query, seed=seed)

        def __len__(self) -> int:  # endless: the loop stops on the clock
            return 2**62

        def __iter__(self) -> Iterator[list[int]]:
            for episode in self.sampler.iterate():
                support = episode.support.reshape(self.n_way, self.n_shot)
                query = episode.query.reshape(self.n_way, self.n_query)
                yield np.concatenate([support, query], axis=1).reshape(-1).tolist()

    random.seed(0)
    torch.manual_seed(0)
    model = PrototypicalNetworks(l2l.vision.models.CNN4Backbone(64, channels=3, max_pool=True))

    def steps() -> Iterator[int]:
        train_set = image_folder(root / "train", default_transform(IMAGE_SIZE, training=True))
        tasks = EpisodeTasks(train_set.targets, WAYS, SHOTS, QUERIES, seed=0)
        loader = DataLoader(train_set, batch_sampler=tasks, num_workers=0, collate_fn=tasks.episodic_collate_fn)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
        loss_function = nn.CrossEntropyLoss()
        model.train()
        for support_images, support_labels, query_images, query_labels, _ in loader:
            optimizer.zero_grad()
            model.process_support_set(support_images, support_labels)
            loss = loss_function(model(query_images), query_labels)
            loss.backward()
            optimizer.step()
            yield len(support_images) + len(query_images)

    count, images, elapsed = run_until(seconds, steps())
    model.eval()
    test = image_folder(root / "test", default_transform(IMAGE_SIZE, training=False))

    def score(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        model.prototypes = compute_prototypes(support, support_labels)
        return model.l2_distance_to_prototypes(query)

    return Trained("easyfsl 1.5.0 PrototypicalNetworks", f"{WAYS}-way {SHOTS}-shot {QUERIES}-query, SGD 1e-2, "
                   "default_transform", model.compute_features, score, count, images, elapsed,
                   lambda paths: folder_images(test, paths))


def train_learn2learn(root: Path, seconds: float, train_ways: int = 30) -> Trained:
    """learn2learn's prototypical-network example (see the module docstring) for `seconds`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import learn2learn as l2l
    from learn2learn.data.transforms import KShots, LoadData, NWays, RemapLabels

    random.seed(0)
    torch.manual_seed(0)
    model = l2l.vision.models.CNN4Backbone(64, channels=3, max_pool=True)

    def steps() -> Iterator[int]:
        train_set = image_folder(root / "train", transforms.ToTensor())
        labels_to_indices: dict[int, list[int]] = {}
        for index, label in enumerate(train_set.targets):
            labels_to_indices.setdefault(label, []).append(index)
        dataset = l2l.data.MetaDataset(train_set, labels_to_indices=labels_to_indices)
        tasks = l2l.data.TaskDataset(dataset, task_transforms=[
            NWays(dataset, train_ways), KShots(dataset, SHOTS + QUERIES), LoadData(dataset), RemapLabels(dataset)])
        loader = DataLoader(tasks, shuffle=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
        model.train()
        step = 0
        while True:
            data, labels = next(iter(loader))
            order = torch.sort(labels.squeeze(0)).indices
            data, labels = data.squeeze(0)[order], labels.squeeze(0)[order]
            embeddings = model(data)
            is_support = torch.zeros(len(data), dtype=torch.bool)
            is_support[torch.arange(train_ways) * (SHOTS + QUERIES)] = True
            support = embeddings[is_support].reshape(train_ways, SHOTS, -1).mean(1)
            logits = squared_euclidean_logits(support, torch.arange(train_ways), embeddings[~is_support])
            loss = F.cross_entropy(logits, labels[~is_support].long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0:  # the example's epoch of 100 episodes
                schedule.step()
            yield len(data)

    count, images, elapsed = run_until(seconds, steps())
    model.eval()
    test = image_folder(root / "test", transforms.ToTensor())
    return Trained("learn2learn 0.2.0 protonet example", f"{train_ways}-way {SHOTS}-shot {QUERIES}-query, Adam 1e-3",
                   model, squared_euclidean_logits, count, images, elapsed, lambda paths: folder_images(test, paths))


def train_ours(root: Path, seconds: float, output: Path, threads: int, config: TrainConfig) -> Trained:
    """`fewshot.training.train` for `seconds` (stopped by SIGINT, as Ctrl-C would), scored from its last.pt."""
    config = replace(config, data_root=str(root), output=str(output), threads=threads, episodes=10**6,
                     val_every=10**6, checkpoint_every=10**6, device="cpu")
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    started = time.perf_counter()
    timer.start()
    try:
        train(config, progress=False)
    except TrainingInterrupted:
        pass
    finally:
        timer.cancel()
    elapsed = time.perf_counter() - started
    model, state = model_from_checkpoint(output / "last.pt")
    per_step = (config.batch_classes * config.batch_images if config.sampling == "balanced"
                else config.train_ways * (config.shots + config.queries))
    splits = load_splits("folder", root=root, image_size=model.spec.image_size)
    by_path = {Path(item).relative_to("test").as_posix(): i for i, item in enumerate(splits.test.item_ids)}

    def test_images(paths: list[str]) -> torch.Tensor:
        rows = splits.test.image_index[[by_path[path] for path in paths]]
        return to_float(splits.test.images[torch.as_tensor(rows)])

    def score(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return model.learner.episode_logits(support, support_labels, query, int(support_labels.max()) + 1)

    setup = (f"{config.learner} {config.batch_classes}x{config.batch_images} batches" if config.sampling == "balanced"
             else f"{config.learner} {config.train_ways}-way {config.shots}-shot {config.queries}-query")
    return Trained(f"fewshot (ours), {model.spec.image_size} px", f"{setup}, {config.augment}, {config.precision}",
                   model.embed, score,
                   int(state["episode"]), int(state["episode"]) * per_step, elapsed, test_images)


def raw_pixels(root: Path) -> Trained:
    """The untrained reference: nearest class mean on the raw pixels of the test images."""
    test = image_folder(root / "test", transforms.ToTensor())
    return Trained("raw pixels (no training)", "nearest class mean", lambda images: images.reshape(len(images), -1),
                   squared_euclidean_logits, 0, 0, 0.0, lambda paths: folder_images(test, paths))


@torch.no_grad()
def test_accuracies(system: Trained, paths: list[str], episodes: list) -> np.ndarray:
    """Per-episode accuracy of `system` on `episodes` (indices into `paths`), every test image embedded once."""
    embeddings = torch.cat([system.embed(system.test_images(paths[i:i + 256])) for i in range(0, len(paths), 256)])
    accuracies = []
    for episode in episodes:
        logits = system.score(embeddings[episode.support], torch.as_tensor(episode.support_labels),
                              embeddings[episode.query])
        accuracies.append((logits.argmax(1).numpy() == episode.query_labels).mean())
    return np.array(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder with train/ and test/ class folders")
    parser.add_argument("--seconds", type=float, default=300.0, help="training wall time of each system")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each system")
    parser.add_argument("--episodes", type=int, default=600, help="5-way 1-shot test episodes")
    parser.add_argument("--systems", nargs="+", default=["easyfsl", "learn2learn", *OURS], choices=["easyfsl", "learn2learn", *OURS],
                        help="what to train, in this order (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = args.root.resolve()
    for part in ("train", "test"):
        if not (root / part).is_dir():
            raise SystemExit(f"{root} has no {part}/ folder of classes; expected {root}/train and {root}/test")

    test = image_folder(root / "test", None)
    paths = [Path(path).relative_to(test.root).as_posix() for path, _ in test.samples]
    episodes = EpisodeSampler(np.asarray(test.targets), WAYS, SHOTS, QUERIES, seed=0).episodes(np.arange(args.episodes))

    pixels = raw_pixels(root)
    results = [(pixels, confidence_interval(test_accuracies(pixels, paths, episodes)))]
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.systems:
            if name == "easyfsl":
                system = train_easyfsl(root, args.seconds)
            elif name == "learn2learn":
                system = train_learn2learn(root, args.seconds)
            else:
                system = train_ours(root, args.seconds, Path(scratch) / name, args.threads, OURS[name])
            interval = confidence_interval(test_accuracies(system, paths, episodes))
            results.append((system, interval))
            print(f"{system.name}: {system.steps} steps, {system.images} images in {system.seconds:.0f} s, "
                  f"{100 * interval.mean:.1f}% +- {100 * interval.half_width:.1f}%", flush=True)

    print(f"\n{root.name}: {len(test.classes)} novel classes, {args.episodes} seeded {WAYS}-way {SHOTS}-shot "
          f"{QUERIES}-query test episodes, Conv-4 at {IMAGE_SIZE}px, {args.seconds:.0f} s of training each, "
          f"{args.threads} thread(s), one system at a time")
    print("| system | training | steps | training images | images/s | 5-way 1-shot accuracy (95% CI) |")
    print("|---|---|---|---|---|---|")
    for system, interval in results:
        speed = "-" if not system.seconds else f"{system.images_per_second:.0f}"
        print(f"| {system.name} | {system.setup} | {system.steps} | {system.images} | {speed} | "
              f"{100 * interval.mean:.1f}% +- {100 * interval.half_width:.1f}% |")
    ours = [(s, i) for s, i in results if s.name.startswith("fewshot")]
    for mine, mine_interval in ours:
        for system, interval in results:
            if not system.name.startswith("fewshot"):
                speed = (f"{mine.images_per_second / system.images_per_second:.2f}x training images per second, "
                         if system.seconds else "")
                print(f"{mine.name} vs {system.name}: {speed}"
                      f"{100 * (mine_interval.mean - interval.mean):+.1f} accuracy points")

if __name__ == "__main__":
    main()
