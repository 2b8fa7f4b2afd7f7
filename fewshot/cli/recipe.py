"""The recipe command line: `python -m fewshot.recipe meta-baseline-miniimagenet --output runs/mini`."""

from __future__ import annotations

import argparse
import sys

from fewshot.cli.arguments import HelpFormatter
from fewshot.cli.catalogue import PRECISIONS, RECIPE_DESCRIPTIONS, RegisteredName
from fewshot.cli.plugins import add_import_flag, parse_with_plugins, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.recipe", description=__doc__.split("\n")[0].strip("`"),
                                formatter_class=HelpFormatter,
                                epilog="recipes: " + "; ".join(f"{name}: {description}"
                                                               for name, description in sorted(RECIPE_DESCRIPTIONS.items())))
    p.add_argument("recipe", choices=RegisteredName("recipe"), help="the recipe to run")
    p.add_argument("--output", required=True, help="folder of the recipe's runs, one per stage")
    p.add_argument("--data-root", default=None, help="data root (default: $FEWSHOT_DATA, then the user cache)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the recipe's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for every stage")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 or bf16 for every stage (default: the recipe's)")
    p.add_argument("--image-size", type=int, default=None, help="default: the dataset's")
    p.add_argument("--batch-classes", type=int, default=None,
                   help="classes per balanced batch (default: the recipe's)")
    p.add_argument("--stage-episodes", action="append", default=[], metavar="STAGE=N",
                   help="episodes (or batches) of one stage, its learning-rate schedule scaled along; repeatable")
    p.add_argument("--val-episodes", type=int, default=None, help="episodes per validation (default: the recipe's)")
    p.add_argument("--test-episodes", type=int, default=None, help="episodes per final evaluation setting")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_import_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot recipe`: parse (plug-ins imported first), then run the recipe."""
    args = parse_with_plugins(build_parser(), argv)
    return run_command("recipe", args)


if __name__ == "__main__":
    sys.exit(main())
