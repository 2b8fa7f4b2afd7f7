"""What the command lines' `--help` shows without importing torch: the built-in names of every registry a flag
chooses from, the fixed choices, and the training and zero-shot defaults.

The parsers are built from this module alone, so that `--help` answers at once; `tests/cli/test_catalogue.py`
keeps it equal to the registries and configs it mirrors. A flag naming a registered component takes a
`RegisteredName` as its choices: its help lists the built-in names, and the value given is checked against the
registry itself (imported then), so a plug-in registered by `--import` is accepted and an unknown name is
refused by argparse with the valid names, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

#: Registry kind -> its built-in names, in registration order.
BUILT_IN: dict[str, tuple[str, ...]] = {
    "backbone": ("conv4", "resnet12", "pixels", "tv-resnet18", "tv-resnet34", "tv-resnet50", "tv-resnet101", "tv-resnet152",
                 "tv-vit_b_16", "tv-vit_b_32", "tv-vit_l_16", "tv-convnext_tiny", "tv-convnext_small",
                 "tv-convnext_base", "timm"),
    "dataset": ("miniimagenet", "arrays", "folder", "omniglot"),
    "distance": ("euclidean", "cosine", "mahalanobis", "mahalanobis-diag", "mahalanobis-lowrank"),
    "learner": ("protonet", "siamese", "triplet", "normface", "cosface", "arcface", "sphereface", "proxy-nca",
                "proxy-anchor", "lifted-structure", "n-pair", "multi-similarity", "circle", "circle-class", "matching",
                "relation"),
    "miner": ("batch-all", "batch-hard", "semi-hard", "distance-weighted"),
    "augmentation": ("none", "affine", "crop-flip-jitter"),
    "schedule": ("step", "cosine", "none"),
    "recipe": ("meta-baseline-miniimagenet", "meta-baseline-omniglot", "protonet-colour"),
    "ann backend": ("ivf", "hnsw"),
    "zero-shot encoder": ("linear", "mlp"),
    "zero-shot method": ("softmax", "devise", "ale", "sje", "eszsl"),
    "head": ("prototype", "simpleshot", "logistic", "finetune", "finetune-backbone", "bd-cspn", "bd-cspn-inductive",
             "laplacianshot", "tim-gd", "alpha-tim", "pt-map", "transductive-finetuning"),
}

#: The split schemes of each built-in dataset (the first is its default), for `--split`'s help.
DATASET_SCHEMES: dict[str, tuple[str, ...]] = {
    "miniimagenet": ("ravi",),
    "arrays": ("random",),
    "folder": ("auto", "random", "folders"),
    "omniglot": ("vinyals", "lake"),
}

#: Each built-in recipe's one-line description, for `fewshot recipe --help`.
RECIPE_DESCRIPTIONS: dict[str, str] = {
    "meta-baseline-miniimagenet": "ResNet-12 CosFace pretraining on the base classes, then protonet (cosine) "
                                  "fine-tuning; miniImageNet",
    "meta-baseline-omniglot": "Conv-4 CosFace pretraining on the train + val characters, then protonet fine-tuning; "
                              "Omniglot",
    "protonet-colour": "Conv-4 protonet on colour images at 32 px with crop-flip-jitter, bf16, within 30 CPU "
                       "minutes; a train/val/test folder",
}

# Fixed choices (tuples of the library, not registries).
PRECISIONS = ("fp32", "bf16")
SAMPLINGS = ("episodes", "balanced", "meta-dataset")
TRAIN_SPLITS = ("train", "trainval")
EVAL_SPLITS = ("test", "val", "train")
ATTRIBUTE_KEYS = ("att", "original_att")
GBU_DATASETS = ("APY", "AWA1", "AWA2", "CUB", "SUN")
FEATURE_NORMS = ("l2", "none")
SCORES = ("dot", "cosine", "sqeuclidean")

#: `TrainConfig()`'s settings that `fewshot train` shows as defaults.
TRAIN_DEFAULTS = SimpleNamespace(
    ways=5, shots=1, queries=None, train_ways=None, eval_queries=None, sampling="episodes", batch_classes=64, batch_images=4,
    max_ways=None, learner="protonet", backbone="conv4", dataset="omniglot", train_split="train", augment="none", episodes=6000,
    lr=0.001, schedule="step", lr_step=1500, lr_gamma=0.5, weight_decay=0.0, seed=0, val_every=500, val_episodes=200,
    test_episodes=1000, checkpoint_every=100, device="auto", precision="fp32", dist_timeout=300.0)

#: `ZeroShotConfig()`'s settings that `fewshot zeroshot` shows as defaults.
ZEROSHOT_DEFAULTS = SimpleNamespace(epochs=10, batch_size=128, lr=0.001, weight_decay=1e-05, eszsl_gamma=1.0,
                                    eszsl_lambda=1.0, feature_norm="l2")


class RegisteredName:
    """argparse `choices` for a flag that names a registered component of `kind` (a key of `BUILT_IN`).

    Listing it (for `--help`) gives the built-in names without importing the registry; testing a value against it
    imports the registries, after which listing it (argparse's "invalid choice" message) gives every registered
    name, plug-ins included."""

    def __init__(self, kind: str, sort: bool = True) -> None:
        if kind not in BUILT_IN:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {', '.join(BUILT_IN)}")
        self.kind = kind
        self.sort = sort  # listed sorted by name, or in registration order
        self.registry: object | None = None

    def load(self) -> object:
        """The registry itself (imported on first use: it imports torch)."""
        if self.registry is None:
            from fewshot.cli.registries import REGISTRIES  # the heavy import, after parsing began

            self.registry = REGISTRIES[self.kind]
        return self.registry

    def __contains__(self, name: object) -> bool:
        return name in self.load()

    def __iter__(self) -> Iterator[str]:
        names = BUILT_IN[self.kind] if self.registry is None else tuple(self.registry)
        return iter(sorted(names) if self.sort else names)

    def __len__(self) -> int:
        return len(tuple(iter(self)))
