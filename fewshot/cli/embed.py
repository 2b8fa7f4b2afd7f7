"""The embed command line: `python -m fewshot embed CHECKPOINT FOLDER --out emb.npy` writes the embeddings of every
image under FOLDER (float32 [n, d], `numpy.load`-able) and, beside them, `emb.files.csv`: row i names the image of
embedding row i (`file`, relative to FOLDER) and its `label` (its class folder, when the images sit in class
folders; empty otherwise). Argparse over `fewshot.inference.classifier.TrainedModel.embed_items` (docs/api.md)."""

from __future__ import annotations

import argparse
import sys

from fewshot.cli.arguments import HelpFormatter
from fewshot.cli.plugins import add_import_flag, parse_with_plugins, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot embed",
                                description="Embed every image under a folder with a trained checkpoint: a .npy of "
                                            "embeddings [n, d] and, beside it, NAME.files.csv naming each row's file "
                                            "and label (docs/api.md).",
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    p.add_argument("folder", help="the images, searched recursively; in class folders (<folder>/<class>/<image>) "
                                  "for labels")
    p.add_argument("--out", required=True, help="the embeddings to write, a .npy file (NAME.files.csv goes beside it)")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded and embedded at a time")
    p.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out (named) instead of failing")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_import_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot embed`: parse (plug-ins imported first), then embed."""
    args = parse_with_plugins(build_parser(), argv)
    return run_command("embed", args)


if __name__ == "__main__":
    sys.exit(main())
