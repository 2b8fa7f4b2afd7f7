"""Classifier pretraining then episodic fine-tuning against episodic training alone, at equal wall time.

    FEWSHOT_DATA=/path/to/data python -m benchmarks.pretraining [--runs runs] [--threads 1] [--arm cosface]

Arm "protonet" is the best protonet recipe of docs/training.md (train + val classes, bf16,
`--augment affine`, 60-way 1-shot 5-query episodes, final model kept). Arm "cosface" (or "arcface")
spends about the same training time in the two stages of the `meta-baseline-omniglot` recipe: the
proxy loss on class-balanced batches of the same classes with the same augmentation, then protonet
fine-tuning from that backbone (`--init`). Both final models are evaluated on identical seeded test episodes with
`fewshot.evaluate --compare` (paired differences with their 95% CI and p-value), and the table is
printed with each arm's measured wall time. Finished runs are reused; unfinished ones resume.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from fewshot.model.checkpoint import load_checkpoint
from fewshot.evaluation import evaluate_checkpoint
from fewshot.training.recipes import RECIPES, stage_finished
from fewshot.training import TrainConfig, train

SETTINGS = [(5, 1), (5, 5), (20, 1), (20, 5)]
RECIPE = TrainConfig(learner="protonet", train_split="trainval", precision="bf16", augment="affine")


def arms(proxy: str, episodes: int, finetune_episodes: int | None = None) -> dict[str, list[tuple[str, TrainConfig]]]:
    """Each arm's runs in order: (run directory name, settings); a later run starts from the one before.
    The pretraining arm is the `meta-baseline-omniglot` recipe (`python -m fewshot.recipe`), with
    `proxy` as its first stage's loss and, if given, `finetune_episodes` for its second stage (same
    learning-rate steps, so a longer fine-tuning run is the recipe's run resumed to more episodes)."""
    stages = []
    for name, config in RECIPES["meta-baseline-omniglot"].stages:
        directory = f"pretraining-{proxy}-{name}"
        if name == "pretrain":
            config = replace(config, learner=proxy)
        elif finetune_episodes is not None and finetune_episodes != config.episodes:
            config, directory = replace(config, episodes=finetune_episodes), f"{directory}-{finetune_episodes}"
        stages.append((directory, config))
    return {"protonet": [("pretraining-protonet", replace(RECIPE, episodes=episodes, lr_step=max(1, episodes // 5)))],
            proxy: stages}


def run_arm(runs: list[tuple[str, TrainConfig]], root: Path, threads: int) -> tuple[Path, float]:
    """Train an arm's runs (skipping finished ones); its final checkpoint and total training seconds."""
    seconds, previous = 0.0, None
    for directory, config in runs:
        run_dir = root / directory
        config = replace(config, output=str(run_dir), threads=threads,
                         init=str(previous) if previous is not None else None)
        last = run_dir / "last.pt"
        if not stage_finished(config):
            train(config, resume=last.exists(), progress=False)
        seconds += load_checkpoint(last).get("train_seconds") or 0.0
        previous = last
    return previous, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arm", choices=["cosface", "arcface"], default="cosface", help="the proxy loss to pretrain with")
    parser.add_argument("--protonet-episodes", type=int, default=7500)
    parser.add_argument("--finetune-episodes", type=int, default=None,
                        help="episodes of the recipe's fine-tuning stage (default: the recipe's), to even out wall time")
    parser.add_argument("--test-episodes", type=int, default=1000)
    args = parser.parse_args()

    plan = arms(args.arm, args.protonet_episodes, args.finetune_episodes)
    finals = {name: run_arm(runs, args.runs, args.threads) for name, runs in plan.items()}
    (base, base_seconds), (other, other_seconds) = finals["protonet"], finals[args.arm]
    report = evaluate_checkpoint(other, ways_shots=SETTINGS, queries=15, episodes=args.test_episodes, seed=0,
                                 compare=base, progress=False)
    print(f"| setting | {args.arm} pretraining + protonet fine-tuning ({other_seconds / 60:.0f} min) | "
          f"protonet ({base_seconds / 60:.0f} min) | difference [95% CI] | p |")
    print("|---|---|---|---|---|")
    for result, c in zip(report["results"], report["compare"]["results"]):
        d = c["difference"]  # the first model (pretrained) minus the compared one (protonet)
        print(f"| {result['ways']}-way {result['shots']}-shot | {100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f} | "
              f"{100 * c['accuracy']:.2f} ± {100 * c['ci95']:.2f} | {100 * d['mean']:+.2f} "
              f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] | {c['p_value']:.2g} |")
    suffix = f"-{args.finetune_episodes}" if args.finetune_episodes else ""
    out = args.runs / f"pretraining-{args.arm}{suffix}.json"
    out.write_text(json.dumps({"seconds": {"protonet": base_seconds, args.arm: other_seconds}, "report": report},
                              indent=1, default=str))


if __name__ == "__main__":
    main()
