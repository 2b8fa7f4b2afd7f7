"""The work of `fewshot embed` once its flags are parsed (`fewshot.cli.embed`): the folder embedded, the
embeddings and their file list written."""

from __future__ import annotations

import argparse
import csv
import io
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


def embed(args: argparse.Namespace) -> int:
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


def run(args: argparse.Namespace) -> int:
    """Embed as the parsed flags say; returns the exit code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return embed(args)
    except COMMAND_ERRORS as error:
        return report_error(error)
