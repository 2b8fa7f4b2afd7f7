"""The predict command line: `python -m fewshot predict CHECKPOINT --support FOLDER --query FOLDER [--out
predictions.csv]` classifies every query image by its nearest class prototype of the support (a folder of class
folders: <support>/<class>/<image>) and writes a CSV: `file` (relative to the query folder), `label` (its class
folder when the query images sit in class folders, else empty), `prediction`, and one probability column
`p_<class>` per support class, in the support's class order. Argparse over
`fewshot.inference.classifier.TrainedModel` (`embed_items`, `proba_from_embeddings`; docs/api.md)."""

from __future__ import annotations

import argparse
import sys

from fewshot.cli.arguments import HelpFormatter
from fewshot.cli.plugins import add_import_flag, parse_with_plugins, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot predict",
                                description="Classify a folder of query images against a support folder of class "
                                            "folders with a trained checkpoint (nearest prototype): a CSV of each "
                                            "query's prediction and class probabilities (docs/api.md).",
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    p.add_argument("--support", required=True,
                   help="the labelled examples: a folder of class folders (<support>/<class>/<image>)")
    p.add_argument("--query", required=True, help="the images to classify, searched recursively (class folders "
                                                  "are optional: they fill the CSV's label column)")
    p.add_argument("--out", default="predictions.csv", help="the CSV to write")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded and embedded at a time")
    p.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out (named) instead of failing")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_import_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot predict`: parse (plug-ins imported first), then predict."""
    args = parse_with_plugins(build_parser(), argv)
    return run_command("predict", args)


if __name__ == "__main__":
    sys.exit(main())
