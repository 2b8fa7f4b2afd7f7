"""Episodic training CLI: `python -m fewshot.train --ways 5 --shots 1`.

A run directory holds the resolved config, a JSONL metrics log, a PNG learning curve and the
checkpoints (`last.pt` to resume, `best.pt` chosen on validation classes). Episode i of a run is a
pure function of (seed, i), and every other piece of state is in `last.pt`, so a run killed at any
point and resumed with `--resume` gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from episodes.sampler import EpisodeSampler
from episodes.torch import EpisodeDataset
from fewshot.augment import AUGMENTATIONS, augment_episode, augment_generator
from fewshot.backbones import BACKBONES
from fewshot.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from fewshot.data.splits import SPLIT_SCHEMES, DatasetSplits, load_splits
from fewshot.data.store import ClassSplit, atomic_write
from fewshot.distances import DISTANCES
from fewshot.learners import LEARNERS
from fewshot.miners import MINERS
from fewshot.model import FewShotModel, ModelSpec

SCHEDULES = ("step", "cosine", "none")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as config.json and inside each checkpoint."""

    ways: int = 5
    shots: int = 1
    queries: int = 5
    train_ways: int = 60
    eval_queries: int = 15
    learner: str = "protonet"
    metric: str = "euclidean"
    backbone: str = "conv4"
    normalize: bool | None = None  # None: on for siamese and triplet (their margins assume unit norm)
    margin: float | None = None
    miner: str | None = None
    dataset: str = "omniglot"
    split: str | None = None
    train_split: str = "train"  # "trainval": train on train + val classes, keep the final model
    image_size: int | None = None
    augment: str = "none"  # "affine": a random small affine distortion of every training image
    episodes: int = 6000
    lr: float = 1e-3
    schedule: str = "step"
    lr_step: int = 1500
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    val_every: int = 500
    val_episodes: int = 200
    test_episodes: int = 1000
    checkpoint_every: int = 100
    seed: int = 0
    data_root: str | None = None
    output: str | None = None  # default: a new runs/<dataset>-<learner>-<ways>w<shots>s-<time> directory
    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"  # "bf16": backbone under bfloat16 autocast (2x faster on CPUs with AVX512-BF16 or AMX)

    # Settings that may change between a run and its resumption without changing its numbers.
    RESUMABLE_CHANGES = ("episodes", "output", "device", "data_root", "test_episodes", "threads")


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cpu` and `cuda[:N]` are taken as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r} asked for CUDA, but torch sees no CUDA device; use cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto")
    return torch.device(name)



def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The torch RNG a learner may use in episode `episode` (miners), a pure function of (seed, episode)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + episode)


def model_spec(config: TrainConfig, splits: DatasetSplits) -> ModelSpec:
    return ModelSpec(
        backbone=config.backbone,
        learner=config.learner,
        metric=config.metric,
        normalize=config.normalize if config.normalize is not None else config.learner in ("siamese", "triplet"),
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        margin=config.margin,
        miner=config.miner,
    )


def check_config(config: TrainConfig, splits: DatasetSplits) -> None:
    """Fail before training on settings the data cannot serve."""
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown --precision {config.precision!r}; expected one of {sorted(PRECISIONS)}")
    for name, value in (("ways", config.ways), ("shots", config.shots), ("queries", config.queries),
                        ("train_ways", config.train_ways), ("eval_queries", config.eval_queries), ("episodes", config.episodes),
                        ("val_every", config.val_every), ("checkpoint_every", config.checkpoint_every),
                        ("lr_step", config.lr_step)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    for name, value in (("val_episodes", config.val_episodes), ("test_episodes", config.test_episodes)):
        if value < 2:  # a confidence interval needs two episodes; the test episodes come after all the training
            raise ValueError(f"--{name.replace('_', '-')} must be at least 2 (for a confidence interval), got {value}")
    if config.train_split not in ("train", "trainval"):
        raise ValueError(f"unknown --train-split {config.train_split!r}; expected train or trainval")
    for split_name, ways in ((config.train_split, config.train_ways), ("val", config.ways), ("test", config.ways)):
        available = splits.get(split_name).num_classes
        if ways > available:
            flag = "--train-ways" if split_name == config.train_split else "--ways"
            raise ValueError(f"{flag} {ways} exceeds the {available} classes of the {splits.dataset} {splits.scheme} {split_name} split")
    # Validation samples its first episode only after --val-every training episodes: check it now.
    for split_name, queries, flag in ((config.train_split, config.queries, "--queries"), ("val", config.eval_queries, "--eval-queries"),
                                      ("test", config.eval_queries, "--eval-queries")):
        smallest = int(np.bincount(splits.get(split_name).labels).min())
        if config.shots + queries > smallest:
            raise ValueError(f"--shots {config.shots} + {flag} {queries} needs {config.shots + queries} images per class, but "
                             f"classes of the {splits.dataset} {splits.scheme} {split_name} split have as few as {smallest}")
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"unknown --augment {config.augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-episode learning-rate schedule."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.episodes)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def read_records(path: Path, up_to: int | None = None) -> list[dict[str, Any]]:
    """Records of a metrics log up to episode `up_to`; a torn last line (a crash mid-write) ends the log."""
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if up_to is None or record["episode"] <= up_to:
            records.append(record)
    return records


class MetricsLog:
    """Append-only JSONL log; on resume, records after the checkpoint's episode are dropped so the log
    reads exactly as if the run had never stopped."""

    def __init__(self, path: Path, resume_episode: int | None) -> None:
        self.path = path
        if resume_episode is None:
            path.write_text("")
        elif path.exists():
            kept = read_records(path, resume_episode)
            atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
        self.file = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def sync(self) -> None:
        """Make the log durable, so it covers at least what the next checkpoint covers."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)

    def close(self) -> None:
        self.file.close()


def plot_curve(records: list[dict[str, Any]], path: Path, config: TrainConfig) -> None:
    """Learning curve PNG: smoothed training loss and accuracy, validation accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    if not train:
        return
    episode = np.array([r["episode"] for r in train])
    window = max(1, len(train) // 100)
    kernel = np.ones(window) / window
    smooth = lambda key: np.convolve([r[key] for r in train], kernel, mode="valid")  # noqa: E731
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(episode[window - 1:], smooth("loss"))
    ax_loss.set(xlabel="episode", ylabel="training loss", yscale="log", title="loss")
    ax_acc.plot(episode[window - 1:], smooth("accuracy"), label=f"train ({config.train_ways}-way, query accuracy)")
    if val:
        ax_acc.errorbar([r["episode"] for r in val], [r["accuracy"] for r in val],
                        yerr=[r["ci95"] for r in val], fmt="o-", capsize=3,
                        label=f"validation ({config.ways}-way {config.shots}-shot, 95% CI)")
    ax_acc.set(xlabel="episode", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


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
        "train_classes": list(splits.get(config.train_split).class_names),
    }


def _resume_state(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    state = load_checkpoint(run_dir / "last.pt")
    saved = state["config"]
    # A cosine schedule spans the run's length: a longer run would climb the lr back up from zero.
    resumable = [k for k in TrainConfig.RESUMABLE_CHANGES if not (k == "episodes" and config.schedule == "cosine")]
    # A setting added after the run was saved had its default then.
    saved = {**asdict(TrainConfig()), **saved}
    changed = {k: (saved.get(k), v) for k, v in asdict(config).items() if k not in resumable and saved.get(k) != v}
    if changed:
        described = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume with settings that differ from the run in {run_dir} ({described}); "
                         "resume with the run's own settings, or start a new --output")
    return state


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, validate, keep the best checkpoint, then evaluate it on novel classes. Returns the final report."""
    from fewshot.evaluate import evaluate_checkpoint, report_json

    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if config.output is None:
        if resume:
            raise ValueError("--resume needs --output: the run directory to continue")
        config.output = f"runs/{config.dataset}-{config.learner}-{config.ways}w{config.shots}s-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.output)
    if not resume and (run_dir / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); pass --resume to continue it or choose another --output")
    splits = load_splits(config.dataset, config.split, config.data_root, config.image_size)
    config.split = splits.scheme
    config.image_size = splits.image_size
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
        print(f"run directory: {run_dir}", file=sys.stderr)
    bar = tqdm(range(start, config.episodes), initial=start, total=config.episodes, disable=not progress,
               desc=f"{config.learner} {config.train_ways}-way {config.shots}-shot", dynamic_ncols=True)
    # The episodes library's fast path: episodes drawn in chunks, images gathered a few episodes at a time.
    # Episode i is the same as sampler.episode(i), so drawing ahead changes nothing on resume.
    episode_stream = EpisodeDataset(sampler, train_split, start=start, rank=0, world_size=1)
    try:
        for index, episode in zip(bar, episode_stream):
            if stop["signal"] is not None:
                save("last.pt", index)
                raise KeyboardInterrupt(f"interrupted before episode {index}; state saved to {run_dir / 'last.pt'}")
            model.train()
            support_x, support_y, query_x, query_y = (t.to(device, non_blocking=True) for t in episode)
            support_x, query_x = augment_episode(config.augment, support_x, query_x, augment_generator(config.seed, index))
            output = model(support_x, support_y, query_x, query_y, generator=episode_generator(config.seed, index))
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
                result = evaluate_checkpoint_model(model, splits.val, config, device)
                record = {"kind": "val", "episode": done, "accuracy": result.mean, "ci95": result.half_width}
                log.write(record)
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
    report = evaluate_checkpoint(run_dir / "best.pt", dataset=config.dataset, split=config.split, eval_split="test",
                                 settings=[(config.ways, config.shots)], queries=config.eval_queries,
                                 episodes=config.test_episodes, seed=config.seed, data_root=config.data_root,
                                 device=str(device), splits=splits, progress=progress)
    report["train_seconds"] = float(load_checkpoint(run_dir / "last.pt").get("train_seconds", 0.0))
    atomic_write(run_dir / "test_report.json", lambda f: f.write(report_json(report)))
    return report


def evaluate_checkpoint_model(model: FewShotModel, split: ClassSplit, config: TrainConfig, device: torch.device):
    """Validation accuracy of the model being trained (fixed validation episodes, seed-derived)."""
    from fewshot.evaluate import evaluate_model
    from fewshot.metrics import confidence_interval

    accuracies = evaluate_model(model, split, config.ways, config.shots, config.eval_queries,
                                episodes=config.val_episodes, seed=config.seed + 1, device=device)
    return confidence_interval(accuracies, "normal")


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m fewshot.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    episode = p.add_argument_group("episodes")
    episode.add_argument("--ways", type=int, default=defaults.ways, help="classes per validation/test episode")
    episode.add_argument("--shots", type=int, default=defaults.shots, help="support images per class (train and test)")
    episode.add_argument("--queries", type=int, default=defaults.queries, help="query images per class in training episodes")
    episode.add_argument("--train-ways", type=int, default=defaults.train_ways, help="classes per training episode (higher-way training is standard)")
    episode.add_argument("--eval-queries", type=int, default=defaults.eval_queries, help="query images per class in validation/test episodes")
    model = p.add_argument_group("model")
    model.add_argument("--learner", choices=sorted(LEARNERS), default=defaults.learner)
    model.add_argument("--metric", choices=sorted(DISTANCES), default=defaults.metric, help="distance of the protonet learner")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default=defaults.backbone)
    model.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                       help="L2-normalise embeddings (default: on for siamese and triplet, off for protonet)")
    model.add_argument("--margin", type=float, default=None, help="margin of the siamese/triplet loss (learner default if unset)")
    model.add_argument("--miner", choices=sorted(MINERS), default=None, help="triplet miner (learner default if unset)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(SPLIT_SCHEMES), default=defaults.dataset)
    data.add_argument("--split", default=None, help="split scheme: omniglot vinyals (default) or lake; miniimagenet ravi")
    data.add_argument("--train-split", choices=("train", "trainval"), default=defaults.train_split,
                      help="classes to train on; trainval (train + val) keeps the final model instead of the best on val")
    data.add_argument("--image-size", type=int, default=None, help="image side in pixels (dataset default: 28 / 84)")
    data.add_argument("--augment", choices=AUGMENTATIONS, default=defaults.augment,
                      help="training-image augmentation: affine = small random rotation, shear, scale and shift per image")
    data.add_argument("--data-root", default=None, help="data root (default: $FEWSHOT_DATA, then the user cache)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--episodes", type=int, default=defaults.episodes, help="training episodes")
    opt.add_argument("--lr", type=float, default=defaults.lr)
    opt.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule)
    opt.add_argument("--lr-step", type=int, default=defaults.lr_step, help="episodes between step decays")
    opt.add_argument("--lr-gamma", type=float, default=defaults.lr_gamma)
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    opt.add_argument("--seed", type=int, default=defaults.seed)
    run = p.add_argument_group("run")
    run.add_argument("--val-every", type=int, default=defaults.val_every)
    run.add_argument("--val-episodes", type=int, default=defaults.val_episodes)
    run.add_argument("--test-episodes", type=int, default=defaults.test_episodes)
    run.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    run.add_argument("--output", default=None, help="run directory (default: a new runs/<dataset>-<learner>-<ways>w<shots>s-<time>)")
    run.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or auto")
    run.add_argument("--precision", choices=sorted(PRECISIONS), default=defaults.precision,
                     help="bf16: run the backbone under bfloat16 autocast (weights, distances and losses stay float32)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = _config_from_args(args)
    try:
        report = train(config, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt as stop:
        print(f"\n{stop}\nresume with: python -m fewshot.train ... --output {config.output} --resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLoss) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    row = report["results"][0]
    print(f"test ({report['eval_split']} classes, {row['episodes']} episodes): {row['ways']}-way {row['shots']}-shot "
          f"accuracy {100 * row['accuracy']:.2f}% +- {100 * row['ci95']:.2f}% (95% CI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
