"""The training loop as library code: `train(config, splits=None)`.

A run trains on episodes or on class-balanced batches (`config.sampling`), from scratch or from
another run's backbone (`config.init`). A run directory holds the resolved config, the class splits,
a JSONL metrics log, a PNG learning curve and the checkpoints (`last.pt` to resume, `best.pt` chosen
on validation classes). Episode (or batch) i of a run is a pure function of (seed, i), and every other
piece of state is in `last.pt`, so a run killed at any point and resumed gives the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from episodes.torch import EpisodeDataset
from fewshot.data.datasets import DatasetSplits, load_splits
from fewshot.data.identity import apply_split_record
from fewshot.data.splits import ClassSplit
from fewshot.evaluation import evaluate_checkpoint, evaluate_model, report_json
from fewshot.evaluation.calibration import DEFAULT_FAR, calibrate_checkpoint
from fewshot.files import absolute_path, atomic_write
from fewshot.metrics.statistics import Interval, confidence_interval
from fewshot.model.checkpoint import (
    file_sha256,
    load_backbone_state,
    load_checkpoint,
    load_model_state,
)
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.runtime import (
    RankFailure,
    World,
    barrier,
    broadcast_from_main,
    init_from_environment,
    resolve_device,
)
from fewshot.training.config import (
    NonFiniteLoss,
    TrainConfig,
    check_processes,
    check_settings,
    describe_data_defaults,
)
from fewshot.training.passes import train_step, training_sampler
from fewshot.training.resume import (
    checkpoint_state,
    recorded_split,
    restarted,
    resume_state,
)
from fewshot.training.rundir import (
    DROPPED_CLASSES_FILE,
    RunLock,
    check_run_dir,
    writing,
)
from fewshot.training.runfiles import RunFiles, checkpoint_note
from fewshot.training.runlog import require_tensorboard
from fewshot.training.schedules import make_scheduler
from fewshot.training.settings import PRECISIONS
from fewshot.training.steps import StepBatchNorm, keep_freed_memory, make_optimizer

#: Validation classes the end-of-run verification calibration uses (all of them when there are fewer).
CALIBRATION_CLASSES = 200


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving its state; `signum` is the signal, `output` the
    run directory to resume."""

    def __init__(self, message: str, signum: int, output: str | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.output = output


# Signals that stop training cleanly: SIGINT (Ctrl-C) and SIGTERM (what SLURM, Kubernetes and torchrun send
# before a kill). The episode under way is finished, last.pt saved, then TrainingInterrupted is raised.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _checked_output_dir(output: str, resume: bool) -> Path:
    """The run directory `output`, refused early when it cannot serve."""
    run_dir = Path(output)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--output {run_dir} is a file, not a directory; name a new (or empty) directory for the run")
    if resume and not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(f"checkpoint {run_dir / 'last.pt'} does not exist: --resume continues the run whose "
                                "last.pt is in --output")
    return run_dir


def validation_interval(model: FewShotModel, split: ClassSplit, config: TrainConfig, device: torch.device,
                        progress: bool = False) -> Interval:
    """Validation accuracy of the model being trained (fixed validation episodes, seed-derived)."""
    accuracies = evaluate_model(model, split, config.ways, config.shots, config.eval_queries,
                                episodes=config.val_episodes, seed=config.seed + 1, device=device, progress=progress)
    return confidence_interval(accuracies, "normal")


def _init_state(config: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """The checkpoint named by `config.init` (weights-only), and `config` with its SHA-256 recorded."""
    try:
        state = load_checkpoint(config.init)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"--init: {error}") from None
    digest = file_sha256(config.init)
    if config.init_sha256 is not None and config.init_sha256 != digest:
        raise ValueError(f"--init {config.init} has SHA-256 {digest}, but the config records {config.init_sha256}: the "
                         "file changed since that config was written; initialise from the recorded file, or drop "
                         "init_sha256 to start from this one")
    return state, replace(config, init_sha256=digest)


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
    them the config's dataset is loaded by name. `config` is never changed: the run uses
    `config.resolve(splits, ...)`, which the run directory's config.json records. With `config.init`
    a new run starts from that checkpoint's backbone (checked and loaded before the run directory is
    touched). The output directory must be new or empty, unless `resume` (continue the run there) or
    `overwrite` (delete that run's files and start over). It is locked for the run's life (`RunInUse`
    for a second process). SIGINT and SIGTERM finish the step, save last.pt and raise
    `TrainingInterrupted`; a failed write raises `OutputError` with what is intact.

    Under torchrun (WORLD_SIZE > 1) every rank calls this: rank r trains on its shard of each step's
    `config.episodes_per_step` episodes under DistributedDataParallel, validation and the test
    evaluation are sharded, and rank 0 alone writes the run directory (docs/distributed.md). A job
    that torchrun restarts (`--max-restarts`) resumes from last.pt.
    """
    check_settings(config)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or start it over")
    if resume and config.output is None:
        raise ValueError("--resume needs --output: the run directory to continue")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    keep_freed_memory()  # every episode's large activations reuse the last episode's pages (no page faults)
    world, device = init_from_environment(resolve_device(config.device), config.dist_timeout)
    check_processes(config, world.size, device)
    if splits is None:
        data_root = None if config.data_root is None else str(absolute_path(config.data_root))
        splits = load_splits(config.dataset, config.split, data_root, config.image_size, **config.dataset_args)
    run = config.resolve(splits, world.size)
    if world.distributed:  # the default --output has a timestamp: every rank takes rank 0's
        run = replace(run, output=broadcast_from_main(_checked_output_dir(run.output, resume).as_posix()
                                                      if world.is_main else None, world, "agreeing on the run directory"))
    run_dir = _checked_output_dir(run.output, resume)
    # Rank 0 alone looks at the directory: the others must not see it half way through an --overwrite.
    resume, overwrite = broadcast_from_main(restarted(run_dir, run, resume, overwrite)
                                            if world.is_main else None, world, "checking the run directory")
    if resume:  # the run's recorded class split, never one re-derived from the data as it is now
        recorded = recorded_split(run_dir)
        if recorded is not None:
            kept = apply_split_record(splits, *recorded)
            if kept is not splits:
                splits, run = kept, replace(config.resolve(kept, world.size), output=run.output)
    spec = run.model_spec(splits)
    # Read before --overwrite may delete files: --init may name a checkpoint in the run directory itself.
    init_state = None
    if run.init is not None and not resume:
        init_state, run = _init_state(run)
    model = _build_model(run, spec, device, init_state)
    del init_state  # its tensors are not needed once loaded

    lock = RunLock(run_dir) if world.is_main else None
    refusal: BaseException | None = None
    if world.is_main:  # one process checks and creates the run directory; the others wait for its word
        try:
            if run.tensorboard:  # rank 0 alone writes the TensorBoard log
                require_tensorboard()
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
        return _train_locked(run, resume, progress and world.is_main, splits, spec, model, device, run_dir, world,
                             notes=describe_data_defaults(config, splits))
    finally:
        if lock is not None:
            lock.release()


def _calibrate(run_dir: Path, splits: DatasetSplits, seed: int, progress: bool) -> None:
    """The verification threshold, chosen on validation classes and stored in best.pt (before the test
    report, which records best.pt's sha256), so `fewshot.api.load(...).verify` needs no calibration later.
    At most CALIBRATION_CLASSES validation classes (seeded), so that the end of a run stays short."""
    calibration_split = splits.val
    if calibration_split.num_classes > CALIBRATION_CLASSES:
        chosen = np.random.default_rng(seed).permutation(calibration_split.num_classes)[:CALIBRATION_CLASSES]
        calibration_split = calibration_split.subset(np.sort(chosen))
    try:
        calibrate_checkpoint(run_dir / "best.pt", calibration_split, far=DEFAULT_FAR, progress=progress)
    except ValueError as error:  # the model and its checkpoints are fine; only verify() will calibrate later
        warnings.warn(f"could not calibrate the verification threshold of {run_dir / 'best.pt'}: {error}", stacklevel=2)


def _validation_step(done: int, best: dict[str, Any], model: FewShotModel, splits: DatasetSplits, config: TrainConfig,
                     device: torch.device, files: RunFiles, save: Callable[[str, int, dict[str, Any]], None],
                     say: Callable[[str], None] | None) -> dict[str, Any]:
    """Validate after episode `done`, log it, save best.pt when the model is the best so far, redraw the
    curve. Returns the best {"episode", "accuracy"} after this validation. Trained on the validation
    classes too (`--train-split trainval`), nothing is validated (an accuracy on training classes says
    nothing of novel ones) and best.pt is the model as it is now: the final model is kept."""
    if config.train_split != "train":
        # The protocol of Snell et al.'s final models: train + val for the schedule found on train.
        best = {"episode": done, "accuracy": best["accuracy"]}
        save("best.pt", done, best)
        files.plot(config)
        return best
    result = validation_interval(model, splits.val, config, device, progress=say is not None)
    files.write_log({"kind": "val", "episode": done, "accuracy": result.mean, "ci95": result.half_width})
    if result.mean > best["accuracy"]:
        best = {"episode": done, "accuracy": result.mean}
        save("best.pt", done, best)
    if say is not None:
        say(f"episode {done}: val {100 * result.mean:.2f} +- {100 * result.half_width:.2f}% "
            f"(best {100 * best['accuracy']:.2f}% at {best['episode']})")
    files.plot(config)
    return best


def _train_locked(config: TrainConfig, resume: bool, progress: bool, splits: DatasetSplits, spec: ModelSpec,
                  model: FewShotModel, device: torch.device, run_dir: Path, world: World,
                  notes: Sequence[str] = ()) -> dict[str, Any]:
    """`train` once the run directory is locked and checked (by rank 0)."""
    main = world.is_main
    # A frozen backbone's parameters are left out (the optimizer state of a full run is unchanged).
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                               weight_decay=config.weight_decay, device=device)
    scheduler = make_scheduler(optimizer, config.schedule, episodes=config.episodes, lr_step=config.lr_step,
                               lr_gamma=config.lr_gamma)
    start, best = 0, {"episode": None, "accuracy": -1.0}
    saved: dict[str, int] = {}
    seconds_before, started = 0.0, time.perf_counter()
    if resume:
        state, config = resume_state(run_dir, config)
        load_model_state(model, state, run_dir / "last.pt")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best = int(state["episode"]), dict(state["best"])
        seconds_before = float(state.get("train_seconds", 0.0))
        saved["last.pt"] = start
        if best["episode"] is not None and (run_dir / "best.pt").is_file():
            saved["best.pt"] = int(best["episode"])
        del state
    files = RunFiles(run_dir, main, saved, seconds_before, started)
    files.start(config, splits, start if resume else None)

    train_split = splits.get(config.train_split)
    sampler, description = training_sampler(config, train_split)
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

    def save(name: str, episode: int, best: dict[str, Any]) -> None:
        files.save(name, episode, model, optimizer, lambda seconds: checkpoint_state(
            config, spec, model, optimizer, scheduler, episode, best, splits, seconds))

    if progress:
        print(f"run directory: {run_dir}\n{splits.describe()}", file=sys.stderr)
        if config.train_split != "train":
            trained = splits.get(config.train_split)
            print(f"  training on {config.train_split}: {trained.num_classes} classes (train + val), {len(trained)} "
                  "images; no validation (its classes are training classes): best.pt is the final model",
                  file=sys.stderr)
        if world.distributed:
            print(f"{world.size} processes, {per_step} episodes per step ({local} per process)", file=sys.stderr)
    if main:  # printed with or without progress: what the run chose or continues from, that no flag said
        for line in notes:
            print(line, file=sys.stderr)
        if splits.dropped_classes is not None:
            counts = {name: len(classes) for name, classes in splits.dropped_classes["classes"].items()}
            print(f"min_images={splits.dropped_classes['min_images']}: left out {counts['train']} train, "
                  f"{counts['val']} val and {counts['test']} test classes of fewer images, listed in "
                  f"{run_dir / DROPPED_CLASSES_FILE}", file=sys.stderr)
        if config.init is not None:
            print(f"backbone initialised from {config.init} (sha256 {config.init_sha256})", file=sys.stderr)
        if resume:
            print(f"resuming from episode {start} of {config.episodes} ({run_dir / 'last.pt'})", file=sys.stderr)
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
                save("last.pt", first, best)
                signum = stop["signal"] or signal.SIGTERM  # another rank's signal: the ranks' sum names none
                raise TrainingInterrupted(f"{signal.Signals(signum).name} received: interrupted before episode {first}; "
                                          f"state saved to {run_dir / 'last.pt'}", signum, config.output)
            model.train()
            if config.freeze_backbone:
                model.backbone.eval()  # linear-probe style: batch-norm statistics stay those of the init
            optimizer.zero_grad(set_to_none=True)
            if batch_norm is not None:
                batch_norm.begin()
            totals, bad_loss, output = train_step(first, config, trainer, episode_stream, device, world,
                                                   stop["signal"], batch_norm, files.intact)
            if totals[4]:
                # Episodes are numbered from 1, as in metrics.jsonl; --resume refuses a changed --lr, so say what works.
                where = (f"is {bad_loss} at episode {first + 1}" if per_step == 1 else
                         f"is not finite in the step of episodes {first + 1} to {first + per_step}")
                raise NonFiniteLoss(f"loss {where}; stopped before that update. "
                                    f"{checkpoint_note(run_dir, saved)} Train again with a lower --lr (in another "
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
            files.write_log(record)
            bar.set_postfix(loss=f"{loss_value:.3f}", **({} if accuracy is None else {"acc": f"{accuracy:.3f}"}),
                            refresh=False)
            if _crossed(first, done, config.val_every) or done == config.episodes:
                best = _validation_step(done, best, model, splits, config, device, files, save,
                                        bar.write if progress else None)
            if _crossed(first, done, config.checkpoint_every) or done == config.episodes or _crossed(first, done, config.val_every):
                save("last.pt", done, best)
    except BaseException:
        files.close(failing=True)
        raise
    else:
        files.close(failing=False)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        bar.close()
    if stop["signal"] is not None:  # asked to stop during the last episode or its validation: last.pt is saved
        raise TrainingInterrupted(f"{signal.Signals(stop['signal']).name} received: stopped after the last episode, "
                                  f"before the test evaluation; state saved to {run_dir / 'last.pt'}", stop["signal"],
                                  config.output)
    files.plot(config)
    if main:
        _calibrate(run_dir, splits, config.seed, progress)
    barrier(world, "waiting for rank 0 to calibrate best.pt")  # the others read best.pt next
    report = evaluate_checkpoint(run_dir / "best.pt", eval_split="test", ways_shots=((config.ways, config.shots),),
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
