"""Zero-shot learning on a GBU benchmark: train on the seen classes, report ZSL top-1 and GZSL u / s / H.

`python -m fewshot.zeroshot --dataset CUB --method ale` trains an attribute encoder on the seen classes and
prints ZSL top-1, GZSL u / s / H (plain and calibrated) and zero- / few-shot episode accuracies, with a JSON
report (argparse over `fewshot.zeroshot.pipeline`).

Features come from `res101.mat` beside `att_splits.mat` (or `--features`).
"""

from __future__ import annotations

import argparse
import sys

from fewshot.cli.arguments import HelpFormatter, seed
from fewshot.cli.catalogue import (ATTRIBUTE_KEYS, FEATURE_NORMS, GBU_DATASETS, SCORES, ZEROSHOT_DEFAULTS,
                                   RegisteredName)
from fewshot.cli.plugins import add_import_flag, parse_with_plugins, run_command


def _number_or(choices: tuple[str, ...]):
    def parse(text: str) -> str | float:
        if text in choices:
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected one of {choices} or a number, got {text!r}") from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.zeroshot", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True,
                   help=f"a GBU benchmark ({', '.join(GBU_DATASETS)}) or the name of a folder in the same format")
    p.add_argument("--data-root", default=None,
                   help="data root holding zsl/gbu/<DATASET>/ (or <DATASET>/, or the folder itself); "
                        "default $FEWSHOT_DATA")
    p.add_argument("--features", default=None, help="res101.mat to use (default: beside att_splits.mat)")
    p.add_argument("--attributes", choices=ATTRIBUTE_KEYS, default="att",
                   help="class attribute vectors: att or original_att")
    p.add_argument("--method", choices=RegisteredName("zero-shot method", sort=False), default="ale",
                   help="the zero-shot method")
    p.add_argument("--encoder", choices=RegisteredName("zero-shot encoder", sort=False), default="linear",
                   help="feature encoder")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="encoder argument, e.g. hidden=512 for mlp (repeatable)")
    p.add_argument("--score", choices=SCORES, default=None, help="default: the method's")
    p.add_argument("--scale", type=float, default=None,
                   help="logit scale (default: 16 for cosine, 1 for dot, the Gaussian temperature for sqeuclidean)")
    p.add_argument("--margin", type=float, default=None, help="hinge margin (default: the method's)")
    defaults = ZEROSHOT_DEFAULTS
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="training batch size")
    p.add_argument("--lr", type=float, default=defaults.lr, help="learning rate")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="weight decay")
    p.add_argument("--eszsl-gamma", type=float, default=defaults.eszsl_gamma, help="used when not --tune")
    p.add_argument("--eszsl-lambda", type=float, default=defaults.eszsl_lambda, help="used when not --tune")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="choose ESZSL's regularisers on the validation folds (default: on for eszsl)")
    p.add_argument("--feature-norm", choices=FEATURE_NORMS, default=defaults.feature_norm,
                   help="feature normalisation: l2 or none")
    p.add_argument("--calibration", type=_number_or(("validation", "none")), default="validation",
                   help="calibrated stacking: chosen on validation classes, none, or a value")
    p.add_argument("--fusion-weight", type=_number_or(("validation",)), default="validation",
                   help="attribute weight of K >= 1 episode prototypes: chosen on validation classes, or in [0, 1]")
    p.add_argument("--folds", type=int, default=None, help="validation folds to use (default: all)")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1, 5], help="K of the episodes (0: attributes only)")
    p.add_argument("--ways", type=int, default=5, help="classes per evaluation episode")
    p.add_argument("--queries", type=int, default=15, help="queries per class")
    p.add_argument("--episodes", type=int, default=600, help="test episodes")
    p.add_argument("--validation-episodes", type=int, default=200, help="validation episodes")
    p.add_argument("--seed", type=seed, default=0, help="training, validation splits and episodes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--output", default=None,
                   help="JSON report (default: runs/zeroshot/<dataset>-<method>-<time>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_import_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot.zeroshot`."""
    args = parse_with_plugins(build_parser(), argv)
    args.argv = None if argv is None else ["python", "-m", "fewshot.zeroshot", *argv]
    return run_command("zeroshot", args)


if __name__ == "__main__":
    sys.exit(main())
