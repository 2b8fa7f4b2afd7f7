"""Zero-shot learning on a GBU benchmark: train on the seen classes, report ZSL top-1 and GZSL u / s / H.

`python -m fewshot.zeroshot --dataset CUB --method ale` trains an attribute encoder on the seen classes and
prints ZSL top-1, GZSL u / s / H (plain and calibrated) and zero- / few-shot episode accuracies, with a JSON
report (argparse over `fewshot.zeroshot.pipeline`).

Features come from `res101.mat` beside `att_splits.mat` (or `--features`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fewshot.cli.arguments import seed
from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.files import atomic_write, check_writable
from fewshot.zeroshot.encoders import ENCODERS
from fewshot.zeroshot.gbu import ATTRIBUTE_KEYS, GBU_DATASETS, load_gbu
from fewshot.zeroshot.methods import FEATURE_NORMS, METHODS, SCORES, ZeroShotConfig
from fewshot.zeroshot.pipeline import evaluate_zero_shot, format_report

#: Where reports go without --output.
DEFAULT_REPORT_FOLDER = Path("runs/zeroshot")


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
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True,
                   help=f"a GBU benchmark ({', '.join(GBU_DATASETS)}) or the name of a folder in the same format")
    p.add_argument("--data-root", default=None,
                   help="data root holding zsl/gbu/<DATASET>/ (or <DATASET>/, or the folder itself); "
                        "default $FEWSHOT_DATA")
    p.add_argument("--features", default=None, help="res101.mat to use (default: beside att_splits.mat)")
    p.add_argument("--attributes", choices=ATTRIBUTE_KEYS, default="att")
    p.add_argument("--method", choices=list(METHODS), default="ale")
    p.add_argument("--encoder", choices=list(ENCODERS), default="linear")
    p.add_argument("--encoder-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="encoder argument, e.g. hidden=512 for mlp (repeatable)")
    p.add_argument("--score", choices=SCORES, default=None, help="default: the method's")
    p.add_argument("--scale", type=float, default=None,
                   help="logit scale (default: 16 for cosine, 1 for dot, the Gaussian temperature for sqeuclidean)")
    p.add_argument("--margin", type=float, default=None, help="hinge margin (default: the method's)")
    defaults = ZeroShotConfig()
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--eszsl-gamma", type=float, default=defaults.eszsl_gamma, help="used when not --tune")
    p.add_argument("--eszsl-lambda", type=float, default=defaults.eszsl_lambda, help="used when not --tune")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="choose ESZSL's regularisers on the validation folds (default: on for eszsl)")
    p.add_argument("--feature-norm", choices=FEATURE_NORMS, default=defaults.feature_norm)
    p.add_argument("--calibration", type=_number_or(("validation", "none")), default="validation",
                   help="calibrated stacking: chosen on validation classes, none, or a value")
    p.add_argument("--fusion-weight", type=_number_or(("validation",)), default="validation",
                   help="attribute weight of K >= 1 episode prototypes: chosen on validation classes, or in [0, 1]")
    p.add_argument("--folds", type=int, default=None, help="validation folds to use (default: all)")
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1, 5], help="K of the episodes (0: attributes only)")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--validation-episodes", type=int, default=200)
    p.add_argument("--seed", type=seed, default=0, help="training, validation splits and episodes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--output", default=None, help="JSON report (default: runs/zeroshot/<dataset>-<method>-<time>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def config_from_args(args: argparse.Namespace) -> ZeroShotConfig:
    """The ZeroShotConfig that the flags describe (checked)."""
    encoder_args = ENCODERS.parse_arguments(args.encoder, args.encoder_arg, "--encoder-arg")
    return ZeroShotConfig(method=args.method, encoder=args.encoder, encoder_args=encoder_args, score=args.score,
                          scale=args.scale, margin=args.margin, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, weight_decay=args.weight_decay, eszsl_gamma=args.eszsl_gamma,
                          eszsl_lambda=args.eszsl_lambda, feature_norm=args.feature_norm, seed=args.seed,
                          device=args.device).resolved()


def run(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """Load, train, evaluate and write the report; returns it and its path."""
    config = config_from_args(args)
    started = time.strftime("%Y%m%d-%H%M%S")
    # The report is the run's only result: its path is checked before the (long) run, not after it.
    check_writable(args.output or DEFAULT_REPORT_FOLDER / "report.json",
                   "--output" if args.output else "the report folder (set --output)")
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    data = load_gbu(args.dataset, args.data_root, args.features, args.attributes)
    features = {"source": "res101.mat" if args.features is None else str(args.features)}
    log(f"{data.name}: {len(data.features)} images x {data.feature_dim} features, {data.attribute_dim} attributes, "
        f"{len(data.seen_classes)} seen / {len(data.unseen_classes)} unseen classes")
    report = evaluate_zero_shot(data, config, calibration=args.calibration, fusion_weight=args.fusion_weight,
                                tune=args.tune, folds=args.folds, shots=args.shots, ways=args.ways,
                                queries=args.queries, episodes=args.episodes,
                                validation_episodes=args.validation_episodes, seed=args.seed, log=log)
    report["features"] = features
    report["command"] = ["python", "-m", "fewshot.zeroshot", *sys.argv[1:]] if args.argv is None else args.argv
    output = Path(args.output or DEFAULT_REPORT_FOLDER / f"{data.name}-{config.method}-{started}.json")
    atomic_write(output, lambda file: file.write(json.dumps(report, indent=2).encode()))
    return report, output


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot.zeroshot`."""
    args = build_parser().parse_args(argv)
    args.argv = None if argv is None else ["python", "-m", "fewshot.zeroshot", *argv]
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report, output = run(args)
    except COMMAND_ERRORS as error:
        return report_error(error)
    print(format_report(report))
    print(f"report: {output}")
    return 0
