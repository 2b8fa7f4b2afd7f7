"""The Python API in one import: train, evaluate, and use a trained model.

    from fewshot.api import TrainConfig, train, load
    train(TrainConfig(ways=5, shots=1, output="runs/proto"))
    model = load("runs/proto/best.pt")               # a TrainedModel: embed, classify, search, verify, cluster
    model.classify(support, support_labels, query)

Each name lives in its stage (`fewshot.training`, `fewshot.evaluation`, `fewshot.inference`, `fewshot.data`);
this module only gathers the ones a user starts from. See docs/api.md.
"""

from fewshot.data import from_arrays, from_folder, load_splits
from fewshot.evaluation import evaluate_checkpoint, evaluate_model
from fewshot.inference.classifier import (
    FewShotClassifier,
    Identification,
    Verification,
    calibrate,
    calibrate_checkpoint,
    load,
)
from fewshot.training import TrainConfig, train

__all__ = [
    "FewShotClassifier",
    "Identification",
    "TrainConfig",
    "Verification",
    "calibrate",
    "calibrate_checkpoint",
    "evaluate_checkpoint",
    "evaluate_model",
    "from_arrays",
    "from_folder",
    "load",
    "load_splits",
    "train",
]
