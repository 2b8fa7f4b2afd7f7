"""The training loop as library code: `train(config, splits=None)`.

A run trains on episodes or on class-balanced batches (`config.sampling`), from scratch or from
another run's backbone (`config.init`). A run directory holds the resolved config, the class splits,
a JSONL metrics log, a PNG learning curve and the checkpoints (`last.pt` to resume, `best.pt` chosen
on validation classes). Episode (or batch) i of a run is a pure function of (seed, i), and every other
piece of state is in `last.pt`, so a run killed at any point and resumed gives the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from episodes.batches import ClassBalancedSampler
from episodes.sampler import EpisodeSampler
from episodes.torch import EpisodeDataset
from fewshot.inference.classifier import calibrate_checkpoint
from fewshot.training.augment import augment_episode, augment_generator
from fewshot.model.checkpoint import (
    describe_names,
    file_sha256,
    load_backbone_state,
    load_checkpoint,
    load_model_state,
    non_finite_tensors,
    save_checkpoint,
)
from fewshot.data.datasets import DatasetSplits, load_splits
from fewshot.data.splits import ClassSplit
from fewshot.files import absolute_path, atomic_write
from fewshot.runtime import resolve_device
from fewshot.runtime import (
    RankFailure,
    World,
    all_reduce_sum,
    barrier,
    broadcast_from_main,
    collective_device,
    init_from_environment,
)
from fewshot.evaluation import evaluate_checkpoint, evaluate_model, report_json
from fewshot.metrics.statistics import Interval, confidence_interval
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.training.config import (
    PRECISIONS,
    NonFiniteLoss,
    NonFiniteParameters,
    TrainConfig,
    check_config,
    check_settings,
    make_scheduler,
    model_spec,
    resolved_settings,
)
from fewshot.training.rundir import RunLock, check_run_dir, describe_write_error, writing
from fewshot.training.runlog import MetricsLog, plot_curve
from fewshot.training.steps import StepBatchNorm
from fewshot.evaluation.calibration import DEFAULT_FAR


#: Validation classes the end-of-run verification calibration uses (all of them when there are fewer).
CALIBRATION_CLASSES = 200


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


def _intact_checkpoint_hint(run_dir: Path) -> str:
    """What to do when last.pt cannot be read: resume from best.pt if that one is intact, else start over."""
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    try:
        episode = load_checkpoint(best)["episode"]
    except (FileNotFoundError, ValueError):
        return ("No intact checkpoint is left to resume from: start the run over with --overwrite, "
                "or choose another --output")
    return (f"To continue from {best} (episode {episode}), replace the damaged last.pt with it "
            f"(cp {best} {last}) and run with --resume again; or start the run over with --overwrite")


def _resume_state(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    try:
        state = load_checkpoint(run_dir / "last.pt")
    except ValueError as error:  # a damaged last.pt blocks the run: say how to get going again
        raise ValueError(f"{error}.\n{_intact_checkpoint_hint(run_dir)}") from None
    # A cosine schedule spans the run's length: a longer run would climb the lr back up from zero.
    resumable = [k for k in TrainConfig.RESUMABLE_CHANGES if not (k == "episodes" and config.schedule == "cosine")]
    # The other sampling's sizes are not used by this run, so they cannot change its numbers.
    resumable += ["train_ways", "queries"] if config.sampling == "balanced" else ["batch_classes", "batch_images"]
    if config.init is not None and config.init_sha256 is None:
        # The digest is the one recorded when the run started: resuming never reads the --init file again.
        config.init_sha256 = state["config"].get("init_sha256")
    saved, now = resolved_settings(state["config"]), resolved_settings(asdict(config))
    changed = {k: (saved.get(k), v) for k, v in now.items() if k not in resumable and saved.get(k) != v}
    if changed:
        described = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume with settings that differ from the run in {run_dir} ({described}); "
                         "resume with the run's own settings, or start a new --output")
    # Allowed, so a run can move to another machine, but no longer bit-exact: another thread count or
    # device sums in another order (visible in bf16 within a few hundred steps).
    numeric = {k: (saved.get(k), now[k]) for k in NUMERIC_CHANGES if saved.get(k) != now[k]}
    if numeric:
        described = ", ".join(f"--{k.replace('_', '-')} {b!r} (the run used {a!r})" for k, (a, b) in numeric.items())
        print(f"warning: resuming with {described}: the numbers will differ from an uninterrupted run's, as "
              "another thread count or device adds floating-point terms in another order", file=sys.stderr)
    return state


#: Resumable changes that keep the run going but not bit-exact (see `_resume_state`).
NUMERIC_CHANGES = ("threads", "device")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving its state; `signum` is the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# Signals that stop training cleanly: SIGINT (Ctrl-C) and SIGTERM (what SLURM, Kubernetes and torchrun send
# before a kill). The episode under way is finished, last.pt saved, then TrainingInterrupted is raised.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _output_dir(config: TrainConfig, resume: bool) -> Path:
    """The run directory (a new timestamped one without --output), refused early when it cannot serve."""
    if config.output is None:
        if resume:
            raise ValueError("--resume needs --output: the run directory to continue")
        config.output = f"runs/{config.dataset}-{config.learner}-{config.ways}w{config.shots}s-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.output)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--output {run_dir} is a file, not a directory; name a new (or empty) directory for the run")
    if resume and not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(f"checkpoint {run_dir / 'last.pt'} does not exist: --resume continues the run whose "
                                "last.pt is in --output")
    return run_dir


def validation_interval(model: FewShotModel, split: ClassSplit, config: TrainConfig, device: torch.device) -> Interval:
    """Validation accuracy of the model being trained (fixed validation episodes, seed-derived)."""
    accuracies = evaluate_model(model, split, config.ways, config.shots, config.eval_queries,
                                episodes=config.val_episodes, seed=config.seed + 1, device=device)
    return confidence_interval(accuracies, "normal")


def _init_state(config: TrainConfig) -> dict[str, Any]:
    """The checkpoint named by `config.init` (weights-only), its SHA-256 recorded in the config."""
    try:
        state = load_checkpoint(config.init)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"--init: {error}") from None
    digest = file_sha256(config.init)
    if config.init_sha256 is not None and config.init_sha256 != digest:
        raise ValueError(f"--init {config.init} has SHA-256 {digest}, but the config records {config.init_sha256}: the "
                         "file changed since that config was written; initialise from the recorded file, or drop "
                         "init_sha256 to start from this one")
    config.init_sha256 = digest
    return state


def _build_model(config: TrainConfig, spec: ModelSpec, device: torch.device,
                 init_state: dict[str, Any] | None) -> FewShotModel:
    """The model a run starts from: seeded initialisation, the --init backbone, the --freeze-backbone
    switch (refused when it would leave nothing to train)."""
    torch.manual_seed(config.seed)
    model = FewShotModel(spec)
    if init_state is not None:
        load_backbone_state(model, init_state, config.init)
    if config.freeze_backbone:
        model.backbone.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"--freeze-backbone leaves nothing to train: the {spec.learner} learner with the "
                             f"{spec.metric} distance has no parameters of its own; use a loss with class proxies "
                             "(e.g. --learner cosface) or a learned distance (e.g. --metric mahalanobis-diag)")
    if config.sync_batchnorm:
        # Same parameter and buffer names as BatchNorm2d, so checkpoints load into the plain model.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    model.compute_dtype = PRECISIONS[config.precision]
    return model


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          splits: DatasetSplits | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train, validate, keep the best checkpoint, then evaluate it on novel classes. Returns the final report.

    `splits` are any class splits (e.g. `fewshot.data.from_folder(...)` or `from_arrays(...)`); without
    them the config's dataset is loaded by name. With `config.init` a new run starts from that
    checkpoint's backbone (checked and loaded before the run directory is touched). The output
    directory must be new or empty, unless `resume` (continue the run there) or `overwrite` (delete
    that run's files and start over). It is locked for the run's life (`RunInUse` for a second
    process). SIGINT and SIGTERM finish the step, save last.pt and raise `TrainingInterrupted`; a
    failed write raises `OutputError` with what is intact.

    Under torchrun (WORLD_SIZE > 1) every rank calls this: rank r trains on its shard of each step's
    `config.episodes_per_step` episodes under DistributedDataParallel, validation and the test
    evaluation are sharded, and rank 0 alone writes the run directory (docs/distributed.md). A job
    that torchrun restarts (`--max-restarts`) resumes from last.pt.
    """
    check_settings(config)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or start it over")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    world, device = init_from_environment(resolve_device(config.device), config.dist_timeout)
    check_world(config, world, device)
    if config.data_root is not None:
        config.data_root = str(absolute_path(config.data_root))
    if config.init is not None:
        config.init = str(absolute_path(config.init))
    if splits is None:
        splits = load_splits(config.dataset, config.split, config.data_root, config.image_size, **config.dataset_args)
    config.dataset, config.split, config.image_size = splits.dataset, splits.scheme, splits.image_size
    if world.distributed:  # the default --output has a timestamp: every rank takes rank 0's
        config.output = broadcast_from_main(_output_dir(config, resume).as_posix() if world.is_main else None, world,
                                            "agreeing on the run directory")
    run_dir = _output_dir(config, resume)
    # Rank 0 alone looks at the directory: the others must not see it half way through an --overwrite.
    resume, overwrite = broadcast_from_main(_restarted(run_dir, config, resume, overwrite)
                                            if world.is_main else None, world, "checking the run directory")
    check_config(config, splits)
    spec = model_spec(config, splits)
    # Read before --overwrite may delete files: --init may name a checkpoint in the run directory itself.
    init_state = _init_state(config) if config.init is not None and not resume else None
    model = _build_model(config, spec, device, init_state)
    del init_state  # its tensors are not needed once loaded

    lock = RunLock(run_dir) if world.is_main else None
    refusal: BaseException | None = None
    if world.is_main:  # one process checks and creates the run directory; the others wait for its word
        try:
            if not overwrite:  # refused before anything is created (deleting for --overwrite waits for the lock)
                check_run_dir(run_dir, resume, overwrite=False)
            with writing(run_dir, "choose an --output where you can write"):
                run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # rank 0 only: `lock` is None elsewhere
            # Checked again under the lock: another process may have started a run here since the check above.
            check_run_dir(run_dir, resume, overwrite)
        except BaseException as error:
            refusal = error
            lock.release()
    word = broadcast_from_main(None if refusal is None else f"{type(refusal).__name__}: {refusal}", world,
                               "checking the run directory")
    if refusal is not None:
        raise refusal
    if word is not None:
        raise RankFailure(f"rank 0 refused the run: {word}")
    try:
        return _train_locked(config, resume, progress and world.is_main, splits, spec, model, device, run_dir, world)
    finally:
        if lock is not None:
            lock.release()


