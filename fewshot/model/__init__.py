"""The model stage: `FewShotModel` (a backbone, a distance and a learner built from a `ModelSpec`) and
checkpoints that store the spec's names and arguments and rebuild what they name."""

from fewshot.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fewshot.model.network import FewShotModel, ModelSpec

__all__ = ["FewShotModel", "ModelSpec", "load_checkpoint", "model_from_checkpoint", "save_checkpoint"]
