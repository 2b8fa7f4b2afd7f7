"""The search command line: `python -m fewshot.search build CHECKPOINT FOLDER --out INDEX`, then
`python -m fewshot.search query INDEX IMAGE... -k 5` (neighbours printed, and a PNG contact sheet), plus
`verify CHECKPOINT A B [--far]` and `calibrate CHECKPOINT [--far] [--write]` (argparse over `fewshot.inference`
and `fewshot.evaluation.calibration`)."""

from __future__ import annotations

import argparse
import sys

from fewshot.cli.arguments import HelpFormatter
from fewshot.cli.catalogue import RegisteredName
from fewshot.cli.plugins import add_import_flag, parse_with_plugins, run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.search",
                                description="Search a gallery, verify pairs and choose their thresholds with a trained "
                                            "checkpoint (docs/search.md).",
                                formatter_class=HelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="embed a folder of images and write an index",
                                formatter_class=HelpFormatter)
    build.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    build.add_argument("folder", help="the gallery: images, in class folders for labels (<folder>/<class>/<image>)")
    build.add_argument("--out", required=True, help="the index file to write")
    build.add_argument("--ann", choices=RegisteredName("ann backend", sort=False), default=None,
                       help="add a faiss structure for large galleries (needs the 'search' extra); default: exact only")
    build.add_argument("--nlist", type=int, default=None, help="IVF cells (default about 4 sqrt(n))")
    build.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query (recall/speed)")
    build.add_argument("--m", type=int, default=32, help="HNSW links per node")
    build.add_argument("--ef-construction", type=int, default=80, help="HNSW build effort")
    build.add_argument("--ef-search", type=int, default=64, help="HNSW candidates per query (recall/speed)")
    build.add_argument("--batch-size", type=int, default=256, help="images decoded and embedded at a time")
    build.add_argument("--skip-unreadable", action="store_true",
                       help="leave unreadable images out (named) instead of failing")
    build.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")

    query = commands.add_parser("query", help="the nearest gallery images of query images",
                                formatter_class=HelpFormatter)
    query.add_argument("index", help="an index written by 'build'")
    query.add_argument("images", nargs="+", help="query image files")
    query.add_argument("-k", type=int, default=5, help="neighbours per query")
    query.add_argument("--checkpoint", default=None, help="the checkpoint (default: the one that built the index)")
    query.add_argument("--sheet", default=None, help="contact sheet PNG (default: <index>.query.png)")
    query.add_argument("--exact", action="store_true", help="exact search even if the index has a faiss structure")
    query.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query")
    query.add_argument("--ef-search", type=int, default=None, help="HNSW candidates per query")
    query.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")

    verify = commands.add_parser("verify", help="same or different class, at the calibrated threshold",
                                 formatter_class=HelpFormatter)
    verify.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    verify.add_argument("a", help="an image file")
    verify.add_argument("b", help="an image file")
    verify.add_argument("--far", type=float, default=None,
                        help="false accept rate of the operating point (default: the one stored with the threshold)")
    verify.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")

    calibration = commands.add_parser("calibrate", help="choose the thresholds on the checkpoint's validation classes",
                                      formatter_class=HelpFormatter)
    calibration.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    calibration.add_argument("--far", type=float, default=0.01, help="false accept rate to choose the thresholds at")
    calibration.add_argument("--write", action="store_true", help="store the thresholds in the checkpoint")
    calibration.add_argument("--data-root", default=None,
                             help="where the checkpoint's data is now (default: where its run read it)")
    calibration.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    for command in (build, query, verify, calibration):  # a checkpoint may name plug-in components
        add_import_flag(command)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m fewshot search`: parse (plug-ins imported first), then run the sub-command."""
    args = parse_with_plugins(build_parser(), argv)
    return run_command("search", args)


if __name__ == "__main__":
    sys.exit(main())
