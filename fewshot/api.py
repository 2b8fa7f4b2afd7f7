"""The Python API in one import: train, evaluate, and use a trained model.

    from fewshot.api import TrainConfig, train, load
    train(TrainConfig(ways=5, shots=1, output="runs/proto"))
    model = load("runs/proto/best.pt")               # a TrainedModel: embed, classify, search, verify, cluster
    model.classify(support, support_labels, query)

Each name lives in its stage (`fewshot.training`, `fewshot.evaluation`, `fewshot.inference`, `fewshot.data`);
this module only gathers the ones a user starts from. See docs/api.md.

`FewShotClassifier` is the old name of `TrainedModel`, kept here for existing code (easyfsl readers know that
name as a model base class; it is a loaded model with its preprocessing).
"""

from fewshot.data import from_arrays, from_folder, load_splits
from fewshot.evaluation import evaluate_checkpoint, evaluate_model
from fewshot.evaluation.calibration import calibrate_checkpoint, operating_point
from fewshot.evaluation.settings import EvaluationSettings
from fewshot.inference.classifier import (
    Identification,
    TrainedModel,
    Verification,
    calibrate,
    load,
)
from fewshot.inference.index import Index, SearchResult
from fewshot.training import TrainConfig, train

#: The old name of `TrainedModel`.
FewShotClassifier = TrainedModel

__all__ = [
    "EvaluationSettings",
    "FewShotClassifier",
    "Identification",
    "Index",
    "SearchResult",
    "TrainConfig",
    "TrainedModel",
    "Verification",
    "calibrate",
    "calibrate_checkpoint",
    "evaluate_checkpoint",
    "evaluate_model",
    "from_arrays",
    "from_folder",
    "load",
    "load_splits",
    "operating_point",
    "train",
]
