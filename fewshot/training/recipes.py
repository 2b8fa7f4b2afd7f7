"""Training recipes of several runs as one command: `python -m fewshot.recipe NAME --output DIR`.

A recipe is a list of named stages, each a `TrainConfig`; a stage after the first starts from the
previous stage's backbone (`init`), so "pretrain a classifier on the base classes, then fine-tune
episodically" (Meta-Baseline, Chen et al., 2021) is one recipe. Stage `k` trains in `<output>/<stage
name>`; a finished stage is kept and an interrupted one resumes, so re-running the command continues
the recipe where it stopped. Overrides (image size, episodes, device, ...) apply to every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fewshot.model.checkpoint import load_checkpoint
from fewshot.runtime import resolve_device
from fewshot.evaluation import evaluate_checkpoint
from fewshot.registry import Registry
from fewshot.training import TrainConfig, train


@dataclass(frozen=True)
class Recipe:
    """Stages `(name, config)` trained in order, each from the previous one's last.pt."""

    description: str
    stages: tuple[tuple[str, TrainConfig], ...]
    settings: tuple[tuple[int, int], ...] = ((5, 1), (5, 5))  # the final evaluation's (ways, shots)


RECIPES: Registry = Registry("recipe")

# Meta-Baseline on miniImageNet: ResNet-12, CosFace on class-balanced batches of the 64 base classes,
# then episodic fine-tuning with a cosine nearest-centroid classifier (learned scale), Meta-Baseline's
# second stage, 5-way 1-shot episodes at 84 px.
_MINI = TrainConfig(dataset="miniimagenet", backbone="resnet12", augment="crop-flip-jitter", precision="bf16",
                    device="auto")
RECIPES.register("meta-baseline-miniimagenet")(Recipe(
    "ResNet-12 CosFace pretraining on the base classes, then protonet (cosine) fine-tuning; miniImageNet",
    (("pretrain", replace(_MINI, learner="cosface", sampling="balanced", batch_classes=64, batch_images=4,
                          learner_args={"scale": 30.0, "margin": 0.2}, episodes=20000, lr_step=5000, val_every=1000)),
     ("finetune", replace(_MINI, learner="protonet", metric="cosine", train_ways=5, queries=15, episodes=4000,
                          lr=5e-4, lr_step=1000, val_every=500)))))

# The same on Omniglot with Conv-4 (the paired comparison of docs/training.md uses these stages). A smaller
# scale and margin than CosFace's defaults (64, 0.35): on Omniglot's 4,800 classes with 64-d Conv-4
# embeddings those train slower (docs/training.md).
_OMNIGLOT = TrainConfig(train_split="trainval", precision="bf16", augment="affine")
RECIPES.register("meta-baseline-omniglot")(Recipe(
    "Conv-4 CosFace pretraining on the train + val characters, then protonet fine-tuning; Omniglot",
    (("pretrain", replace(_OMNIGLOT, learner="cosface", sampling="balanced", batch_classes=64, batch_images=4,
                          learner_args={"scale": 16.0, "margin": 0.1}, episodes=5000, lr_step=1250)),
     ("finetune", replace(_OMNIGLOT, learner="protonet", episodes=3500, lr=5e-4, lr_step=875))),
    settings=((5, 1), (5, 5), (20, 1), (20, 5))))

# Colour images on a CPU (docs/training.md, the emoji table): Conv-4 at 32 px, 20-way 1-shot 4-query episodes
# (classes of 5 images), random crop, flip and colour jitter, bf16, one cosine schedule, sized for a budget of
# 30 CPU minutes on one thread. Chosen on the emoji set's validation classes: 32 px beat 64 px both per episode
# and per second, Conv-4 beat a narrow ResNet-12 (32-64-128-256) per second, and episodes beat CosFace
# pretraining on the base classes. 3 evaluation queries, so that 2-shot episodes fit classes of 5 images.
# Needs --data-root: a folder with train/, val/ and test/ class folders.
RECIPES.register("protonet-colour")(Recipe(
    "Conv-4 protonet on colour images at 32 px with crop-flip-jitter, bf16, within 30 CPU minutes; a "
    "train/val/test folder",
    (("train", TrainConfig(dataset="folder", split="folders", image_size=32, augment="crop-flip-jitter",
                           precision="bf16", learner="protonet", backbone="conv4", train_ways=20, queries=4,
                           eval_queries=3, episodes=8000, schedule="cosine", val_every=1000, val_episodes=200,
                           test_episodes=600)),),
    settings=((5, 1), (5, 2))))


@dataclass
class Overrides:
    """Settings applied to every stage (None: the recipe's own)."""

    values: dict[str, Any] = field(default_factory=dict)
    stage_episodes: dict[str, int] = field(default_factory=dict)  # stage name -> episodes (lr_step scaled along)

    def apply(self, name: str, config: TrainConfig) -> TrainConfig:
        config = replace(config, **{k: v for k, v in self.values.items() if v is not None})
        if name in self.stage_episodes:
            episodes = self.stage_episodes[name]
            ratio = config.lr_step / config.episodes
            config = replace(config, episodes=episodes, lr_step=max(1, round(ratio * episodes)),
                             val_every=min(config.val_every, episodes))
        return config


def stage_configs(recipe: Recipe, output: str | Path, overrides: Overrides | None = None) -> list[tuple[str, TrainConfig]]:
    """Each stage's full config: its run directory under `output`, the overrides, `init` from the stage before."""
    overrides = overrides or Overrides()
    unknown = set(overrides.stage_episodes) - {name for name, _ in recipe.stages}
    if unknown:
        raise ValueError(f"no stage named {', '.join(sorted(unknown))} in this recipe; its stages: "
                         f"{', '.join(name for name, _ in recipe.stages)}")
    configs, previous = [], None
    for name, config in recipe.stages:
        config = overrides.apply(name, config)
        config = replace(config, output=str(Path(output) / name),
                         init=str(Path(previous.output) / "last.pt") if previous is not None else config.init)
        configs.append((name, config))
        previous = config
    return configs


def stage_finished(config: TrainConfig) -> bool:
    """Whether the run in `config.output` trained all its episodes and wrote its test report."""
    run_dir = Path(config.output)
    last = run_dir / "last.pt"
    return last.is_file() and (run_dir / "test_report.json").is_file() and load_checkpoint(last)["episode"] >= config.episodes


def run_recipe(recipe: Recipe, output: str | Path, overrides: Overrides | None = None, progress: bool = True,
               test_episodes: int | None = None) -> dict[str, Any]:
    """Train every stage not yet finished (resuming an interrupted one), then evaluate the last stage's
    best.pt on the novel classes for the recipe's settings. Returns that report."""
    configs = stage_configs(recipe, output, overrides)
    for name, config in configs:
        if stage_finished(config):
            continue
        train(config, resume=(Path(config.output) / "last.pt").is_file(), progress=progress)
    final = configs[-1][1]
    best = Path(final.output) / "best.pt"
    # Queries left to the data were fixed when the stage ran: its checkpoint's config records them.
    queries = final.eval_queries if final.eval_queries is not None else load_checkpoint(best)["config"]["eval_queries"]
    return evaluate_checkpoint(best, ways_shots=tuple(recipe.settings), queries=queries,
                               episodes=test_episodes or final.test_episodes, seed=final.seed,
                               device=str(resolve_device(final.device)), data_root=final.data_root, progress=progress)
