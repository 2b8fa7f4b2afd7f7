"""The best Omniglot recipe: protonet ensembles trained side by side, one process per core, paired
against the single protonet of docs/training.md and against the best published Conv-4 figure.

    FEWSHOT_DATA=/path/to/data python -m benchmarks.omniglot_ensemble [--runs runs] [--episodes 9000] [--members wide wide-mirrors ...]

Each member is `python -m fewshot.train` with `--threads 1`, all members started at once (the CPU's
cores shared between them, so the wall time of the slowest member is the recipe's training time).
The members are then scored as one model (`fewshot.evaluate --ensemble`) and each alone, on the same
seeded test episodes, and the ensemble is compared, paired, with `--baseline` (by default the
protonet arm of `benchmarks.pretraining`) when that checkpoint exists. Then the ensemble is scored
again with test-time views and paired against the single protonet evaluated as usual: shift
averaging (`--test-time-shift K`, default 2: 4K+1 views per image) within each of the image's eight
turned copies (four quarter turns, each also mirrored), whose scores are summed
(`--no-test-time-rotations`, `--no-test-time-mirror` leave them out). Finished members are reused; unfinished ones
resume.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fewshot import metrics
from fewshot.model.checkpoint import load_checkpoint
from fewshot.evaluation import evaluate_checkpoint

SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]
#: The published figure the recipe aims at: Relation Network, Omniglot 20-way 1-shot, Conv-4 (Sung et al., 2018).
RELATION_NETWORK_20W1S = 97.6
#: The members' shared settings: the single-protonet recipe (train + val classes, bf16, affine
#: augmentation, 60-way 1-shot 5-query episodes, final model) with a wider last block.
COMMON = ["--learner", "protonet", "--train-split", "trainval", "--augment", "affine", "--precision", "bf16",
          "--threads", "1", "--ways", "20", "--shots", "1", "--val-every", "2000", "--val-episodes", "100",
          "--test-episodes", "1000", "--no-progress"]
#: The members differ in seed and in their training classes (the mirrored ones add every class mirrored),
#: for an ensemble whose members make different mistakes.
MEMBERS = {
    "wide": ["--backbone-arg", "out_channels=256", "--seed", "0"],
    "wide-mirrors": ["--backbone-arg", "out_channels=256", "--dataset-arg", "mirrors=true", "--seed", "1"],
    "wide-mirrors-2": ["--backbone-arg", "out_channels=256", "--dataset-arg", "mirrors=true", "--seed", "2"],
}


def member_command(name: str, run_dir: Path, episodes: int, extra: list[str], resume: bool = True) -> list[str]:
    """The training command of one member (resuming when its run directory holds a checkpoint)."""
    command = [sys.executable, "-m", "fewshot.train", *COMMON, *MEMBERS[name], *extra,
               "--episodes", str(episodes), "--lr-step", str(max(1, episodes // 5)), "--output", str(run_dir)]
    return command + (["--resume"] if resume and (run_dir / "last.pt").exists() else [])


def finished(run_dir: Path, episodes: int) -> bool:
    last = run_dir / "last.pt"
    return last.exists() and (run_dir / "test_report.json").exists() and load_checkpoint(last)["episode"] >= episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--prefix", default="ensemble", help="run directories are RUNS/PREFIX-MEMBER")
    parser.add_argument("--episodes", type=int, default=9000, help="training episodes per member")
    parser.add_argument("--members", nargs="+", choices=list(MEMBERS), default=list(MEMBERS),
                        help="which members to train side by side and ensemble (three one-thread members share the two cores)")
    parser.add_argument("--dataset-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to every member's fewshot.train (e.g. mirrors=true)")
    parser.add_argument("--baseline", type=Path, default=Path("runs/pretraining-protonet/last.pt"))
    parser.add_argument("--test-episodes", type=int, default=1000)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or phase lines on stderr")
    parser.add_argument("--test-time-shift", type=int, default=2,
                        help="also score the ensemble with test-time shift averaging over 4K+1 views (0: skip)")
    parser.add_argument("--test-time-rotations", action=argparse.BooleanOptionalAction, default=True,
                        help="with the shifts, also score each image's four quarter turns (fewshot.evaluate --test-time-rotations)")
    parser.add_argument("--test-time-mirror", action=argparse.BooleanOptionalAction, default=True,
                        help="with the shifts, also score the mirrored copies (fewshot.evaluate --test-time-mirror)")
    args = parser.parse_args()
    if len(set(args.members)) != len(args.members):
        parser.error(f"--members names each member once, got {args.members}")

    extra = [flag for value in args.dataset_arg for flag in ("--dataset-arg", value)]
    dirs = {name: args.runs / f"{args.prefix}-{name}" for name in args.members}
    started = time.perf_counter()
    args.runs.mkdir(parents=True, exist_ok=True)
    jobs = {}
    for name, d in dirs.items():
        if not finished(d, args.episodes):
            with open(d.with_suffix(".log"), "a") as log:  # the child keeps its own copy of the descriptor
                jobs[name] = subprocess.Popen(member_command(name, d, args.episodes, extra), stdout=log,
                                              stderr=subprocess.STDOUT)
    failed = {name: job.wait() for name, job in jobs.items()}
    if any(failed.values()):  # the runs resume where they stopped on the next invocation
        sys.exit(f"members failed (exit status): {failed}; see {', '.join(str(d.with_suffix('.log')) for d in dirs.values())}")
    wall = time.perf_counter() - started
    seconds = {name: float(load_checkpoint(d / "last.pt").get("train_seconds") or 0.0) for name, d in dirs.items()}
    names = list(dirs)
    lasts = [dirs[name] / "last.pt" for name in names]
    baseline = args.baseline if args.baseline.exists() else None
    # Progress on stderr, so the tables on stdout stay clean; the evaluations with test-time views are long.
    options = dict(ways_shots=SETTINGS, queries=15, episodes=args.test_episodes, seed=0, progress=not args.no_progress)
    if not args.no_progress:
        print(f"evaluating {len(names)} members alone and as an ensemble", file=sys.stderr)
    report = evaluate_checkpoint(lasts[0], ensemble=lasts[1:], compare=baseline, **options)
    alone = [evaluate_checkpoint(last, **options) for last in lasts]

    header = " | ".join(f"{n} alone ({seconds[n] / 60:.0f} min)" for n in names)
    compared = "| protonet | ensemble - protonet [95% CI] | p " if baseline else ""
    print(f"| setting | {header} | ensemble of {len(names)} {compared}|")
    print("|---" * (2 + len(names) + (3 if baseline else 0)) + "|")
    for i, result in enumerate(report["results"]):
        cells = [f"{100 * a['results'][i]['accuracy']:.2f} ± {100 * a['results'][i]['ci95']:.2f}" for a in alone]
        cells.append(f"{100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f}")
        if baseline:
            c = report["compare"]["results"][i]
            d = c["difference"]
            cells += [f"{100 * c['accuracy']:.2f} ± {100 * c['ci95']:.2f}",
                      f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]", f"{c['p_value']:.2g}"]
        print(f"| {result['ways']}-way {result['shots']}-shot | " + " | ".join(cells) + " |")
    twenty = next(r for r in report["results"] if (r["ways"], r["shots"]) == (20, 1))
    print(f"\n20-way 1-shot: ensemble {100 * twenty['accuracy']:.2f} ± {100 * twenty['ci95']:.2f} against Relation "
          f"Network's published {RELATION_NETWORK_20W1S} (ratio {100 * twenty['accuracy'] / RELATION_NETWORK_20W1S:.4f}); "
          f"training wall time {max(seconds.values()) / 60:.1f} min (slowest member, members side by side"
          + (f"; this invocation {wall / 60:.1f} min)" if jobs else ")"))
    shifted = None
    view_settings = dict(shift=args.test_time_shift, rotations=args.test_time_rotations, mirror=args.test_time_mirror)
    if any(view_settings.values()):
        # The same ensemble with its test-time views (each turned copy shift-averaged, the copies'
        # scores summed), paired against the single protonet as it is evaluated by default.
        if not args.no_progress:
            print(f"evaluating the ensemble with test-time views {view_settings}", file=sys.stderr)
        shifted = evaluate_checkpoint(lasts[0], ensemble=lasts[1:], views=view_settings, **options)
        plain_baseline = evaluate_checkpoint(baseline, **options) if baseline else None
        views = f"{len(shifted['test_time_shift']['views'])} shifted views" if args.test_time_shift else "no shifts"
        if copies := shifted.get("test_time_turns"):
            views += f" x {len(copies['copies'])} turned copies"
        print(f"\n| setting | ensemble, {views} | protonet | difference [95% CI] | p |\n|---|---|---|---|---|")
        for i, result in enumerate(shifted["results"]):
            cells = [f"{100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f}"]
            if plain_baseline:
                other = plain_baseline["results"][i]
                paired = metrics.paired_comparison(np.array(result["per_episode"]), np.array(other["per_episode"]))
                d = paired.difference
                cells += [f"{100 * other['accuracy']:.2f} ± {100 * other['ci95']:.2f}",
                          f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]", f"{paired.p_value:.2g}"]
            print(f"| {result['ways']}-way {result['shots']}-shot | " + " | ".join(cells) + " |")
        viewed = next(r for r in shifted["results"] if (r["ways"], r["shots"]) == (20, 1))
        print(f"\n20-way 1-shot with test-time views: ensemble {100 * viewed['accuracy']:.2f} ± {100 * viewed['ci95']:.2f} "
              f"against Relation Network's published {RELATION_NETWORK_20W1S} "
              f"(ratio {100 * viewed['accuracy'] / RELATION_NETWORK_20W1S:.4f})")
    out = args.runs / f"{args.prefix}.json"
    out.write_text(json.dumps({"train_seconds": seconds, "wall_seconds": wall if jobs else None,
                               "commands": {n: member_command(n, dirs[n], args.episodes, extra, resume=False)[1:] for n in names},
                               "ensemble": report, "alone": alone, "ensemble_shifted": shifted}, indent=1, default=str))
    print(f"report: {out}")


if __name__ == "__main__":
    main()
