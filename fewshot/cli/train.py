"""The training command line: `python -m fewshot.train --ways 5 --shots 1` (argparse over `fewshot.training`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from fewshot.training.augment import AUGMENTATIONS
from fewshot.backbones import BACKBONES
from fewshot.data import DATASETS
from fewshot.data.datasets import dataset_options
from fewshot.distances import DISTANCES
from fewshot.runtime import RankFailure, current_world, leave_process_group
from fewshot.learners import LEARNERS
from fewshot.learners.miners import MINERS
from fewshot.training import (
    PRECISIONS,
    SAMPLINGS,
    SCHEDULES,
    NonFiniteLoss,
    OutputError,
    RunInUse,
    TrainConfig,
    TrainingInterrupted,
    train,
)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed arguments; `NAME=VALUE` arguments typed by the named component's signature."""
    names = {f.name for f in fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names and not k.endswith("_args")})
    config.learner_args = LEARNERS.parse_arguments(args.learner, args.loss_arg, "--loss-arg")
    metric = args.metric or LEARNERS[args.learner].default_distance
    config.metric_args = DISTANCES.parse_arguments(metric, args.metric_arg, "--metric-arg")
    config.backbone_args = BACKBONES.parse_arguments(args.backbone, args.backbone_arg, "--backbone-arg")
    config.dataset_args = dataset_options(args.dataset).parse_arguments(args.dataset, args.dataset_arg, "--dataset-arg")
    return config


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m fewshot.train", description=__doc__.split("\n")[0].strip("`"),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    episode = p.add_argument_group("episodes")
    episode.add_argument("--ways", type=int, default=defaults.ways, help="classes per validation/test episode")
    episode.add_argument("--shots", type=int, default=defaults.shots, help="support images per class (train and test)")
    episode.add_argument("--queries", type=int, default=defaults.queries, help="query images per class in training episodes")
    episode.add_argument("--train-ways", type=int, default=defaults.train_ways, help="classes per training episode (higher-way training is standard)")
    episode.add_argument("--eval-queries", type=int, default=defaults.eval_queries, help="query images per class in validation/test episodes")
    episode.add_argument("--sampling", choices=SAMPLINGS, default=defaults.sampling,
                         help="training batches: episodes (--train-ways, --shots, --queries) or balanced "
                              "(--batch-classes x --batch-images images, no queries: for the proxy and pair losses); "
                              "validation and test always use episodes")
    episode.add_argument("--batch-classes", type=int, default=defaults.batch_classes,
                         help="classes per balanced training batch (P)")
    episode.add_argument("--batch-images", type=int, default=defaults.batch_images,
                         help="images per class in a balanced training batch (M)")
    model = p.add_argument_group("model")
    model.add_argument("--learner", "--loss", dest="learner", choices=sorted(LEARNERS), default=defaults.learner,
                       help="the loss (any registered learner)")
    model.add_argument("--loss-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="an argument of the learner, repeatable (e.g. margin=0.3); see docs/extending.md")
    model.add_argument("--metric", "--distance", dest="metric", choices=sorted(DISTANCES), default=None,
                       help="distance between embeddings (default: the learner's own)")
    model.add_argument("--metric-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="an argument of the distance, repeatable (e.g. rank=3 for mahalanobis-lowrank)")
    model.add_argument("--backbone", choices=sorted(BACKBONES), default=defaults.backbone)
    model.add_argument("--backbone-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="an argument of the backbone, repeatable (e.g. hidden=32 for conv4)")
    model.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                       help="L2-normalise embeddings (default: on for siamese and triplet, off for protonet)")
    model.add_argument("--margin", type=float, default=None, help="shorthand for --loss-arg margin=VALUE")
    model.add_argument("--miner", choices=sorted(MINERS), default=None, help="shorthand for --loss-arg miner=NAME (triplet)")
    model.add_argument("--init", default=None, metavar="CHECKPOINT",
                       help="start from this checkpoint's backbone (another run's last.pt or best.pt; its learner "
                            "parameters, e.g. proxies, are dropped): pretrain, then fine-tune")
    model.add_argument("--freeze-backbone", action="store_true",
                       help="train only the learner's parameters (proxies, a learned distance), the backbone fixed with "
                            "its batch norm in eval mode: a linear probe")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS), default=defaults.dataset,
                      help="a registered dataset; folder: your own ImageFolder tree at --data-root")
    data.add_argument("--split", default=None, help="split scheme: " + "; ".join(
        f"{name} {'/'.join(info.schemes)}" for name, info in sorted(DATASETS.items())) + " (first: default)")
    data.add_argument("--dataset-arg", action="append", default=[], metavar="NAME=VALUE",
                      help="an argument of the dataset loader, repeatable (e.g. channels=3, split_seed=1)")
    data.add_argument("--train-split", choices=("train", "trainval"), default=defaults.train_split,
                      help="classes to train on; trainval (train + val) keeps the final model instead of the best on val")
    data.add_argument("--image-size", type=int, default=None, help="image side in pixels (default: the dataset's)")
    data.add_argument("--augment", choices=AUGMENTATIONS, default=defaults.augment,
                      help="training-image augmentation: affine = small random rotation, shear, scale and shift per image; "
                           "crop-flip-jitter = random resized crop, horizontal flip and colour jitter per image")
    data.add_argument("--data-root", default=None, help="data root (default: $FEWSHOT_DATA, then the user cache); "
                      "for --dataset folder, the image folder")
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
    start = run.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    start.add_argument("--overwrite", action="store_true",
                       help="start over in a non-empty --output, deleting the run files there (checkpoints, log, reports)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    many = p.add_argument_group("many processes (torchrun; see docs/distributed.md)")
    many.add_argument("--episodes-per-step", type=int, default=None,
                      help="episodes per optimiser step, their gradients averaged (spread over the processes; "
                           "gradient accumulation in one): a run on N processes equals a run on one with the same "
                           "value (default: one episode per process)")
    many.add_argument("--sync-batchnorm", action="store_true",
                      help="batch-norm statistics over all processes' episodes of a step (SyncBatchNorm; CUDA only)")
    many.add_argument("--dist-timeout", type=float, default=defaults.dist_timeout,
                      help="seconds a process waits for the others before it fails (a rank that died)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = None
    try:
        config = config_from_args(args)
        report = train(config, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
        is_main = current_world().is_main  # under torchrun, rank 0 alone prints the result
    except TrainingInterrupted as stop:  # SIGINT or SIGTERM: the state is saved, the run can go on
        print(f"\n{stop}\nresume with: python -m fewshot.train ... --output {config.output} --resume", file=sys.stderr)
        return 128 + stop.signum  # the shell's code for the signal (130, 143), as a scheduler expects
    except KeyboardInterrupt:  # before training started (loading data): nothing to save
        print("\ninterrupted before training started; nothing was saved", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLoss, OutputError, RunInUse) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RankFailure as error:  # another process of a torchrun job stopped; torchrun may restart the job
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        leave_process_group()
    if not is_main:
        return 0
    row = report["results"][0]
    print(f"test ({report['eval_split']} classes, {row['episodes']} episodes): {row['ways']}-way {row['shots']}-shot "
          f"accuracy {100 * row['accuracy']:.2f}% +- {100 * row['ci95']:.2f}% (95% CI)")
    return 0
