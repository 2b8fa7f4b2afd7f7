"""What a checkpoint of a run holds, and how a run continues from one.

`checkpoint_state` is the dict that `last.pt` and `best.pt` hold. `resume_state` reads `last.pt` back
and refuses settings that would change the run's numbers (the saved config is compared flat, with
every default filled in by `resolved_settings`, so runs saved by earlier versions resume).
`recorded_split` reads back the class split the run recorded (splits.json, else last.pt), which a resume
uses instead of the split the data would give now. `restarted` decides how a job that torchrun restarted goes on.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fewshot.data.datasets import DatasetSplits
from fewshot.data.identity import NEW_CLASSES_OPTION, RECORDED_SPLITS, split_record
from fewshot.learners import LEARNERS
from fewshot.model.checkpoint import load_checkpoint
from fewshot.model.network import ModelSpec
from fewshot.training.config import TrainConfig
from fewshot.training.settings import upgrade_settings

#: Resumable changes that keep the run going but not bit-exact (see `resume_state`).
NUMERIC_CHANGES = ("threads", "device")


def resolved_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A saved or current config as a flat dict with every default filled in: settings added since a
    run was saved take their defaults, `margin` / `miner` become learner arguments, and `metric` /
    `normalize` left to the learner are made explicit, so that two configs compare equal exactly when
    they train the same way."""
    merged = {**TrainConfig().to_dict(), **upgrade_settings(settings)}
    if merged["episodes_per_step"] is None:  # runs from before the setting, and single-process defaults
        merged["episodes_per_step"] = 1
    learner = LEARNERS.get(merged["learner"])
    if learner is not None:
        if merged["metric"] is None:
            merged["metric"] = learner.default_distance
        if merged["normalize"] is None:
            merged["normalize"] = bool(learner.normalize)
    return merged


def checkpoint_state(config: TrainConfig, spec: ModelSpec, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler, episode: int, best: dict[str, Any],
                     splits: DatasetSplits, train_seconds: float) -> dict[str, Any]:
    """What a checkpoint holds: the architecture, the (flat) config, every piece of training state,
    and the data the model was trained on."""
    record = split_record(splits)
    return {
        "train_seconds": train_seconds,
        "spec": spec.to_dict(),
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "episode": episode,
        "best": best,
        "dataset": splits.dataset,
        "split_scheme": splits.scheme,
        "dataset_args": dict(splits.options),
        "train_classes": list(splits.get(config.train_split).class_names),
        # The run's class split and each class's content fingerprint: evaluation reads the split back and
        # recognises a training class by its content under any name.
        "split_classes": record["classes"],
        "class_fingerprints": record["fingerprints"],
    }


def recorded_split(run_dir: Path) -> tuple[dict[str, Any], str] | None:
    """(record, where it was read) of the class split the run in `run_dir` recorded, in `split_record`'s
    form: splits.json, else last.pt; None for a run that recorded none (a name-only record for runs of
    earlier versions, whose files hold no fingerprints)."""
    path = run_dir / "splits.json"
    try:
        saved = json.loads(path.read_text())
        if all(isinstance(saved.get(name), list) for name in RECORDED_SPLITS):
            return ({"classes": {name: saved[name] for name in RECORDED_SPLITS},
                     "fingerprints": saved.get("fingerprints") or {}}, str(path))
    except (OSError, ValueError):
        pass  # missing or damaged: last.pt records the split too
    try:
        state = load_checkpoint(run_dir / "last.pt")
    except (FileNotFoundError, ValueError):
        return None  # resume_state reports the damaged checkpoint
    if "split_classes" not in state:
        return None
    return {"classes": state["split_classes"], "fingerprints": state.get("class_fingerprints") or {}}, \
        str(run_dir / "last.pt")


def _without_split_policy(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` without the new-classes policy among its dataset arguments: the policy changes no numbers
    (new classes are refused or left out, never trained on), so a resume may add it."""
    arguments = settings.get("dataset_args")
    if isinstance(arguments, dict) and NEW_CLASSES_OPTION in arguments:
        settings = {**settings, "dataset_args": {k: v for k, v in arguments.items() if k != NEW_CLASSES_OPTION}}
    return settings


def intact_checkpoint_hint(run_dir: Path) -> str:
    """What to do when last.pt cannot be read: resume from best.pt if that one is intact, else start over."""
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    try:
        episode = load_checkpoint(best)["episode"]
    except (FileNotFoundError, ValueError):
        return ("No intact checkpoint is left to resume from: start the run over with --overwrite, "
                "or choose another --output")
    return (f"To continue from {best} (episode {episode}), replace the damaged last.pt with it "
            f"(cp {best} {last}) and run with --resume again; or start the run over with --overwrite")


def resumable_changes(config: TrainConfig) -> list[str]:
    """The settings `config` may change from the saved run's without changing its numbers."""
    # A cosine schedule spans the run's length: a longer run would climb the lr back up from zero.
    resumable = [k for k in TrainConfig.RESUMABLE_CHANGES if not (k == "episodes" and config.schedule == "cosine")]
    # The other sampling's sizes are not used by this run, so they cannot change its numbers.
    unused = {"balanced": ["train_ways", "queries"],
              "meta-dataset": ["train_ways", "queries", "batch_classes", "batch_images"]}
    resumable += unused.get(config.sampling, ["batch_classes", "batch_images"])
    return resumable


def resume_state(run_dir: Path, config: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """The state in `run_dir`/last.pt and the config that continues it (`config` with the run's
    recorded `init_sha256` when it gives none); a ValueError when the settings would change the run."""
    try:
        state = load_checkpoint(run_dir / "last.pt")
    except ValueError as error:  # a damaged last.pt blocks the run: say how to get going again
        raise ValueError(f"{error}.\n{intact_checkpoint_hint(run_dir)}") from None
    if config.init is not None and config.init_sha256 is None:
        # The digest is the one recorded when the run started: resuming never reads the --init file again.
        config = replace(config, init_sha256=state["config"].get("init_sha256"))
    resumable = resumable_changes(config)
    saved = _without_split_policy(resolved_settings(state["config"]))
    now = _without_split_policy(resolved_settings(config.to_dict()))
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
    return state, config


def restarted(run_dir: Path, config: TrainConfig, resume: bool, overwrite: bool) -> tuple[bool, bool]:
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
        {k: v for k, v in resolved_settings(config.to_dict()).items() if k not in ignored}
    return resume, same
