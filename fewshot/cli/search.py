"""The search command line: `python -m fewshot.search build CHECKPOINT FOLDER --out INDEX`, then
`python -m fewshot.search query INDEX IMAGE... -k 5` (neighbours printed, and a PNG contact sheet), plus
`verify CHECKPOINT A B [--far]` and `calibrate CHECKPOINT [--far] [--write]` (argparse over `fewshot.inference`
and `fewshot.evaluation.calibration`)."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.distances import describe_distance
from fewshot.evaluation.calibration import describe, store_calibration
from fewshot.files import check_writable
from fewshot.inference.ann import ANN_BACKENDS
from fewshot.inference.classifier import calibrate, load
from fewshot.inference.images import UnreadableImages
from fewshot.inference.index import Index
from fewshot.inference.sheet import write_contact_sheet


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.search",
                                description="Search a gallery, verify pairs and choose their thresholds with a trained "
                                            "checkpoint (docs/search.md).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="embed a folder of images and write an index",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    build.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    build.add_argument("folder", help="the gallery: images, in class folders for labels (<folder>/<class>/<image>)")
    build.add_argument("--out", required=True, help="the index file to write")
    build.add_argument("--ann", choices=list(ANN_BACKENDS), default=None,
                       help="add a faiss structure for large galleries (needs the 'search' extra); default: exact only")
    build.add_argument("--nlist", type=int, default=None, help="IVF cells (default about 4 sqrt(n))")
    build.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query (recall/speed)")
    build.add_argument("--m", type=int, default=32, help="HNSW links per node")
    build.add_argument("--ef-construction", type=int, default=80, help="HNSW build effort")
    build.add_argument("--ef-search", type=int, default=64, help="HNSW candidates per query (recall/speed)")
    build.add_argument("--batch-size", type=int, default=256)
    build.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out (named) instead of failing")
    build.add_argument("--device", default="cpu")
    build.add_argument("--no-progress", action="store_true")

    query = commands.add_parser("query", help="the nearest gallery images of query images",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    query.add_argument("index", help="an index written by 'build'")
    query.add_argument("images", nargs="+", help="query image files")
    query.add_argument("-k", type=int, default=5, help="neighbours per query")
    query.add_argument("--checkpoint", default=None, help="the checkpoint (default: the one that built the index)")
    query.add_argument("--sheet", default=None, help="contact sheet PNG (default: <index>.query.png)")
    query.add_argument("--exact", action="store_true", help="exact search even if the index has a faiss structure")
    query.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query")
    query.add_argument("--ef-search", type=int, default=None, help="HNSW candidates per query")
    query.add_argument("--device", default="cpu")

    verify = commands.add_parser("verify", help="same or different class, at the calibrated threshold",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    verify.add_argument("checkpoint")
    verify.add_argument("a", help="an image file")
    verify.add_argument("b", help="an image file")
    verify.add_argument("--far", type=float, default=None,
                        help="false accept rate of the operating point (default: the one stored with the threshold)")
    verify.add_argument("--device", default="cpu")

    calibration = commands.add_parser("calibrate", help="choose the thresholds on the checkpoint's validation classes",
                                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    calibration.add_argument("checkpoint")
    calibration.add_argument("--far", type=float, default=0.01, help="false accept rate to choose the thresholds at")
    calibration.add_argument("--write", action="store_true", help="store the thresholds in the checkpoint")
    calibration.add_argument("--data-root", default=None,
                             help="where the checkpoint's data is now (default: where its run read it)")
    calibration.add_argument("--device", default="cpu")
    return p


def _build(args: argparse.Namespace) -> int:
    check_writable(args.out, "--out")  # before embedding the gallery, not after
    model = load(args.checkpoint, args.device)
    # Every structure setting goes to the back-end chosen (each reads its own; the defaults are AnnSettings').
    settings = {} if args.ann is None else {"nlist": args.nlist, "nprobe": args.nprobe, "m": args.m,
                                            "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    started = time.perf_counter()
    try:
        index = model.index(args.folder, batch_size=args.batch_size, progress=not args.no_progress,
                            skip_unreadable=args.skip_unreadable, ann=args.ann, **settings)
    except UnreadableImages as error:  # the command line's option is a flag, not the API's keyword
        raise UnreadableImages(error.failures, "--skip-unreadable") from None
    seconds = time.perf_counter() - started
    classes = "no labels" if index.labels is None else f"{len(set(index.labels))} classes"
    index.save(args.out)
    print(f"indexed {len(index)} images ({classes}) from {index.source} in {seconds:.1f} s -> {args.out}")
    if index.ann_recall is not None:
        recall = index.ann_recall
        print(f"faiss {args.ann}: recall@{recall['k']} {recall['recall']:.4f} against exact search on "
              f"{recall['queries']} {recall['of']}; built in {index.ann_build_seconds:.1f} s")
    return 0


def _query(args: argparse.Namespace) -> int:
    state = Index.read_state(args.index)  # read once: it names the checkpoint, then becomes the index
    checkpoint = args.checkpoint or state["meta"].get("checkpoint")
    if checkpoint is None:
        raise ValueError(f"index {args.index} does not name the checkpoint that built it; pass --checkpoint")
    sheet = Path(args.sheet or f"{args.index}.query.png")
    check_writable(sheet, "--sheet" if args.sheet else "the contact sheet (set --sheet)")
    model = load(checkpoint, args.device)
    index = Index.load(args.index, model, state)
    if args.nprobe is not None or args.ef_search is not None:
        index.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    result = index.search(args.images, k=args.k, exact=args.exact)
    query_labels = []
    for position, name in enumerate(result.queries):
        print(f"{name}")
        for rank, (item, label, distance) in enumerate(result.neighbours(position), start=1):
            print(f"  {rank:>3}  {distance:10.4f}  {'' if label is None else str(label) + '  '}{item}")
        query_labels.append(folder_label(Path(name), index.labels))
    search_kind = "exact" if args.exact or index.ann_settings is None else f"faiss {index.ann_settings.kind}"
    write_contact_sheet(result, sheet, query_labels if any(query_labels) else None,
                        title=f"{len(index)}-image gallery, {search_kind} search, distance d: "
                              f"{describe_distance(index.distance)} ({model.model.spec.learner})")
    print(f"contact sheet: {sheet}")
    return 0


def folder_label(path: Path, labels: list | None) -> str | None:
    """The gallery class a query file's folder names: the longest tail of its folder path that is a gallery label
    (".../queries/Keble/character22/x.png" -> "Keble/character22"), so the sheet can frame right and wrong."""
    if not labels:
        return None
    known = {label for label in labels if isinstance(label, str)}
    parts = path.parent.parts
    for start in range(len(parts)):
        tail = "/".join(parts[start:])
        if tail in known:
            return tail
    return None


def _verify(args: argparse.Namespace) -> int:
    model = load(args.checkpoint, args.device)
    decision = model.verify(args.a, args.b, far=args.far)
    print(f"{'same' if decision.same else 'different'}: distance {decision.distance:.4f}, threshold "
          f"{-decision.threshold:.4f} (FAR {decision.far:g} chosen on validation classes: measured there "
          f"{decision.far_measured:.4g}, TAR {decision.tar:.4f})")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    if args.write:  # the thresholds are stored into the checkpoint: checked before the work, not after it
        check_writable(args.checkpoint, "the checkpoint (--write)")
    calibration = calibrate(args.checkpoint, far=args.far, device=args.device, data_root=args.data_root, progress=True)
    print(describe(calibration))
    if args.write:
        store_calibration(args.checkpoint, calibration)
        print(f"stored in {args.checkpoint} (state['verification'])")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = {"build": _build, "query": _query, "verify": _verify, "calibrate": _calibrate}[args.command]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return run(args)
    except COMMAND_ERRORS as error:
        return report_error(error)


if __name__ == "__main__":
    sys.exit(main())
