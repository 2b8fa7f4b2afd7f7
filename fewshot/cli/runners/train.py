"""The work of `fewshot train` once its flags are parsed (`fewshot.cli.train`): the TrainConfig the flags
describe, the run, and its test line."""

from __future__ import annotations

import argparse
import math
from typing import Any

from fewshot.backbones import BACKBONES
from fewshot.cli.errors import COMMAND_ERRORS, report_error, report_interrupt
from fewshot.data.datasets import dataset_options
from fewshot.distances import DISTANCES
from fewshot.learners import LEARNERS
from fewshot.runtime import current_world, leave_process_group
from fewshot.training import TrainConfig, TrainingInterrupted, train
from fewshot.training.settings import SETTING_SECTIONS

#: Legacy flags -> the learner argument each sets.
LEGACY_LOSS_FLAGS = {"margin": "--margin", "miner": "--miner"}


def config_from_args(args: argparse.Namespace, given: set[str] | None = None) -> TrainConfig:
    """The TrainConfig of parsed arguments: the `--config` file's settings (or the defaults), overridden by
    the flags in `given` (dests; all of them when None); `NAME=VALUE` arguments typed by the named
    component's signature and merged over the file's."""
    options = vars(args)
    given = set(options) if given is None else given
    base = TrainConfig.from_file(args.config) if getattr(args, "config", None) else TrainConfig()
    flat = {key: value for key, value in options.items() if key in given and key in SETTING_SECTIONS}
    config = TrainConfig.from_dict({**base.to_dict(), **flat})
    loss_args = [*options.get("loss_arg", []), *_legacy_loss_args(options, given, config.learner)]
    dataset_args = [*options.get("dataset_arg", []), *_min_images_arg(options, given, config.dataset)]
    metric = config.metric or LEARNERS.get_or_raise(config.learner).default_distance
    return TrainConfig.from_dict({
        **config.to_dict(),
        "learner_args": {**config.learner_args, **LEARNERS.parse_arguments(config.learner, loss_args, "--loss-arg")},
        "metric_args": {**config.metric_args, **DISTANCES.parse_arguments(metric, options.get("metric_arg", []),
                                                                          "--metric-arg")},
        "backbone_args": {**config.backbone_args, **BACKBONES.parse_arguments(config.backbone,
                                                                              options.get("backbone_arg", []),
                                                                              "--backbone-arg")},
        "dataset_args": {**config.dataset_args, **dataset_options(config.dataset).parse_arguments(
            config.dataset, dataset_args, "--dataset-arg")},
    })


def _min_images_arg(options: dict[str, Any], given: set[str], dataset: str) -> list[str]:
    """`--min-images-per-class N` as the `--dataset-arg min_images=N` entry, refused for a dataset without that
    option and beside a `--dataset-arg min_images=...`."""
    value = options.get("min_images_per_class")
    if "min_images_per_class" not in given or value is None:
        return []
    if any(pair.partition("=")[0].strip() == "min_images" for pair in options.get("dataset_arg", [])):
        raise ValueError("--min-images-per-class and --dataset-arg min_images=... both set the classes' least image "
                         "count; give it once")
    if "min_images" not in dataset_options(dataset).parameters(dataset):
        raise ValueError(f"--min-images-per-class applies to datasets whose classes differ in size (the folder "
                         f"dataset); the {dataset} loader has no min_images option")
    return [f"min_images={value}"]


def _legacy_loss_args(options: dict[str, Any], given: set[str], learner: str) -> list[str]:
    """`--margin` / `--miner` as `--loss-arg` entries of `learner`, refused beside a `--loss-arg` of the same name."""
    entries = []
    for name, flag in LEGACY_LOSS_FLAGS.items():
        value = options.get(name)
        if name not in given or value is None:
            continue
        if any(pair.partition("=")[0].strip() == name for pair in options.get("loss_arg", [])):
            raise ValueError(f"{flag} and --loss-arg {name}=... both set the learner's {name}; give it once "
                             f"(--loss-arg {name}=VALUE)")
        if name == "margin" and not math.isfinite(value):
            raise ValueError(f"--margin must be a finite number, got {value!r}")
        if learner in LEARNERS and name not in LEARNERS.parameters(learner):
            raise ValueError(f"{flag} does not apply to the {learner} learner "
                             f"(its arguments: {LEARNERS.describe_parameters(learner)})")
        entries.append(f"{name}={value!r}" if name == "margin" else f"{name}={value}")
    return entries


def run(args: argparse.Namespace, given: set[str]) -> int:
    """Train as the parsed flags say (`given`: the dests given on the command line); returns the exit code."""
    config = None
    try:
        config = config_from_args(args, given)
        report = train(config, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
        is_main = current_world().is_main  # under torchrun, rank 0 alone prints the result
    except TrainingInterrupted as stop:  # SIGINT or SIGTERM: the state is saved, the run can go on
        return report_interrupt(stop, f"resume with: python -m fewshot.train ... --output {stop.output} --resume")
    except KeyboardInterrupt as stop:  # before training started (loading data): nothing to save
        return report_interrupt(stop)
    except COMMAND_ERRORS as error:
        return report_error(error)
    finally:
        leave_process_group()
    if not is_main:
        return 0
    row = report["results"][0]
    print(f"test ({report['eval_split']} classes, {row['episodes']} episodes): {row['ways']}-way {row['shots']}-shot "
          f"accuracy {100 * row['accuracy']:.2f}% +- {100 * row['ci95']:.2f}% (95% CI)")
    return 0
