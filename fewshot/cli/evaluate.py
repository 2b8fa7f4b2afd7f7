"""The evaluation command line: `python -m fewshot.evaluate runs/proto/best.pt --ways 5 20 --shots 1 5`
(argparse over `fewshot.evaluation`): novel-class accuracy with 95% intervals, paired comparison,
verification and retrieval."""

from __future__ import annotations

import argparse
import sys

from fewshot.cli.arguments import HelpFormatter, seed
from fewshot.cli.catalogue import EVAL_SPLITS, RegisteredName
from fewshot.cli.plugins import add_import_flag, parse_with_plugins, run_command


class AddHead(argparse.Action):
    """`--head NAME`: one more test-time head, as [NAME, [its --head-arg pairs]] in `heads`."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object,
                 option: str | None = None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), [value, []]])


class AddHeadArgument(argparse.Action):
    """`--head-arg k=v`: an argument of the `--head` given before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: object,
                 option: str | None = None) -> None:
        heads = getattr(namespace, self.dest) or []
        if not heads:
            raise argparse.ArgumentError(self, f"{value!r} has no head to go to: --head-arg sets an argument of the "
                                               "--head NAME given before it")
        heads = [[name, list(pairs)] for name, pairs in heads]
        heads[-1][1].append(value)
        setattr(namespace, self.dest, heads)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.evaluate", description=__doc__.split("\n")[0].strip("`"),
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    p.add_argument("--dataset", choices=RegisteredName("dataset"), default=None, help="default: the checkpoint's")
    p.add_argument("--split", default=None, help="split scheme (default: the checkpoint's)")
    p.add_argument("--eval-split", choices=EVAL_SPLITS, default="test", help="which classes to evaluate on")
    p.add_argument("--ways", type=int, nargs="+", default=[5], help="classes per episode (several: one row each)")
    p.add_argument("--shots", type=int, nargs="+", default=[1],
                   help="support images per class (several: one row each)")
    p.add_argument("--queries", type=int, default=15,
                   help="query images per class (at most the smallest class's images minus the shots)")
    p.add_argument("--min-images-per-class", type=int, default=None, metavar="N",
                   help="evaluate on the classes of at least N images only (e.g. 16 for --shots 1 --queries 15 on a "
                        "folder whose classes differ in size); the report lists those left out")
    p.add_argument("--dirichlet-queries", type=float, default=None, metavar="ALPHA",
                   help="class-imbalanced query sets (Veilleux et al. 2021, who use ALPHA 2): each episode's "
                        "ways x --queries queries are split over its classes by Dirichlet(ALPHA) proportions, "
                        "redrawn until every class has the images; fair to transductive heads")
    p.add_argument("--episodes", type=int, default=1000, help="episodes per setting")
    p.add_argument("--seed", type=seed, default=0, help="episodes are a pure function of the seed")
    p.add_argument("--within-alphabet", action="store_true",
                   help="Lake's within-alphabet protocol: every episode's classes come from one alphabet (the first "
                        "part of the class names; rotated classes: rot000 only); use with --dataset omniglot --split "
                        "lake --ways 20 --shots 1 --queries 1")
    p.add_argument("--meta-dataset", action="store_true",
                   help="Meta-Dataset's variable-way, variable-shot, imbalanced episodes (its defaults: 5 to 50 ways, "
                        "at most 10 queries per class, support set up to 500); --ways, --shots, --queries are unused")
    p.add_argument("--max-ways", type=int, default=None,
                   help="with --meta-dataset: the most ways per episode (default 50, capped by the classes)")
    p.add_argument("--episode-list", default=None,
                   help="evaluate on a saved episode list (JSON, episodes.lists) instead of seeded episodes")
    p.add_argument("--save-episodes", default=None,
                   help="write the seeded episodes as episode lists PATH_<ways>way<shots>shot.json")
    p.add_argument("--data-root", default=None, help="data root (default: the checkpoint's, then $FEWSHOT_DATA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--compare", default=None, help="a second checkpoint, evaluated on identical episodes")
    p.add_argument("--head", dest="heads", action=AddHead, default=[], metavar="NAME",
                   choices=RegisteredName("head", sort=False),
                   help="a test-time classifier of the episodes, on the checkpoint's embeddings (docs/evaluation.md, "
                        "'Test-time heads'): %(choices)s. Repeatable: every head is scored on identical episodes "
                        "(each image embedded once), with its paired difference from 'prototype' (the learner's own "
                        "rule, always scored) and its time per 1,000 episodes; transductive heads are marked "
                        "(default: the learner's own rule only)")
    p.add_argument("--head-arg", dest="heads", action=AddHeadArgument, metavar="K=V",
                   help="an argument of the --head given before it (e.g. --head simpleshot --head-arg norm=L2N "
                        "--head logistic --head-arg C=0.5); repeatable")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="CHECKPOINT",
                   help="more checkpoints scored with the first as one ensemble (the sum of their log-softmax "
                        "prototype scores); the report's accuracy is the ensemble's")
    p.add_argument("--test-time-shift", type=int, default=0, metavar="K",
                   help="embed each image as the mean of itself and its copies shifted 1..K pixels left, right, up "
                        "and down (4K+1 views; 0: off), for every model evaluated; K below half the image side, so "
                        "that every view shows more image than background")
    p.add_argument("--test-time-rotations", action="store_true",
                   help="also score each episode in its four quarter turns and sum the scores (every "
                        "image of an episode turned alike; for models trained on rotated classes, as on Omniglot)")
    p.add_argument("--test-time-mirror", action="store_true",
                   help="also score the mirrored copies of the episode (for models trained with mirrors=true)")
    p.add_argument("--allow-seen-classes", action="store_true", help="evaluate even on classes seen in training")
    p.add_argument("--embedding-metrics", action="store_true",
                   help="also verification (ROC-AUC, EER, TAR@FAR), retrieval (Recall@1, R-precision, MAP@R) and "
                        "clustering (NMI, AMI of k-means)")
    p.add_argument("--report", default=None, help="JSON report path (default: beside the checkpoint)")
    p.add_argument("--plot", default=None, help="PNG plot path (default: beside the report)")
    p.add_argument("--per-episode", action="store_true",
                   help="embed every episode's images afresh instead of each image once (same numbers; for checks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_import_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot evaluate`: parse (plug-ins imported first), then evaluate."""
    args = parse_with_plugins(build_parser(), argv)
    return run_command("evaluate", args)


if __name__ == "__main__":
    sys.exit(main())
