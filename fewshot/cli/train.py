"""The training command line: `python -m fewshot.train --ways 5 --shots 1` (argparse over `fewshot.training`).

`--config FILE` starts from a TOML file of the config's sections (`examples/omniglot-protonet.toml`) or a
run directory's config.json (to repeat a run); flags given on the command line override the file, and
flags left out keep the file's values (argparse's defaults never do: they are only shown in --help).
`--margin` and `--miner` are the command line's older spellings of `--loss-arg margin=...` and
`--loss-arg miner=...`.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from fewshot.backbones import BACKBONES
from fewshot.data import DATASETS
from fewshot.data.datasets import dataset_options
from fewshot.distances import DISTANCES
from fewshot.runtime import current_world, leave_process_group
from fewshot.learners import LEARNERS
from fewshot.learners.miners import MINERS
from fewshot.cli.arguments import seed
from fewshot.cli.errors import COMMAND_ERRORS, report_error, report_interrupt
from fewshot.training import (
    AUGMENTATIONS,
    PRECISIONS,
    SAMPLINGS,
    SCHEDULES,
    TrainConfig,
    TrainingInterrupted,
    train,
)
from fewshot.training.config import SETTING_SECTIONS, TRAIN_SPLITS

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
            config.dataset, options.get("dataset_arg", []), "--dataset-arg")},
    })


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


def build_parser(given_only: bool = False) -> argparse.ArgumentParser:
    """The argument parser; with `given_only` every default is left out, so the parsed namespace holds just
    the flags on the command line (how `--config` values survive the flags not given)."""
    defaults = TrainConfig()

    def keep(default: Any) -> Any:
        return argparse.SUPPRESS if given_only else default

    p = argparse.ArgumentParser(prog="python -m fewshot.train", description=__doc__.split("\n")[0].strip("`"),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                argument_default=argparse.SUPPRESS if given_only else None)
    p.add_argument("--config", metavar="FILE",
                   help="start from this TOML file of config sections, or a run directory's config.json (to repeat "
                        "the run); flags given here override it")
    episode = p.add_argument_group("episodes")
    episode.add_argument("--ways", type=int, default=keep(defaults.ways), help="classes per validation/test episode")
    episode.add_argument("--shots", type=int, default=keep(defaults.shots), help="support images per class (train and test)")
    episode.add_argument("--queries", type=int, default=keep(defaults.queries), help="query images per class in training episodes")
    episode.add_argument("--train-ways", type=int, default=keep(defaults.train_ways), help="classes per training episode (higher-way training is standard)")
    episode.add_argument("--eval-queries", type=int, default=keep(defaults.eval_queries), help="query images per class in validation/test episodes")
    episode.add_argument("--sampling", choices=SAMPLINGS, default=keep(defaults.sampling),
                         help="training batches: episodes (--train-ways, --shots, --queries) or balanced "
                              "(--batch-classes x --batch-images images, no queries: for the proxy and pair losses); "
                              "validation and test always use episodes")
    episode.add_argument("--batch-classes", type=int, default=keep(defaults.batch_classes),
                         help="classes per balanced training batch (P)")
    episode.add_argument("--batch-images", type=int, default=keep(defaults.batch_images),
                         help="images per class in a balanced training batch (M)")
    model = p.add_argument_group("model")
    model.add_argument("--learner", "--loss", dest="learner", choices=sorted(LEARNERS), default=keep(defaults.learner),
                       help="the loss (any registered learner)")
    model.add_argument("--loss-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                       help="an argument of the learner, repeatable (e.g. margin=0.3); see docs/extending.md")
    model.add_argument("--metric", "--distance", dest="metric", choices=sorted(DISTANCES), default=keep(None),
                       help="distance between embeddings (default: the learner's own)")
    model.add_argument("--metric-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                       help="an argument of the distance, repeatable (e.g. rank=3 for mahalanobis-lowrank)")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default=keep(defaults.backbone))
    model.add_argument("--backbone-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                       help="an argument of the backbone, repeatable (e.g. hidden=32 for conv4)")
    model.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=keep(None),
                       help="L2-normalise embeddings (default: on for siamese and triplet, off for protonet)")
    model.add_argument("--margin", type=float, default=keep(None), help="shorthand for --loss-arg margin=VALUE")
    model.add_argument("--miner", choices=sorted(MINERS), default=keep(None), help="shorthand for --loss-arg miner=NAME (triplet)")
    model.add_argument("--init", default=keep(None), metavar="CHECKPOINT",
                       help="start from this checkpoint's backbone (another run's last.pt or best.pt; its learner "
                            "parameters, e.g. proxies, are dropped): pretrain, then fine-tune")
    model.add_argument("--freeze-backbone", action="store_true",
                       help="train only the learner's parameters (proxies, a learned distance), the backbone fixed with "
                            "its batch norm in eval mode: a linear probe")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS), default=keep(defaults.dataset),
                      help="a registered dataset; folder: your own ImageFolder tree at --data-root")
    data.add_argument("--split", default=keep(None), help="split scheme: " + "; ".join(
        f"{name} {'/'.join(info.schemes)}" for name, info in sorted(DATASETS.items())) + " (first: default)")
    data.add_argument("--dataset-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                      help="an argument of the dataset loader, repeatable (e.g. channels=3, split_seed=1)")
    data.add_argument("--train-split", choices=TRAIN_SPLITS, default=keep(defaults.train_split),
                      help="classes to train on; trainval (train + val) keeps the final model instead of the best on val")
    data.add_argument("--image-size", type=int, default=keep(None), help="image side in pixels (default: the dataset's)")
    data.add_argument("--augment", choices=tuple(AUGMENTATIONS), default=keep(defaults.augment),
                      help="training-image augmentation: affine = small random rotation, shear, scale and shift per image; "
                           "crop-flip-jitter = random resized crop, horizontal flip and colour jitter per image")
    data.add_argument("--data-root", default=keep(None), help="data root (default: $FEWSHOT_DATA, then the user cache); "
                      "for --dataset folder, the image folder")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--episodes", type=int, default=keep(defaults.episodes), help="training episodes")
    opt.add_argument("--lr", type=float, default=keep(defaults.lr))
    opt.add_argument("--schedule", choices=tuple(SCHEDULES), default=keep(defaults.schedule))
    opt.add_argument("--lr-step", type=int, default=keep(defaults.lr_step), help="episodes between step decays")
    opt.add_argument("--lr-gamma", type=float, default=keep(defaults.lr_gamma))
    opt.add_argument("--weight-decay", type=float, default=keep(defaults.weight_decay))
    opt.add_argument("--seed", type=seed, default=keep(defaults.seed))
    run = p.add_argument_group("run")
    run.add_argument("--val-every", type=int, default=keep(defaults.val_every))
    run.add_argument("--val-episodes", type=int, default=keep(defaults.val_episodes))
    run.add_argument("--test-episodes", type=int, default=keep(defaults.test_episodes))
    run.add_argument("--checkpoint-every", type=int, default=keep(defaults.checkpoint_every))
    run.add_argument("--output", default=keep(None), help="run directory (default: a new runs/<dataset>-<learner>-<ways>w<shots>s-<time>)")
    run.add_argument("--device", default=keep(defaults.device), help="cpu, cuda, cuda:N or auto")
    run.add_argument("--precision", choices=sorted(PRECISIONS), default=keep(defaults.precision),
                     help="bf16: run the backbone under bfloat16 autocast (weights, distances and losses stay float32)")
    run.add_argument("--threads", type=int, default=keep(None), help="torch CPU threads (default: torch's choice)")
    start = run.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    start.add_argument("--overwrite", action="store_true",
                       help="start over in a non-empty --output, deleting the run files there (checkpoints, log, reports)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    many = p.add_argument_group("many processes (torchrun; see docs/distributed.md)")
    many.add_argument("--episodes-per-step", type=int, default=keep(None),
                      help="episodes per optimiser step, their gradients averaged (spread over the processes; "
                           "gradient accumulation in one): a run on N processes equals a run on one with the same "
                           "value (default: one episode per process)")
    many.add_argument("--sync-batchnorm", action="store_true",
                      help="batch-norm statistics over all processes' episodes of a step (SyncBatchNorm; CUDA only)")
    many.add_argument("--dist-timeout", type=float, default=keep(defaults.dist_timeout),
                      help="seconds a process waits for the others before it fails (a rank that died)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = set(vars(build_parser(given_only=True).parse_args(argv)))
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
