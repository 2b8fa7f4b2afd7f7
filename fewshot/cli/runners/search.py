"""The work of `fewshot search` once its flags are parsed (`fewshot.cli.search`): build, query, verify and
calibrate."""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.distances import describe_distance
from fewshot.evaluation.calibration import describe, store_calibration
from fewshot.files import check_writable
from fewshot.inference.classifier import calibrate, load
from fewshot.inference.images import UnreadableImages
from fewshot.inference.index import Index
from fewshot.inference.sheet import write_contact_sheet


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


def run(args: argparse.Namespace) -> int:
    """Run the sub-command the parsed flags name; returns the exit code."""
    command = {"build": _build, "query": _query, "verify": _verify, "calibrate": _calibrate}[args.command]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return command(args)
    except COMMAND_ERRORS as error:
        return report_error(error)
