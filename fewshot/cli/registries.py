"""Every registry a command-line flag names a component of, by the kind `fewshot.cli.catalogue` lists them under.
Importing it imports torch: the command lines import it only once a name is to be checked."""

from __future__ import annotations

from fewshot.backbones import BACKBONES
from fewshot.data import DATASETS
from fewshot.evaluation.heads import HEADS
from fewshot.distances import DISTANCES
from fewshot.inference.ann import ANN_BACKENDS
from fewshot.learners import LEARNERS
from fewshot.learners.miners import MINERS
from fewshot.registry import Registry
from fewshot.training import AUGMENTATIONS, SCHEDULES
from fewshot.training.recipes import RECIPES
from fewshot.zeroshot.encoders import ENCODERS
from fewshot.zeroshot.methods import METHODS

#: Registry kind (the keys of `fewshot.cli.catalogue.BUILT_IN`) -> the registry.
REGISTRIES: dict[str, Registry] = {
    "backbone": BACKBONES,
    "dataset": DATASETS,
    "distance": DISTANCES,
    "learner": LEARNERS,
    "miner": MINERS,
    "augmentation": AUGMENTATIONS,
    "schedule": SCHEDULES,
    "recipe": RECIPES,
    "ann backend": ANN_BACKENDS,
    "zero-shot encoder": ENCODERS,
    "zero-shot method": METHODS,
    "head": HEADS,
}
