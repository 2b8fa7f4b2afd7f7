"""Omniglot accuracy and embedding quality of the proxy and pair losses (Vinyals split, novel classes).

    FEWSHOT_DATA=/path/to/data python -m benchmarks.loss_families [--runs runs] [--threads 1] [--only cosface ...]

Each loss trains on class-balanced batches (`--sampling balanced`) with the settings below, unless its
run directory already holds a finished run (an unfinished one resumes). Every `best.pt` is then
evaluated with the evaluator on the same seeded episodes as `benchmarks.omniglot_accuracy` (1,000 per
setting, 15 queries, seed 0) and with `--embedding-metrics` (MAP@R, R-precision, NMI of k-means on
the novel classes). Prints the markdown table kept in docs/training.md and writes it, with the full
reports, to `<runs>/loss_families.json`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from fewshot.model.checkpoint import load_checkpoint
from fewshot.evaluation import evaluate_checkpoint
from fewshot.training import TrainConfig, train

SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]

# One budget for every loss so the rows compare losses, not schedules: 1,800 balanced batches of
# 64 classes x 4 images (n-pair: 128 x 2, one pair per class), bf16, Adam 1e-3 halved every 600.
COMMON = TrainConfig(sampling="balanced", batch_classes=64, batch_images=4, precision="bf16",
                     episodes=1800, lr_step=600, val_every=600)

# row name -> (run directory under --runs, settings); each loss with its documented defaults, then variants.
VARIANTS = [(name, name, {}) for name in ("normface", "cosface", "arcface", "sphereface", "proxy-nca", "proxy-anchor",
                                          "circle-class", "lifted-structure")]
VARIANTS += [("n-pair", "n-pair", {"batch_classes": 128, "batch_images": 2}),
             ("multi-similarity", "multi-similarity", {}), ("circle", "circle", {}),
             # SphereFace's normalised form: unit features, a fixed logit scale (its default scales by the feature norm).
             ("sphereface scale=16", "sphereface", {"learner_args": {"scale": 16.0}}),
             # The smaller scale and margin of the meta-baseline-omniglot recipe.
             ("cosface scale=16 margin=0.1", "cosface", {"learner_args": {"scale": 16.0, "margin": 0.1}})]
RUNS: dict[str, tuple[str, TrainConfig]] = {
    row: (f"omniglot-{row.replace(' ', '-').replace('=', '')}-balanced", replace(COMMON, learner=learner, **extra))
    for row, learner, extra in VARIANTS
}


def finished(run_dir: Path, episodes: int) -> bool:
    last = run_dir / "last.pt"
    return (run_dir / "best.pt").exists() and last.exists() and load_checkpoint(last)["episode"] >= episodes


def command(config: TrainConfig) -> str:
    """The `python -m fewshot.train` command line that reproduces a row."""
    arguments = [f"--loss-arg {k}={v:g}" for k, v in config.learner_args.items()]
    parts = ["python -m fewshot.train", f"--learner {config.learner}", *arguments, "--sampling balanced",
             f"--batch-classes {config.batch_classes}", f"--batch-images {config.batch_images}",
             f"--precision {config.precision}", f"--episodes {config.episodes}", f"--lr-step {config.lr_step}",
             f"--val-every {config.val_every}"]
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--episodes", type=int, default=1000, help="test episodes per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS)[:11], help="rows (default: the 11 losses)")
    args = parser.parse_args()

    rows = []
    for name in args.only:
        directory, config = RUNS[name]
        config = replace(config, output=str(args.runs / directory), threads=args.threads)
        run_dir = Path(config.output)
        if not finished(run_dir, config.episodes):
            train(config, resume=(run_dir / "last.pt").exists(), progress=False)
        report = evaluate_checkpoint(run_dir / "best.pt", ways_shots=SETTINGS, queries=15, episodes=args.episodes,
                                     seed=0, progress=False, embedding_metrics=True)
        seconds = load_checkpoint(run_dir / "last.pt").get("train_seconds")
        rows.append({"name": name, "command": command(config), "train_seconds": seconds, "report": report})
        print(f"{name}: done", flush=True)

    lines = ["| `--learner` | training | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | MAP@R | R-precision | NMI |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        report = row["report"]
        cells = [f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f}" for r in report["results"]]
        embedding = report["embedding_metrics"]
        retrieval, clustering = embedding["retrieval"], embedding["clustering"]
        minutes = f"{row['train_seconds'] / 60:.0f} min" if row["train_seconds"] else "n/a"
        lines.append(f"| `{row['name']}` | {RUNS[row['name']][1].episodes} batches, {minutes} | " + " | ".join(cells)
                     + f" | {retrieval['map_at_r']:.3f} | {retrieval['r_precision']:.3f} | {clustering['nmi']:.3f} |")
    print("\n".join(lines))
    args.runs.mkdir(parents=True, exist_ok=True)
    out = args.runs / "loss_families.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update({row["name"]: row for row in rows})
    out.write_text(json.dumps(previous, indent=1, default=str))


if __name__ == "__main__":
    main()
