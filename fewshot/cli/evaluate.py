"""The evaluation command line: `python -m fewshot.evaluate runs/proto/best.pt --ways 5 20 --shots 1 5`
(argparse over `fewshot.evaluation`): novel-class accuracy with 95% intervals, paired comparison,
verification and retrieval."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fewshot.data import DATASETS
from fewshot.files import atomic_write, check_writable
from fewshot.runtime import resolve_device
from fewshot.runtime import init_from_environment, leave_process_group
from fewshot.evaluation.settings import episode_list_path
from fewshot.evaluation import EVAL_SPLITS, EvaluationSettings, evaluate_checkpoint, format_table, plot_report, report_json
from fewshot.cli.arguments import seed
from fewshot.cli.errors import COMMAND_ERRORS, report_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.evaluate", description=__doc__.split("\n")[0].strip("`"),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    p.add_argument("--dataset", choices=sorted(DATASETS), default=None, help="default: the checkpoint's")
    p.add_argument("--split", default=None, help="split scheme (default: the checkpoint's)")
    p.add_argument("--eval-split", choices=EVAL_SPLITS, default="test", help="which classes to evaluate on")
    p.add_argument("--ways", type=int, nargs="+", default=[5])
    p.add_argument("--shots", type=int, nargs="+", default=[1])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=seed, default=0, help="episodes are a pure function of the seed")
    p.add_argument("--episode-list", default=None, help="evaluate on a saved episode list (JSON, episodes.lists) instead of seeded episodes")
    p.add_argument("--save-episodes", default=None, help="write the seeded episodes as episode lists PATH_<ways>way<shots>shot.json")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare", default=None, help="a second checkpoint, evaluated on identical episodes")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="CHECKPOINT",
                   help="more checkpoints scored with the first as one ensemble (the sum of their log-softmax "
                        "prototype scores); the report's accuracy is the ensemble's")
    p.add_argument("--test-time-shift", type=int, default=0, metavar="K",
                   help="embed each image as the mean of itself and its copies shifted 1..K pixels left, right, up "
                        "and down (4K+1 views; 0: off), for every model evaluated; K below half the image side, so "
                        "that every view shows more image than background")
    p.add_argument("--test-time-rotations", action="store_true",
                   help="also score each episode in its four quarter turns and sum the scores (every "
                        "image of an episode turned alike; for models trained on rotated classes, as on Omniglot)")
    p.add_argument("--test-time-mirror", action="store_true",
                   help="also score the mirrored copies of the episode (for models trained with mirrors=true)")
    p.add_argument("--allow-seen-classes", action="store_true", help="evaluate even on classes seen in training")
    p.add_argument("--embedding-metrics", action="store_true",
                   help="also verification (ROC-AUC, EER, TAR@FAR), retrieval (Recall@1, R-precision, MAP@R) and "
                        "clustering (NMI, AMI of k-means)")
    p.add_argument("--report", default=None, help="JSON report path (default: beside the checkpoint)")
    p.add_argument("--plot", default=None, help="PNG plot path (default: beside the report)")
    p.add_argument("--per-episode", action="store_true",
                   help="embed every episode's images afresh instead of each image once (same numbers; for checks)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report_path = Path(args.report or Path(args.checkpoint).with_name(f"eval_{Path(args.checkpoint).stem}_{args.eval_split}.json"))
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
    try:
        # Under torchrun (WORLD_SIZE > 1) the episodes are sharded over the ranks and gathered in order.
        world, device = init_from_environment(resolve_device(args.device))
        settings = EvaluationSettings(
            ways_shots=[(w, s) for w in args.ways for s in args.shots], queries=args.queries, episodes=args.episodes,
            seed=args.seed, episode_list=args.episode_list, save_episode_lists=args.save_episodes,
            eval_split=args.eval_split, device=str(device), progress=not args.no_progress,
            per_episode=args.per_episode, allow_seen=args.allow_seen_classes, embedding_metrics=args.embedding_metrics,
            views={"shift": args.test_time_shift, "rotations": args.test_time_rotations,
                   "mirror": args.test_time_mirror})
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
