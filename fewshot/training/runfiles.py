"""What a training run writes to its directory: config.json, splits.json, the metrics log, the learning
curve and the checkpoints (`RunFiles`), and what it says about them when something fails.

Rank 0 alone writes; the other ranks keep the bookkeeping (which checkpoint holds which episode) with a
log that writes nothing (`NoLog`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewshot.data.datasets import DatasetSplits
from fewshot.data.identity import split_record
from fewshot.files import atomic_write
from fewshot.model.checkpoint import describe_names, non_finite_tensors, save_checkpoint
from fewshot.training.config import NonFiniteParameters, TrainConfig
from fewshot.training.rundir import (
    DROPPED_CLASSES_FILE,
    TENSORBOARD_DIR,
    describe_write_error,
    dropped_classes_record,
    writing,
)
from fewshot.training.runlog import MetricsLog, TensorBoardLog, plot_curve


class NoLog:
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


class RunFiles:
    """What a run writes to its directory (rank 0 only; the other ranks keep the bookkeeping), and what
    it says about them when something fails."""

    def __init__(self, run_dir: Path, main: bool, saved: dict[str, int], seconds_before: float, started: float) -> None:
        self.run_dir = run_dir
        self.main = main
        self.saved = saved  # episode of each checkpoint of this run on disk, for the failure messages
        self.seconds_before = seconds_before  # wall time of training and validation of earlier sessions
        self.started = started  # time.perf_counter() when this session's training began
        self.log: MetricsLog | NoLog = NoLog()
        self.board: TensorBoardLog | None = None  # the TensorBoard mirror of the log, when the run asks for one

    def intact(self) -> str:
        """Which checkpoints a failure leaves, and how to go on from them."""
        if "last.pt" in self.saved:
            return (f"{self.run_dir / 'last.pt'} (episode {self.saved['last.pt']}) is intact: fix the cause and "
                    "continue with --resume")
        return "no last.pt was written yet, so there is nothing to resume: fix the cause and start over with --overwrite"

    def start(self, config: TrainConfig, splits: DatasetSplits, resume_episode: int | None) -> None:
        """Open the metrics log (read and checked before anything is written, so a bad log leaves the run as
        it was), then write config.json and splits.json."""
        if not self.main:
            return
        with writing(self.run_dir / "metrics.jsonl", self.intact()):
            self.log = MetricsLog(self.run_dir / "metrics.jsonl", resume_episode)
        if config.tensorboard:
            board_dir = self.run_dir / TENSORBOARD_DIR
            with writing(board_dir, self.intact()):
                earlier = [] if resume_episode is None or board_dir.exists() else self.log.records()
                self.board = TensorBoardLog(board_dir, resume_episode)
                for record in earlier:  # a resumed run that turns the log on: its curves from the first episode
                    self.board.write(record)
        with writing(self.run_dir, self.intact()):
            atomic_write(self.run_dir / "config.json",
                         lambda f: f.write(json.dumps(config.to_dict(), indent=2).encode()))
            record = {"dataset": splits.dataset, "scheme": splits.scheme, "options": splits.options, **splits.class_lists()}
            if splits.fingerprints:  # what identifies each class: its content (fewshot.data.identity)
                record["fingerprints"] = split_record(splits)["fingerprints"]
            atomic_write(self.run_dir / "splits.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
            if splits.dropped_classes is not None:  # the classes min_images left out, never silently
                dropped = dropped_classes_record(splits)
                atomic_write(self.run_dir / DROPPED_CLASSES_FILE,
                             lambda f: f.write(json.dumps(dropped, indent=1).encode()))

    def write_log(self, record: dict[str, Any]) -> None:
        """Append `record` to metrics.jsonl (and to its TensorBoard mirror)."""
        with writing(self.log.path, self.intact()):
            self.log.write(record)
        if self.board is not None:
            with writing(self.run_dir / TENSORBOARD_DIR, self.intact()):
                self.board.write(record)

    def seconds(self) -> float:
        """Wall time of training and validation, summed over resumes."""
        return self.seconds_before + time.perf_counter() - self.started

    def save(self, name: str, episode: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             state: Callable[[float], dict[str, Any]]) -> None:
        """Write checkpoint `name` (`state(train_seconds)`) at `episode`, never with non-finite weights."""
        bad = [*non_finite_tensors(model.state_dict(), "model"), *non_finite_tensors(optimizer.state_dict(), "optimizer")]
        if bad:  # never replace a good checkpoint with one that can only score chance (every rank sees the same weights)
            raise NonFiniteParameters(f"after episode {episode} the weights hold NaN or inf ({describe_names(bad)}); "
                                      f"{name} was not written. {checkpoint_note(self.run_dir, self.saved)} Train "
                                      "again with a lower --lr (in another --output, or with --overwrite)")
        path = self.run_dir / name
        previous = f"the previous {name} (episode {self.saved[name]}) is unchanged; " if name in self.saved else ""
        if self.main:
            with writing(path, previous + self.intact()):
                self.log.sync()
                if self.board is not None:
                    self.board.sync()
                save_checkpoint(path, state(self.seconds()))
        self.saved[name] = episode

    def plot(self, config: TrainConfig) -> None:
        """The learning curve from the log (a view of metrics.jsonl: training goes on without it)."""
        if not self.main:
            return
        try:
            plot_curve(self.log.records(), self.run_dir / "curve.png", config)
        except OSError as error:
            warnings.warn(f"could not write the learning curve: {describe_write_error(error, self.run_dir / 'curve.png')}",
                          stacklevel=2)

    def close(self, failing: bool) -> None:
        """Close the logs; while an error is under way a failed flush must not mask it."""
        if failing:
            with contextlib.suppress(OSError):
                self.log.close()
            if self.board is not None:
                with contextlib.suppress(OSError):
                    self.board.close()
        else:
            with writing(self.log.path, self.intact()):
                self.log.close()
            if self.board is not None:
                with writing(self.run_dir / TENSORBOARD_DIR, self.intact()):
                    self.board.close()



def checkpoint_note(run_dir: Path, saved: dict[str, int]) -> str:
    """The checkpoints this run has on disk (only those that exist), for a message about stopping."""
    if not saved:
        return "No checkpoint was written yet."
    listed = ", ".join(f"{run_dir / name} (episode {episode})" for name, episode in sorted(saved.items(), reverse=True))
    return f"The checkpoints so far hold finite weights: {listed}."
