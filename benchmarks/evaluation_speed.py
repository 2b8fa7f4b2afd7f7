"""Evaluation time, embed-once against embedding every episode afresh, in one run on this machine.

    FEWSHOT_DATA=/path/to/data python -m benchmarks.evaluation_speed [--episodes 1000] [--threads 2]

Times the report of `fewshot.evaluate A.pt --compare B.pt --ways 5 20 --shots 1 5 --episodes 1000`
(two Conv-4 protonet checkpoints on the Omniglot Vinyals test classes) both ways, checks that the
per-episode accuracies are identical, and times validation as training runs it (`--val-episodes 200`
5-way 1-shot 15-query episodes every `--val-every 500` training episodes) next to the training time
it interrupts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from episodes.sampler import EpisodeSampler
from episodes.torch import EpisodeDataset
from fewshot.model.checkpoint import save_checkpoint
from fewshot.data import load_splits, resolve_data_root
from fewshot.evaluation import evaluate_checkpoint, evaluate_model
from fewshot.model.network import FewShotModel, ModelSpec


def write_checkpoint(path: Path, seed: int, train_classes: list[str]) -> FewShotModel:
    """A checkpoint of a Conv-4 protonet initialised from `seed` (evaluation costs the same for any weights)."""
    torch.manual_seed(seed)
    model = FewShotModel(ModelSpec())
    save_checkpoint(path, {"spec": model.spec.to_dict(), "model": model.state_dict(), "dataset": "omniglot",
                           "split_scheme": "vinyals", "train_classes": train_classes, "config": {}})
    return model


def training_seconds_per_episode(splits, steps: int = 30) -> float:
    """Seconds per 60-way 1-shot 5-query Conv-4 training step (the default training episode)."""
    sampler = EpisodeSampler(splits.train.labels, 60, 1, 5, seed=0)
    torch.manual_seed(0)
    model = FewShotModel(ModelSpec())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    episodes = iter(EpisodeDataset(sampler, splits.train))
    for step in range(steps + 3):
        if step == 3:
            started = time.perf_counter()
        output = model(*next(episodes))
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_splits("omniglot", "vinyals", resolve_data_root(args.root))
    settings = [(w, s) for w in (5, 20) for s in (1, 5)]
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        a, b = Path(scratch, "a.pt"), Path(scratch, "b.pt")
        model = write_checkpoint(a, 0, splits.train.class_names)
        write_checkpoint(b, 1, splits.train.class_names)
        reports = {}
        for name, per_episode in (("embed once", False), ("every episode afresh", True)):
            started = time.perf_counter()
            reports[name] = evaluate_checkpoint(a, compare=b, ways_shots=settings, queries=15, episodes=args.episodes,
                                                seed=0, splits=splits, progress=False, per_episode=per_episode)
            rows[name] = time.perf_counter() - started
        identical = all(x["per_episode"] == y["per_episode"]
                        for x, y in zip(reports["embed once"]["results"], reports["every episode afresh"]["results"]))
        validation = {}
        for name, per_episode in (("embed once", False), ("every episode afresh", True)):
            started = time.perf_counter()
            evaluate_model(model, splits.val, 5, 1, 15, episodes=200, seed=1, per_episode=per_episode)
            validation[name] = time.perf_counter() - started
    step = training_seconds_per_episode(splits)
    between = 500 * step

    print(f"\nEvaluation report: 2 checkpoints x {len(settings)} settings x {args.episodes} episodes "
          f"(Omniglot test, {args.threads} threads); per-episode accuracies identical: {identical}")
    print("| path | seconds | images embedded per model | speed-up |")
    print("|---|---|---|---|")
    slow = rows["every episode afresh"]
    embedded = reports["embed once"]["embedding"]["images_embedded"][0]
    afresh = args.episodes * sum(w * (s + 15) for w, s in settings)
    print(f"| every episode afresh | {slow:.1f} | {afresh:,} | 1.00x |")
    print(f"| embed once | {rows['embed once']:.1f} | {embedded:,} | {slow / rows['embed once']:.1f}x |")
    print(f"\nValidation during training: 200 5-way 1-shot episodes every 500 training episodes "
          f"({between:.0f} s of 60-way 1-shot steps at {1000 * step:.0f} ms)")
    print("| path | validation seconds | share of training time |")
    print("|---|---|---|")
    for name in ("every episode afresh", "embed once"):
        print(f"| {name} | {validation[name]:.2f} | {100 * validation[name] / (between + validation[name]):.1f}% |")


if __name__ == "__main__":
    main()
