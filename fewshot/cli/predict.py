"""The predict command line: `python -m fewshot predict CHECKPOINT --support FOLDER --query FOLDER [--out
predictions.csv]` classifies every query image by its nearest class prototype of the support (a folder of class
folders: <support>/<class>/<image>) and writes a CSV: `file` (relative to the query folder), `label` (its class
folder when the query images sit in class folders, else empty), `prediction`, and one probability column
`p_<class>` per support class, in the support's class order. Argparse over
`fewshot.inference.classifier.TrainedModel` (`embed_items`, `proba_from_embeddings`; docs/api.md)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from fewshot.cli.embed import relative_names, write_csv
from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.files import check_writable
from fewshot.inference.classifier import load
from fewshot.inference.images import UnreadableImages

#: Prefix of the probability columns: `p_<class>`.
PROBABILITY_PREFIX = "p_"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot predict",
                                description="Classify a folder of query images against a support folder of class "
                                            "folders with a trained checkpoint (nearest prototype): a CSV of each "
                                            "query's prediction and class probabilities (docs/api.md).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    return p


def run(args: argparse.Namespace) -> int:
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
