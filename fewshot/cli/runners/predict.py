"""The work of `fewshot predict` once its flags are parsed (`fewshot.cli.predict`): support and query embedded,
the queries classified and the CSV written."""

from __future__ import annotations

import argparse
import time
import warnings

from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.cli.runners.embed import relative_names, write_csv
from fewshot.files import check_writable
from fewshot.inference.classifier import load
from fewshot.inference.images import UnreadableImages


#: Prefix of the probability columns: `p_<class>`.
PROBABILITY_PREFIX = "p_"


def predict(args: argparse.Namespace) -> int:
    """Embed support and query, classify the queries and write the CSV."""
    check_writable(args.out, "--out")  # before the images are embedded, not after
    model = load(args.checkpoint, args.device)
    options = {"batch_size": args.batch_size, "progress": not args.no_progress, "skip_unreadable": args.skip_unreadable}
    started = time.perf_counter()
    try:
        support, _, support_labels = model.embed_items(args.support, **options)
        if support_labels is None:
            raise ValueError(f"--support {args.support} holds no class folders; put each class's images in "
                             "<support>/<class>/")
        query, items, query_labels = model.embed_items(args.query, **options)
    except UnreadableImages as error:  # the command line's option is a flag, not the API's keyword
        raise UnreadableImages(error.failures, "--skip-unreadable") from None
    probabilities, classes = model.proba_from_embeddings(support, support_labels, query)
    predictions = [classes[i] for i in probabilities.argmax(dim=1).tolist()]
    seconds = time.perf_counter() - started
    header = ["file", "label", "prediction", *(f"{PROBABILITY_PREFIX}{name}" for name in classes)]
    rows = [[name, "" if query_labels is None else query_labels[i], predictions[i], *probabilities[i].tolist()]
            for i, name in enumerate(relative_names(items, args.query))]
    write_csv(args.out, header, rows)
    print(f"classified {len(items)} query images among {len(classes)} classes ({len(support)} support images) in "
          f"{seconds:.1f} s -> {args.out}")
    if query_labels is not None:
        support_classes = set(classes)
        known = [(label, predicted) for label, predicted in zip(query_labels, predictions) if label in support_classes]
        if known:
            correct = sum(label == predicted for label, predicted in known)
            print(f"accuracy on the {len(known)} queries whose class folder is a support class: "
                  f"{correct / len(known):.4f}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Predict as the parsed flags say; returns the exit code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return predict(args)
    except COMMAND_ERRORS as error:
        return report_error(error)
