"""The work of `fewshot evaluate` once its flags are parsed (`fewshot.cli.evaluate`): the output paths checked, the
checkpoints evaluated, the table printed and the report and plot written."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fewshot.cli.errors import COMMAND_ERRORS, report_error
from fewshot.evaluation import (EvaluationSettings, default_report_path, evaluate_checkpoint, format_table, plot_report,
                                report_json)
from fewshot.evaluation.heads import HEADS
from fewshot.evaluation.settings import episode_list_path
from fewshot.files import atomic_write, check_writable
from fewshot.runtime import init_from_environment, leave_process_group, resolve_device


def run(args: argparse.Namespace) -> int:
    """Evaluate as the parsed flags say; returns the exit code."""
    report_path = Path(args.report or default_report_path(args.checkpoint, args.eval_split, args.compare, args.ensemble,
                                                          args.test_time_shift, args.test_time_rotations,
                                                          args.test_time_mirror,
                                                          "within-parent" if args.within_alphabet else
                                                          "meta-dataset" if args.meta_dataset else "fixed",
                                                          args.dirichlet_queries, [name for name, _ in args.heads]))
    plot_path = Path(args.plot or report_path.with_suffix(".png"))
    # The output paths are checked before the (long) evaluation, so a typo costs nothing.
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    problems = [f"--report {report_path} is a directory; name a JSON file"] if report_path.is_dir() else []
    if plot_path.is_dir():
        problems.append(f"--plot {plot_path} is a directory; name an image file")
    elif plot_path.suffix.lower().lstrip(".") not in formats:
        problems.append(f"--plot {plot_path}: unknown image format {plot_path.suffix or '(no extension)'}; "
                        f"use one of {', '.join('.' + f for f in formats)}")
    outputs = [("--report" if args.report else "the report (set --report)", report_path),
               ("--plot" if args.plot else "the plot (set --plot)", plot_path)]
    if args.save_episodes is not None and args.episode_list is None:  # a given list is used, not saved
        outputs += [("--save-episodes", episode_list_path(args.save_episodes, ways, shots))
                    for ways in args.ways for shots in args.shots]
    for flag, path in outputs:
        if not path.is_dir():  # a directory is named above, with what to write instead
            try:
                check_writable(path, flag)
            except ValueError as error:
                problems.append(str(error))
    if problems:
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        return 2
    if args.within_alphabet and args.meta_dataset:
        problems.append("--within-alphabet and --meta-dataset are two episode kinds; choose one")
    if args.max_ways is not None and not args.meta_dataset:
        problems.append("--max-ways applies to --meta-dataset episodes only")
    if problems:
        print("\n".join(f"error: {problem}" for problem in problems), file=sys.stderr)
        return 2
    kind = "within-parent" if args.within_alphabet else "meta-dataset" if args.meta_dataset else "fixed"
    try:
        # Under torchrun (WORLD_SIZE > 1) the episodes are sharded over the ranks and gathered in order.
        world, device = init_from_environment(resolve_device(args.device))
        # Each --head with the --head-arg pairs that followed it, typed by the head's signature.
        heads = [(name, HEADS.parse_arguments(name, pairs, "--head-arg")) for name, pairs in args.heads]
        settings = EvaluationSettings(
            ways_shots=[(w, s) for w in args.ways for s in args.shots], queries=args.queries, episodes=args.episodes,
            seed=args.seed, episode_list=args.episode_list, save_episode_lists=args.save_episodes,
            eval_split=args.eval_split, device=str(device), progress=not args.no_progress,
            per_episode=args.per_episode, allow_seen=args.allow_seen_classes, embedding_metrics=args.embedding_metrics,
            views={"shift": args.test_time_shift, "rotations": args.test_time_rotations,
                   "mirror": args.test_time_mirror},
            episode_kind=kind, max_ways=args.max_ways, min_images=args.min_images_per_class,
            query_dirichlet=args.dirichlet_queries, heads=heads)
        report = evaluate_checkpoint(args.checkpoint, settings, compare=args.compare, ensemble=args.ensemble,
                                     dataset=args.dataset, split=args.split, data_root=args.data_root)
    except COMMAND_ERRORS as error:
        return report_error(error)
    finally:
        leave_process_group()
    if not world.is_main:  # one report, written by rank 0
        return 0
    print(format_table(report))  # first: the numbers are on screen even if a file cannot be written
    current = report_path
    try:
        atomic_write(report_path, lambda f: f.write(report_json(report)))
        current = plot_path
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_report(report, plot_path)
    except OSError as error:  # a read-only folder or a full disk: one line, the table above stands
        print(f"error: cannot write {current}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(f"report: {report_path}\nplot: {plot_path}")
    return 0
