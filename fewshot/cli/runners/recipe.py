"""The work of `fewshot recipe` once its flags are parsed (`fewshot.cli.recipe`): the recipe's stages run and
its final table printed."""

from __future__ import annotations

import argparse

from fewshot.cli.errors import COMMAND_ERRORS, report_error, report_interrupt
from fewshot.evaluation import format_table
from fewshot.runtime import resolve_device
from fewshot.training import TrainingInterrupted
from fewshot.training.recipes import RECIPES, Overrides, run_recipe


def stage_episodes(values: list[str]) -> dict[str, int]:
    """The `--stage-episodes STAGE=N` values as {stage: episodes}, each checked."""
    episodes = {}
    for value in values:
        name, _, count = value.partition("=")
        if not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--stage-episodes {value!r}: expected STAGE=N with N a positive whole number")
        episodes[name] = int(count)
    return episodes


def run(args: argparse.Namespace) -> int:
    """Run the recipe as the parsed flags say; returns the exit code."""
    try:
        overrides = Overrides(
            values={"data_root": args.data_root, "device": args.device and str(resolve_device(args.device)),
                    "threads": args.threads, "precision": args.precision, "image_size": args.image_size,
                    "batch_classes": args.batch_classes, "val_episodes": args.val_episodes,
                    "test_episodes": args.test_episodes},
            stage_episodes=stage_episodes(args.stage_episodes))
        report = run_recipe(RECIPES[args.recipe], args.output, overrides, progress=not args.no_progress,
                            test_episodes=args.test_episodes)
    except TrainingInterrupted as stop:
        return report_interrupt(stop, "run the same command again to continue the recipe")
    except COMMAND_ERRORS as error:
        return report_error(error)
    print(format_table(report))
    return 0
