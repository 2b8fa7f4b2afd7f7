"""The training command line: `python -m fewshot.train --ways 5 --shots 1` (argparse over `fewshot.training`).

`--config FILE` starts from a TOML file of the config's sections (`examples/omniglot-protonet.toml`) or a
run directory's config.json (to repeat a run); flags given on the command line override the file, and
flags left out keep the file's values (argparse's defaults never do: they are only shown in --help).
`--margin` and `--miner` are the command line's older spellings of `--loss-arg margin=...` and
`--loss-arg miner=...`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fewshot.cli.arguments import HelpFormatter, seed
from fewshot.cli.catalogue import DATASET_SCHEMES, PRECISIONS, SAMPLINGS, TRAIN_DEFAULTS, TRAIN_SPLITS, RegisteredName
from fewshot.cli.plugins import add_import_flag, parse_with_plugins, run_command


def build_parser(given_only: bool = False) -> argparse.ArgumentParser:
    """The argument parser; with `given_only` every default is left out, so the parsed namespace holds just
    the flags on the command line (how `--config` values survive the flags not given)."""
    defaults = TRAIN_DEFAULTS

    def keep(default: Any) -> Any:
        return argparse.SUPPRESS if given_only else default

    p = argparse.ArgumentParser(prog="python -m fewshot.train", description=__doc__.split("\n")[0].strip("`"),
                                formatter_class=HelpFormatter,
                                argument_default=argparse.SUPPRESS if given_only else None)
    p.add_argument("--config", metavar="FILE",
                   help="start from this TOML file of config sections, or a run directory's config.json (to repeat "
                        "the run); flags given here override it")
    episode = p.add_argument_group("episodes")
    episode.add_argument("--ways", type=int, default=keep(defaults.ways), help="classes per validation/test episode")
    episode.add_argument("--shots", type=int, default=keep(defaults.shots),
                         help="support images per class (train and test)")
    episode.add_argument("--queries", type=int, default=keep(defaults.queries),
                         help="query images per class in training episodes (default: 5, fewer when the train classes hold fewer images)")
    episode.add_argument("--train-ways", type=int, default=keep(defaults.train_ways),
                         help="classes per training episode, higher-way training being standard (default: 60, or all the train split's classes when it has fewer)")
    episode.add_argument("--eval-queries", type=int, default=keep(defaults.eval_queries),
                         help="query images per class in validation/test episodes (default: 15, fewer when the val / test classes hold fewer images)")
    sampling = episode.add_mutually_exclusive_group()
    sampling.add_argument("--sampling", choices=SAMPLINGS, default=keep(defaults.sampling),
                          help="training batches: episodes (--train-ways, --shots, --queries), balanced "
                               "(--batch-classes x --batch-images images, no queries: for the proxy and pair losses) "
                               "or meta-dataset (Meta-Dataset's variable-way, imbalanced-shot episodes); "
                               "validation and test always use --ways-way --shots-shot episodes")
    sampling.add_argument("--meta-dataset", dest="sampling", action="store_const", const="meta-dataset",
                          default=argparse.SUPPRESS,
                          help="shorthand for --sampling meta-dataset (as fewshot evaluate's --meta-dataset)")
    episode.add_argument("--max-ways", type=int, default=keep(defaults.max_ways),
                         help="with --sampling meta-dataset: the most ways per training episode (default 50, capped "
                              "by the train split's classes)")
    episode.add_argument("--batch-classes", type=int, default=keep(defaults.batch_classes),
                         help="classes per balanced training batch (P)")
    episode.add_argument("--batch-images", type=int, default=keep(defaults.batch_images),
                         help="images per class in a balanced training batch (M)")
    model = p.add_argument_group("model")
    model.add_argument("--learner", "--loss", dest="learner", choices=RegisteredName("learner"), default=keep(defaults.learner),
                       help="the loss (any registered learner)")
    model.add_argument("--loss-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                       help="an argument of the learner, repeatable (e.g. margin=0.3); see docs/extending.md")
    model.add_argument("--metric", "--distance", dest="metric", choices=RegisteredName("distance"), default=keep(None),
                       help="distance between embeddings (default: the learner's own)")
    model.add_argument("--metric-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                       help="an argument of the distance, repeatable (e.g. rank=3 for mahalanobis-lowrank)")
    model.add_argument("--backbone", choices=RegisteredName("backbone"), default=keep(defaults.backbone),
                       help="the embedding network (a registered backbone)")
    model.add_argument("--backbone-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                       help="an argument of the backbone, repeatable (e.g. hidden=32 for conv4)")
    model.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=keep(None),
                       help="L2-normalise embeddings (default: on for siamese and triplet, off for protonet)")
    model.add_argument("--margin", type=float, default=keep(None), help="shorthand for --loss-arg margin=VALUE")
    model.add_argument("--miner", choices=RegisteredName("miner"), default=keep(None),
                       help="shorthand for --loss-arg miner=NAME (triplet)")
    model.add_argument("--init", default=keep(None), metavar="CHECKPOINT",
                       help="start from this checkpoint's backbone (another run's last.pt or best.pt; its learner "
                            "parameters, e.g. proxies, are dropped): pretrain, then fine-tune")
    model.add_argument("--freeze-backbone", action="store_true",
                       help="train only the learner's parameters (proxies, a learned distance), the backbone fixed with "
                            "its batch norm in eval mode: a linear probe (needs --init, the backbone it starts from, or a "
                            "pretrained backbone such as tv-resnet18)")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=RegisteredName("dataset"), default=keep(defaults.dataset),
                      help="a registered dataset; folder: your own ImageFolder tree at --data-root")
    data.add_argument("--split", default=keep(None), help="split scheme: " + "; ".join(
        f"{name} {'/'.join(schemes)}" for name, schemes in sorted(DATASET_SCHEMES.items())) + " (first: default)")
    data.add_argument("--dataset-arg", action="append", default=keep([]), metavar="NAME=VALUE",
                      help="an argument of the dataset loader, repeatable (e.g. channels=3, split_seed=1)")
    data.add_argument("--min-images-per-class", type=int, default=keep(None), metavar="N",
                      help="leave out the classes of fewer than N images, in every split (shorthand for --dataset-arg "
                           "min_images=N; folder dataset): e.g. 6 for --shots 1 --queries 5 on a folder of 5 and 6 "
                           "images per class; the run lists them in OUTPUT/dropped_classes.json (default: keep every "
                           "class, and lower the queries to what the smallest class holds)")
    data.add_argument("--train-split", choices=TRAIN_SPLITS, default=keep(defaults.train_split),
                      help="classes to train on; trainval (train + val) keeps the final model instead of the best on val")
    data.add_argument("--image-size", type=int, default=keep(None),
                      help="image side in pixels (default: the dataset's)")
    data.add_argument("--augment", choices=RegisteredName("augmentation", sort=False), default=keep(defaults.augment),
                      help="training-image augmentation: affine = small random rotation, shear, scale and shift per image; "
                           "crop-flip-jitter = random resized crop, horizontal flip and colour jitter per image")
    data.add_argument("--data-root", default=keep(None),
                      help="data root (default: $FEWSHOT_DATA, then the user cache); "
                      "for --dataset folder, the image folder")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--episodes", type=int, default=keep(defaults.episodes), help="training episodes")
    opt.add_argument("--lr", type=float, default=keep(defaults.lr), help="Adam learning rate")
    opt.add_argument("--schedule", choices=RegisteredName("schedule", sort=False), default=keep(defaults.schedule),
                     help="learning-rate schedule: step (x --lr-gamma every --lr-step episodes), cosine (to zero over --episodes) or none")
    opt.add_argument("--lr-step", type=int, default=keep(defaults.lr_step), help="episodes between step decays")
    opt.add_argument("--lr-gamma", type=float, default=keep(defaults.lr_gamma), help="factor of each step decay")
    opt.add_argument("--weight-decay", type=float, default=keep(defaults.weight_decay), help="Adam weight decay")
    opt.add_argument("--seed", type=seed, default=keep(defaults.seed),
                     help="seed of the episodes, augmentation and initialisation: the same seed gives the same run")
    run = p.add_argument_group("run")
    run.add_argument("--val-every", type=int, default=keep(defaults.val_every),
                     help="training episodes between validations")
    run.add_argument("--val-episodes", type=int, default=keep(defaults.val_episodes), help="episodes per validation")
    run.add_argument("--test-episodes", type=int, default=keep(defaults.test_episodes),
                     help="episodes of the final test on novel classes")
    run.add_argument("--checkpoint-every", type=int, default=keep(defaults.checkpoint_every),
                     help="training episodes between last.pt saves")
    run.add_argument("--output", default=keep(None),
                     help="run directory (default: a new runs/<dataset>-<learner>-<ways>w<shots>s-<time>)")
    run.add_argument("--device", default=keep(defaults.device), help="cpu, cuda, cuda:N or auto")
    run.add_argument("--precision", choices=sorted(PRECISIONS), default=keep(defaults.precision),
                     help="bf16: run the backbone under bfloat16 autocast (weights, distances and losses stay float32)")
    run.add_argument("--threads", type=int, default=keep(None), help="torch CPU threads (default: torch's choice)")
    start = run.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    start.add_argument("--overwrite", action="store_true",
                       help="start over in a non-empty --output, deleting the run files there (checkpoints, log, reports)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--tensorboard", action="store_true",
                     help="also log the training loss and accuracy, learning rate and validation accuracy for "
                          "TensorBoard, in OUTPUT/tensorboard (needs: pip install tensorboard)")
    many = p.add_argument_group("many processes (torchrun; see docs/distributed.md)")
    many.add_argument("--episodes-per-step", type=int, default=keep(None),
                      help="episodes per optimiser step, their gradients averaged (spread over the processes; "
                           "gradient accumulation in one): a run on N processes equals a run on one with the same "
                           "value (default: one episode per process)")
    many.add_argument("--sync-batchnorm", action="store_true",
                      help="batch-norm statistics over all processes' episodes of a step (SyncBatchNorm; CUDA only)")
    many.add_argument("--dist-timeout", type=float, default=keep(defaults.dist_timeout),
                      help="seconds a process waits for the others before it fails (a rank that died)")
    add_import_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot train`: parse (plug-ins imported first), then train."""
    args = parse_with_plugins(build_parser(), argv)
    given = set(vars(build_parser(given_only=True).parse_args(argv)))
    return run_command("train", args, given)


if __name__ == "__main__":
    sys.exit(main())
