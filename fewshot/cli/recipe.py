"""The recipe command line: `python -m fewshot.recipe meta-baseline-miniimagenet --output runs/mini`."""

from __future__ import annotations

import argparse

from fewshot.runtime import resolve_device
from fewshot.evaluation import format_table
from fewshot.training.recipes import RECIPES, Overrides, run_recipe
from fewshot.training import TrainingInterrupted
from fewshot.cli.errors import COMMAND_ERRORS, report_error, report_interrupt


def _stage_episodes(values: list[str]) -> dict[str, int]:
    episodes = {}
    for value in values:
        name, _, count = value.partition("=")
        if not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--stage-episodes {value!r}: expected STAGE=N with N a positive whole number")
        episodes[name] = int(count)
    return episodes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.recipe", description=__doc__.split("\n")[0].strip("`"),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="recipes: " + "; ".join(f"{name}: {recipe.description}"
                                                               for name, recipe in sorted(RECIPES.items())))
    p.add_argument("recipe", choices=sorted(RECIPES), help="the recipe to run")
    p.add_argument("--output", required=True, help="folder of the recipe's runs, one per stage")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the recipe's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--image-size", type=int, default=None, help="default: the dataset's")
    p.add_argument("--batch-classes", type=int, default=None, help="classes per balanced batch (default: the recipe's)")
    p.add_argument("--stage-episodes", action="append", default=[], metavar="STAGE=N",
                   help="episodes (or batches) of one stage, its learning-rate schedule scaled along; repeatable")
    p.add_argument("--val-episodes", type=int, default=None)
    p.add_argument("--test-episodes", type=int, default=None, help="episodes per final evaluation setting")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = Overrides(
            values={"data_root": args.data_root, "device": args.device and str(resolve_device(args.device)),
                    "threads": args.threads, "precision": args.precision, "image_size": args.image_size,
                    "batch_classes": args.batch_classes, "val_episodes": args.val_episodes,
                    "test_episodes": args.test_episodes},
            stage_episodes=_stage_episodes(args.stage_episodes))
        report = run_recipe(RECIPES[args.recipe], args.output, overrides, progress=not args.no_progress,
                            test_episodes=args.test_episodes)
    except TrainingInterrupted as stop:
        return report_interrupt(stop, "run the same command again to continue the recipe")
    except COMMAND_ERRORS as error:
        return report_error(error)
    print(format_table(report))
    return 0
