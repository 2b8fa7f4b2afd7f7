"""The embed command line: `python -m fewshot embed CHECKPOINT FOLDER --out emb.npy` writes the embeddings of every
image under FOLDER (float32 [n, d], `numpy.load`-able) and, beside them, `emb.files.csv`: row i names the image of
embedding row i (`file`, relative to FOLDER) and its `label` (its class folder, when the images sit in class
folders; empty otherwise). Argparse over `fewshot.inference.classifier.TrainedModel.embed_items` (docs/api.md)."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.files import atomic_write, check_writable
from fewshot.inference.classifier import load
from fewshot.inference.images import UnreadableImages

#: What the file list beside `--out NAME.npy` is called: NAME + this.
FILES_SUFFIX = ".files.csv"


def files_path(out: str | Path) -> Path:
    """The file list written beside the embeddings `out` (`emb.npy` -> `emb.files.csv`)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".npy") + FILES_SUFFIX)


def relative_names(items: Sequence[str], folder: str | Path) -> list[str]:
    """Image paths relative to `folder` (POSIX separators), as `embed_items` names them absolute; a path outside it
    (a linked file) stays absolute."""
    root = Path(folder).expanduser().resolve()
    names = []
    for item in items:
        path = Path(item)
        names.append(path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path))
    return names


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write a CSV file atomically (a header line, then `rows`)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, lambda file: file.write(text.getvalue().encode()))


def write_embeddings(out: str | Path, embeddings: np.ndarray, files: Sequence[str],
                     labels: Sequence[Hashable] | None) -> Path:
    """Write `out` (.npy) and its file list `files_path(out)` (columns file, label); returns the file list's path."""
    atomic_write(out, lambda file: np.save(file, embeddings, allow_pickle=False))
    listed = files_path(out)
    write_csv(listed, ("file", "label"), [(name, "" if labels is None else labels[i]) for i, name in enumerate(files)])
    return listed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot embed",
                                description="Embed every image under a folder with a trained checkpoint: a .npy of "
                                            "embeddings [n, d] and, beside it, NAME.files.csv naming each row's file "
                                            "and label (docs/api.md).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    p.add_argument("folder", help="the images, searched recursively; in class folders (<folder>/<class>/<image>) "
                                  "for labels")
    p.add_argument("--out", required=True, help="the embeddings to write, a .npy file (NAME.files.csv goes beside it)")
    p.add_argument("--batch-size", type=int, default=256, help="images decoded and embedded at a time")
    p.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out (named) instead of failing")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    """Embed the folder and write the embeddings and their file list."""
    if Path(args.out).suffix != ".npy":
        raise ValueError(f"--out {args.out} must name a .npy file (NAME.npy; NAME.files.csv is written beside it)")
    # Both outputs are checked before the images are embedded, not after.
    check_writable(args.out, "--out")
    check_writable(files_path(args.out), "the file list beside --out")
    model = load(args.checkpoint, args.device)
    started = time.perf_counter()
    try:
        embeddings, items, labels = model.embed_items(args.folder, batch_size=args.batch_size,
                                                      progress=not args.no_progress,
                                                      skip_unreadable=args.skip_unreadable)
    except UnreadableImages as error:  # the command line's option is a flag, not the API's keyword
        raise UnreadableImages(error.failures, "--skip-unreadable") from None
    seconds = time.perf_counter() - started
    listed = write_embeddings(args.out, embeddings.numpy(), relative_names(items, args.folder), labels)
    classes = "no labels" if labels is None else f"{len(set(labels))} classes"
    print(f"embedded {len(items)} images ({classes}) from {args.folder} in {seconds:.1f} s: "
          f"{embeddings.shape[1]}-d -> {args.out}, files and labels -> {listed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return run(args)
    except COMMAND_ERRORS as error:
        return report_error(error)


if __name__ == "__main__":
    sys.exit(main())
