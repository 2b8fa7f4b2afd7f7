"""Zero-shot learning: class attribute vectors mapped into the embedding space of image features.

An attribute encoder (`encoders`: linear or MLP, registered in `ENCODERS`) maps each class's attribute
vector to a prototype in feature space, trained on seen classes by one of `METHODS` (softmax
compatibility, DeViSE / ALE / SJE ranking hinges, closed-form ESZSL). Features are either frozen
per-image features (the GBU benchmark files, `gbu`: `load_gbu`) or images embedded by a backbone of this project
(`embed_images`). `evaluate_zero_shot` runs the GBU protocol (ZSL top-1, GZSL u / s / H, calibrated
stacking) and K = 0 / K >= 1 episodes with 95% intervals (`pipeline`). The command line is
`python -m fewshot zeroshot` (`fewshot.cli.zeroshot`).
See docs/zeroshot.md.
"""

from fewshot.zeroshot.data import ZeroShotData
from fewshot.zeroshot.gbu import (
    GBU_CLASS_COUNTS,
    GBU_DATASETS,
    AttributeSplits,
    combine_gbu,
    load_attribute_splits,
    load_gbu,
    load_res101,
    write_attribute_splits,
    write_res101,
)
from fewshot.zeroshot.encoders import ENCODERS, AttributeEncoder, LinearEncoder, MLPEncoder, build_encoder
from fewshot.zeroshot.evaluate import (
    CalibrationFold,
    GeneralizedResult,
    choose_calibration,
    episode_accuracies,
    generalized_accuracy,
    harmonic_mean,
    per_class_accuracy,
)
from fewshot.zeroshot.methods import (
    METHODS,
    AttributeModel,
    ZeroShotConfig,
    compatibility,
    eszsl_closed_form,
    fit,
)
from fewshot.zeroshot.pipeline import embed_images, evaluate_zero_shot, format_report, validation_fold

__all__ = [
    "ENCODERS",
    "GBU_CLASS_COUNTS",
    "GBU_DATASETS",
    "METHODS",
    "AttributeEncoder",
    "AttributeModel",
    "AttributeSplits",
    "CalibrationFold",
    "GeneralizedResult",
    "LinearEncoder",
    "MLPEncoder",
    "ZeroShotConfig",
    "ZeroShotData",
    "build_encoder",
    "choose_calibration",
    "combine_gbu",
    "compatibility",
    "embed_images",
    "episode_accuracies",
    "eszsl_closed_form",
    "evaluate_zero_shot",
    "fit",
    "format_report",
    "generalized_accuracy",
    "harmonic_mean",
    "load_attribute_splits",
    "load_gbu",
    "load_res101",
    "per_class_accuracy",
    "validation_fold",
    "write_attribute_splits",
    "write_res101",
]
