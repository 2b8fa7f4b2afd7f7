"""The episodic training loop as library code: `train(config, splits=None)`.

A run directory holds the resolved config, the class splits, a JSONL metrics log, a PNG learning
curve and the checkpoints (`last.pt` to resume, `best.pt` chosen on validation classes). Episode i
of a run is a pure function of (seed, i), and every other piece of state is in `last.pt`, so a run
killed at any point and resumed gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from episodes.sampler import EpisodeSampler
from episodes.torch import EpisodeDataset
from fewshot.augment import augment_episode, augment_generator
from fewshot.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from fewshot.data.base import DatasetSplits, load_splits
from fewshot.data.store import ClassSplit, absolute_path, atomic_write
from fewshot.devices import resolve_device
from fewshot.evaluation import evaluate_checkpoint, evaluate_model, report_json
from fewshot.metrics import Interval, confidence_interval
from fewshot.model import FewShotModel
from fewshot.training.config import (
    PRECISIONS,
    NonFiniteLoss,
    TrainConfig,
    check_config,
    make_scheduler,
    model_spec,
    resolved_settings,
)
from fewshot.training.runlog import MetricsLog, plot_curve, read_records


def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The torch RNG a learner may use in episode `episode` (miners), a pure function of (seed, episode)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + episode)


def _checkpoint_state(config, spec, model, optimizer, scheduler, episode, best, splits, train_seconds) -> dict[str, Any]:
    return {
        "train_seconds": train_seconds,
        "spec": spec.to_dict(),
        "config": asdict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "episode": episode,
        "best": best,
        "dataset": splits.dataset,
        "split_scheme": splits.scheme,
        "dataset_args": dict(splits.options),
        "train_classes": list(splits.get(config.train_split).class_names),
    }


def _resume_state(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    state = load_checkpoint(run_dir / "last.pt")
    # A cosine schedule spans the run's length: a longer run would climb the lr back up from zero.
    resumable = [k for k in TrainConfig.RESUMABLE_CHANGES if not (k == "episodes" and config.schedule == "cosine")]
    saved, now = resolved_settings(state["config"]), resolved_settings(asdict(config))
    changed = {k: (saved.get(k), v) for k, v in now.items() if k not in resumable and saved.get(k) != v}
    if changed:
        described = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume with settings that differ from the run in {run_dir} ({described}); "
                         "resume with the run's own settings, or start a new --output")
    return state


def validation_interval(model: FewShotModel, split: ClassSplit, config: TrainConfig, device: torch.device) -> Interval:
    """Validation accuracy of the model being trained (fixed validation episodes, seed-derived)."""
    accuracies = evaluate_model(model, split, config.ways, config.shots, config.eval_queries,
                                episodes=config.val_episodes, seed=config.seed + 1, device=device)
    return confidence_interval(accuracies, "normal")


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          splits: DatasetSplits | None = None) -> dict[str, Any]:
    """Train, validate, keep the best checkpoint, then evaluate it on novel classes. Returns the final report.

    `splits` are any class splits (e.g. `fewshot.data.from_folder(...)` or `from_arrays(...)`); without
    them the config's dataset is loaded by name.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if config.data_root is not None:
        config.data_root = str(absolute_path(config.data_root))
    if splits is None:
        splits = load_splits(config.dataset, config.split, config.data_root, config.image_size, **config.dataset_args)
    config.dataset, config.split, config.image_size = splits.dataset, splits.scheme, splits.image_size
    if config.output is None:
        if resume:
            raise ValueError("--resume needs --output: the run directory to continue")
        config.output = f"runs/{config.dataset}-{config.learner}-{config.ways}w{config.shots}s-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.output)
    if not resume and (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); pass --resume to continue it or choose another --output")
    check_config(config, splits)
    spec = model_spec(config, splits)

    torch.manual_seed(config.seed)
    model = FewShotModel(spec).to(device)
    model.compute_dtype = PRECISIONS[config.precision]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    start, best = 0, {"episode": None, "accuracy": -1.0}
    seconds_before, started = 0.0, time.perf_counter()  # wall time of training and validation, summed over resumes
    if resume:
        state = _resume_state(run_dir, config)
        load_model_state(model, state, run_dir / "last.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best = int(state["episode"]), dict(state["best"])
        seconds_before = float(state.get("train_seconds", 0.0))
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.json", lambda f: f.write(json.dumps(asdict(config), indent=2).encode()))
    record = {"dataset": splits.dataset, "scheme": splits.scheme, "options": splits.options, **splits.class_lists()}
    atomic_write(run_dir / "splits.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
    log = MetricsLog(run_dir / "metrics.jsonl", start if resume else None)

    train_split = splits.get(config.train_split)
    # Trained on val classes too, validation accuracy is no longer a fair guide: keep the final model
    # (the protocol of Snell et al.'s final models: train + val for the schedule found on train).
    select_on_val = config.train_split == "train"
    sampler = EpisodeSampler(train_split.labels, config.train_ways, config.shots, config.queries,
                             seed=config.seed, num_episodes=config.episodes)
    stop = {"signal": None}
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: stop.update(signal=signum))

    def save(name: str, episode: int) -> None:
        log.sync()
        seconds = seconds_before + time.perf_counter() - started
        save_checkpoint(run_dir / name, _checkpoint_state(config, spec, model, optimizer, scheduler, episode, best, splits, seconds))

    if progress:
        print(f"run directory: {run_dir}\n{splits.describe()}", file=sys.stderr)
    bar = tqdm(range(start, config.episodes), initial=start, total=config.episodes, disable=not progress,
               desc=f"{config.learner} {config.train_ways}-way {config.shots}-shot", dynamic_ncols=True)
    # The episodes library's fast path: episodes drawn in chunks, images gathered a few episodes at a time.
    # Episode i is the same as sampler.episode(i), so drawing ahead changes nothing on resume.
    episode_stream = EpisodeDataset(sampler, train_split, start=start, rank=0, world_size=1, with_classes=True)
    try:
        for index, episode in zip(bar, episode_stream):
            if stop["signal"] is not None:
                save("last.pt", index)
                raise KeyboardInterrupt(f"interrupted before episode {index}; state saved to {run_dir / 'last.pt'}")
            model.train()
            support_x, support_y, query_x, query_y, classes = (t.to(device, non_blocking=True) for t in episode)
            support_x, query_x = augment_episode(config.augment, support_x, query_x, augment_generator(config.seed, index))
            output = model(support_x, support_y, query_x, query_y, generator=episode_generator(config.seed, index),
                           classes=classes)
            if not torch.isfinite(output.loss):
                # Episodes are numbered from 1, as in metrics.jsonl; --resume refuses a changed --lr, so say what works.
                raise NonFiniteLoss(f"loss is {output.loss.item()} at episode {index + 1}; stopped before that update "
                                    f"(checkpoints so far are in {run_dir}). Train again with a lower --lr and another --output")
            optimizer.zero_grad(set_to_none=True)
            output.loss.backward()
            optimizer.step()
            scheduler.step()
            accuracy = (output.logits.argmax(1) == query_y).float().mean().item()
            log.write({"kind": "train", "episode": index + 1, "loss": output.loss.item(), "accuracy": accuracy,
                       "lr": optimizer.param_groups[0]["lr"]})
            bar.set_postfix(loss=f"{output.loss.item():.3f}", acc=f"{accuracy:.3f}", refresh=False)
            done = index + 1
            if done % config.val_every == 0 or done == config.episodes:
                result = validation_interval(model, splits.val, config, device)
                log.write({"kind": "val", "episode": done, "accuracy": result.mean, "ci95": result.half_width})
                if result.mean > best["accuracy"] or not select_on_val:
                    best = {"episode": done, "accuracy": result.mean}
                    save("best.pt", done)
                bar.write(f"episode {done}: val {100 * result.mean:.2f} +- {100 * result.half_width:.2f}% "
                          f"(best {100 * best['accuracy']:.2f}% at {best['episode']})")
                plot_curve(log.records(), run_dir / "curve.png", config)
            if done % config.checkpoint_every == 0 or done == config.episodes or done % config.val_every == 0:
                save("last.pt", done)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        log.close()
    plot_curve(read_records(run_dir / "metrics.jsonl"), run_dir / "curve.png", config)
    report = evaluate_checkpoint(run_dir / "best.pt", eval_split="test", settings=[(config.ways, config.shots)],
                                 queries=config.eval_queries, episodes=config.test_episodes, seed=config.seed,
                                 device=str(device), splits=splits, progress=progress)
    report["train_seconds"] = float(load_checkpoint(run_dir / "last.pt").get("train_seconds", 0.0))
    atomic_write(run_dir / "test_report.json", lambda f: f.write(report_json(report)))
    return report