def check_world(config: TrainConfig, world: World, device: torch.device) -> None:
    """Resolve `episodes_per_step` (default: one episode per process) and refuse what the job cannot run."""
    if config.episodes_per_step is None:
        config.episodes_per_step = world.size
    per_step = config.episodes_per_step
    if isinstance(per_step, bool) or not isinstance(per_step, int) or per_step < 1:
        raise ValueError(f"--episodes-per-step must be a positive int, got {per_step!r}")
    if per_step % world.size:
        raise ValueError(f"--episodes-per-step {per_step} must be a multiple of the {world.size} processes, so that "
                         "every process trains on the same number of episodes per step")
    if config.episodes % per_step:
        raise ValueError(f"--episodes {config.episodes} must be a multiple of --episodes-per-step {per_step}")
    if config.sync_batchnorm and device.type != "cuda":
        raise ValueError("--sync-batchnorm needs CUDA devices: torch's SyncBatchNorm runs on GPUs only (on CPU "
                         "each process's batch norm sees its own episodes, which is what an episode-level "
                         "batch norm does anyway)")


def _restarted(run_dir: Path, config: TrainConfig, resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) for this process; a job that torchrun restarted (`--max-restarts`) continues
    from last.pt, or, when its failed attempt wrote none, starts over in files that attempt wrote (its
    config.json is this run's); anything else in the directory is refused as usual."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if restart in ("", "0") or resume or overwrite:
        return resume, overwrite
    if (run_dir / "last.pt").is_file():
        print(f"restart {restart} of this torchrun job: resuming from {run_dir / 'last.pt'}", file=sys.stderr)
        return True, False
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return resume, overwrite
    ignored = {*TrainConfig.RESUMABLE_CHANGES, "init_sha256"}
    same = {k: v for k, v in resolved_settings(saved).items() if k not in ignored} == \
        {k: v for k, v in resolved_settings(asdict(config)).items() if k not in ignored}
    return resume, same


class _NoLog:
    """The metrics log of a rank other than 0: rank 0 alone writes the run directory."""

    path = Path(os.devnull)

    def write(self, record: dict[str, Any]) -> None:
        pass

    def sync(self) -> None:
        pass

    def records(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


def _train_locked(config: TrainConfig, resume: bool, progress: bool, splits: DatasetSplits, spec: Any,
                  model: FewShotModel, device: torch.device, run_dir: Path, world: World) -> dict[str, Any]:
    """`train` once the run directory is locked and checked (by rank 0)."""
    main = world.is_main
    # A frozen backbone's parameters are left out (the optimizer state of a full run is unchanged).
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config)
    start, best = 0, {"episode": None, "accuracy": -1.0}
    saved: dict[str, int] = {}  # episode of each checkpoint of this run on disk, for the failure messages
    seconds_before, started = 0.0, time.perf_counter()  # wall time of training and validation, summed over resumes
    if resume:
        state = _resume_state(run_dir, config)
        load_model_state(model, state, run_dir / "last.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best = int(state["episode"]), dict(state["best"])
        seconds_before = float(state.get("train_seconds", 0.0))
        saved["last.pt"] = start
        if best["episode"] is not None and (run_dir / "best.pt").is_file():
            saved["best.pt"] = int(best["episode"])
        del state

    def intact() -> str:
        """Which checkpoints a failure leaves, and how to go on from them."""
        if "last.pt" in saved:
            return (f"{run_dir / 'last.pt'} (episode {saved['last.pt']}) is intact: fix the cause and continue "
                    "with --resume")
        return "no last.pt was written yet, so there is nothing to resume: fix the cause and start over with --overwrite"

    # The log is read (and checked) before anything is written, so a bad log leaves the run as it was.
    log: MetricsLog | _NoLog = _NoLog()
    if main:
        with writing(run_dir / "metrics.jsonl", intact()):
            log = MetricsLog(run_dir / "metrics.jsonl", start if resume else None)
        with writing(run_dir, intact()):
            atomic_write(run_dir / "config.json", lambda f: f.write(json.dumps(asdict(config), indent=2).encode()))
            record = {"dataset": splits.dataset, "scheme": splits.scheme, "options": splits.options, **splits.class_lists()}
            atomic_write(run_dir / "splits.json", lambda f: f.write(json.dumps(record, indent=1).encode()))

    train_split = splits.get(config.train_split)
    # Trained on val classes too, validation accuracy is no longer a fair guide: keep the final model
    # (the protocol of Snell et al.'s final models: train + val for the schedule found on train).
    select_on_val = config.train_split == "train"
    if config.sampling == "balanced":  # P x M batches without queries (a P-way M-shot 0-query draw)
        sampler = ClassBalancedSampler(train_split.labels, config.batch_classes, config.batch_images,
                                       seed=config.seed, num_batches=config.episodes)
        description = f"{config.learner} {config.batch_classes} classes x {config.batch_images} images"
    else:
        sampler = EpisodeSampler(train_split.labels, config.train_ways, config.shots, config.queries,
                                 seed=config.seed, num_episodes=config.episodes)
        description = f"{config.learner} {config.train_ways}-way {config.shots}-shot"
    per_step = config.episodes_per_step
    local = per_step // world.size  # episodes each rank trains on per step
    if start % per_step:
        raise ValueError(f"{run_dir / 'last.pt'} is at episode {start}, which is not a step boundary of "
                         f"--episodes-per-step {per_step}")
    stop: dict[str, int | None] = {"signal": None}
    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():  # Python runs signal handlers in the main thread only
        for signum in STOP_SIGNALS:
            previous_handlers[signum] = signal.signal(signum, lambda signum, frame: stop.update(signal=signum))

    def save(name: str, episode: int) -> None:
        bad = [*non_finite_tensors(model.state_dict(), "model"), *non_finite_tensors(optimizer.state_dict(), "optimizer")]
        if bad:  # never replace a good checkpoint with one that can only score chance (every rank sees the same weights)
            raise NonFiniteParameters(f"after episode {episode} the weights hold NaN or inf ({describe_names(bad)}); "
                                      f"{name} was not written. {_checkpoint_note(run_dir, saved)} Train again with a "
                                      "lower --lr (in another --output, or with --overwrite)")
        path = run_dir / name
        previous = f"the previous {name} (episode {saved[name]}) is unchanged; " if name in saved else ""
        if main:
            with writing(path, previous + intact()):
                log.sync()
                seconds = seconds_before + time.perf_counter() - started
                save_checkpoint(path, _checkpoint_state(config, spec, model, optimizer, scheduler, episode, best, splits,
                                                        seconds))
        saved[name] = episode

    def plot() -> None:
        if not main:
            return
        try:
            plot_curve(log.records(), run_dir / "curve.png", config)
        except OSError as error:  # the curve is a view of metrics.jsonl: training goes on without it
            warnings.warn(f"could not write the learning curve: {describe_write_error(error, run_dir / 'curve.png')}",
                          stacklevel=2)

    if progress:
        print(f"run directory: {run_dir}\n{splits.describe()}", file=sys.stderr)
        if world.distributed:
            print(f"{world.size} processes, {per_step} episodes per step ({local} per process)", file=sys.stderr)
    bar = tqdm(range(start, config.episodes, per_step), initial=start // per_step, total=config.episodes // per_step,
               disable=not progress, desc=description, dynamic_ncols=True)
    # The episodes library's fast path: episodes drawn in chunks, images gathered a few episodes at a time.
    # Rank r's k-th episode is episode start + r + k * size, so the `local` episodes it takes in step s are
    # start + s * per_step + r + size * j: the ranks' shards of a step are disjoint and together the
    # single-process step. Episode i is sampler.episode(i), so drawing ahead changes nothing on resume.
    episode_stream = iter(EpisodeDataset(sampler, train_split, start=start, rank=world.rank, world_size=world.size,
                                         with_classes=True))
    trainer = (DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       forward_sync_buffers=False)  # batch-norm statistics: StepBatchNorm
               if world.distributed else model)
    batch_norm = StepBatchNorm(model) if per_step > 1 else None
    agreed_stop = 0  # a stop signal any rank received, as of the last step's all-reduce
    try:
        for first in bar:
            requested = agreed_stop if world.distributed else stop["signal"]
            if requested:
                save("last.pt", first)
                signum = stop["signal"] or signal.SIGTERM  # another rank's signal: the ranks' sum names none
                raise TrainingInterrupted(f"{signal.Signals(signum).name} received: interrupted before episode {first}; "
                                          f"state saved to {run_dir / 'last.pt'}", signum)
            model.train()
            if config.freeze_backbone:
                model.backbone.eval()  # linear-probe style: batch-norm statistics stay those of the init
            optimizer.zero_grad(set_to_none=True)
            if batch_norm is not None:
                batch_norm.begin()
            # Loss sum, accuracy sum, accuracy count, stop signal, non-finite losses, then one slot per episode of
            # the step holding its number (from 1): summed over the ranks, each slot is filled exactly once.
            totals = torch.zeros(5 + per_step, dtype=torch.float64)
            bad_loss = float("nan")
            try:
                for j in range(local):
                    index = first + world.rank + world.size * j  # the global episode number
                    totals[5 + index - first] += index + 1
                    episode = next(episode_stream)
                    support_x, support_y, query_x, query_y, classes = (t.to(device, non_blocking=True) for t in episode)
                    support_x, query_x = augment_episode(config.augment, support_x, query_x,
                                                         augment_generator(config.seed, index))
                    # DDP all-reduces the gradients in the backward of the step's last local episode only.
                    sync = contextlib.nullcontext() if j == local - 1 or not world.distributed else trainer.no_sync()
                    with sync:
                        output = trainer(support_x, support_y, query_x, query_y,
                                         generator=episode_generator(config.seed, index), classes=classes)
                        loss = output.loss
                        if not torch.isfinite(loss):
                            totals[4] += 1
                            bad_loss = loss.item()
                            if not world.distributed:
                                break
                        (loss / local if local > 1 else loss).backward()
                    if batch_norm is not None:
                        batch_norm.after_episode()
                    totals[0] += loss.item()
                    if len(query_y):
                        totals[1] += (output.logits.argmax(1) == query_y).float().mean().item()
                        totals[2] += 1
                totals[3] = stop["signal"] or 0
                if world.distributed:
                    totals = all_reduce_sum(totals.to(collective_device()), world, f"the step at episode {first + 1}").cpu()
            except (RuntimeError, torch.distributed.DistError) as error:
                if not world.distributed or not _is_collective_error(error):
                    raise
                raise RankFailure(f"rank {world.rank} of {world.size}: another rank stopped during the step at episode "
                                  f"{first + 1} ({str(error).splitlines()[0] if str(error) else type(error).__name__}). "
                                  f"{intact()}; torchrun --max-restarts restarts the job from it") from error
            if totals[4]:
                # Episodes are numbered from 1, as in metrics.jsonl; --resume refuses a changed --lr, so say what works.
                where = (f"is {bad_loss} at episode {first + 1}" if per_step == 1 else
                         f"is not finite in the step of episodes {first + 1} to {first + per_step}")
                raise NonFiniteLoss(f"loss {where}; stopped before that update. "
                                    f"{_checkpoint_note(run_dir, saved)} Train again with a lower --lr (in another "
                                    "--output, or with --overwrite)")
            agreed_stop = int(totals[3])
            if batch_norm is not None:
                batch_norm.finish(per_step, world)
            optimizer.step()
            for _ in range(per_step):  # the schedule counts episodes (--lr-step), whatever the step size
                scheduler.step()
            # Balanced batches have no queries, so no training accuracy (logged as null; validation has one).
            loss_value = float(totals[0] / per_step) if per_step > 1 else output.loss.item()
            accuracy = float(totals[1] / totals[2]) if totals[2] else None
            done = first + per_step
            record = {"kind": "train", "episode": done, "loss": loss_value, "accuracy": accuracy,
                      "lr": optimizer.param_groups[0]["lr"]}
            if per_step > 1:  # the episodes this step trained on, as the ranks reported them
                record["episodes"] = [int(n) for n in totals[5:].tolist()]
            with writing(log.path, intact()):
                log.write(record)
            bar.set_postfix(loss=f"{loss_value:.3f}", **({} if accuracy is None else {"acc": f"{accuracy:.3f}"}),
                            refresh=False)
            if _crossed(first, done, config.val_every) or done == config.episodes:
                result = validation_interval(model, splits.val, config, device)
                with writing(log.path, intact()):
                    log.write({"kind": "val", "episode": done, "accuracy": result.mean, "ci95": result.half_width})
                if result.mean > best["accuracy"] or not select_on_val:
                    best = {"episode": done, "accuracy": result.mean}
                    save("best.pt", done)
                if progress:
                    bar.write(f"episode {done}: val {100 * result.mean:.2f} +- {100 * result.half_width:.2f}% "
                              f"(best {100 * best['accuracy']:.2f}% at {best['episode']})")
                plot()
            if _crossed(first, done, config.checkpoint_every) or done == config.episodes or _crossed(first, done, config.val_every):
                save("last.pt", done)
    except BaseException:
        with contextlib.suppress(OSError):  # the error under way says what failed; a failed flush must not mask it
            log.close()
        raise
    else:
        with writing(log.path, intact()):
            log.close()
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        bar.close()
    if stop["signal"] is not None:  # asked to stop during the last episode or its validation: last.pt is saved
        raise TrainingInterrupted(f"{signal.Signals(stop['signal']).name} received: stopped after the last episode, "
                                  f"before the test evaluation; state saved to {run_dir / 'last.pt'}", stop["signal"])
    plot()
    # The verification threshold, chosen on validation classes now and stored in best.pt (before the test
    # report, which records best.pt's sha256), so `fewshot.api.load(...).verify` needs no calibration later.
    # At most CALIBRATION_CLASSES validation classes (seeded), so that the end of a run stays short.
    if main:
        calibration_split = splits.val
        if calibration_split.num_classes > CALIBRATION_CLASSES:
            chosen = np.random.default_rng(config.seed).permutation(calibration_split.num_classes)[:CALIBRATION_CLASSES]
            calibration_split = calibration_split.subset(np.sort(chosen))
        try:
            calibrate_checkpoint(run_dir / "best.pt", calibration_split, far=DEFAULT_FAR)
        except ValueError as error:  # the model and its checkpoints are fine; only verify() will calibrate later
            warnings.warn(f"could not calibrate the verification threshold of {run_dir / 'best.pt'}: {error}", stacklevel=2)
    barrier(world, "waiting for rank 0 to calibrate best.pt")  # the others read best.pt next
    report = evaluate_checkpoint(run_dir / "best.pt", eval_split="test", settings=[(config.ways, config.shots)],
                                 queries=config.eval_queries, episodes=config.test_episodes, seed=config.seed,
                                 device=str(device), splits=splits, progress=progress)
    report["train_seconds"] = float(load_checkpoint(run_dir / "last.pt").get("train_seconds", 0.0))
    if main:
        with writing(run_dir / "test_report.json", "the checkpoints are intact: evaluate best.pt with python -m "
                                                   "fewshot.evaluate and a --report path where there is room"):
            atomic_write(run_dir / "test_report.json", lambda f: f.write(report_json(report)))
    return report


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a step from episode `before` to `after` passed a multiple of `every` (exactly `after % every == 0`
    for single-episode steps)."""
    return after // every > before // every


def _is_collective_error(error: BaseException) -> bool:
    """A failed collective (a peer gone, a timeout), as gloo and nccl report it."""
    if isinstance(error, (RankFailure, torch.distributed.DistError)):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def _checkpoint_note(run_dir: Path, saved: dict[str, int]) -> str:
    """The checkpoints this run has on disk (only those that exist), for a message about stopping."""
    if not saved:
        return "No checkpoint was written yet."
    listed = ", ".join(f"{run_dir / name} (episode {episode})" for name, episode in sorted(saved.items(), reverse=True))
    return f"The checkpoints so far hold finite weights: {listed}."
