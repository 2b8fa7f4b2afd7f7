"""The work of `fewshot zeroshot` once its flags are parsed (`fewshot.cli.zeroshot`): the benchmark loaded, the
encoder trained and evaluated, the report printed and written."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.files import atomic_write, check_writable
from fewshot.zeroshot.encoders import ENCODERS
from fewshot.zeroshot.gbu import load_gbu
from fewshot.zeroshot.methods import ZeroShotConfig
from fewshot.zeroshot.pipeline import evaluate_zero_shot, format_report

#: Where reports go without --output.
DEFAULT_REPORT_FOLDER = Path("runs/zeroshot")



def config_from_args(args: argparse.Namespace) -> ZeroShotConfig:
    """The ZeroShotConfig that the flags describe (checked)."""
    encoder_args = ENCODERS.parse_arguments(args.encoder, args.encoder_arg, "--encoder-arg")
    return ZeroShotConfig(method=args.method, encoder=args.encoder, encoder_args=encoder_args, score=args.score,
                          scale=args.scale, margin=args.margin, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, weight_decay=args.weight_decay, eszsl_gamma=args.eszsl_gamma,
                          eszsl_lambda=args.eszsl_lambda, feature_norm=args.feature_norm, seed=args.seed,
                          device=args.device).resolved()


def zero_shot(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
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


def run(args: argparse.Namespace) -> int:
    """Run the zero-shot benchmark as the parsed flags say; returns the exit code."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report, output = zero_shot(args)
    except COMMAND_ERRORS as error:
        return report_error(error)
    print(format_report(report))
    print(f"report: {output}")
    return 0
