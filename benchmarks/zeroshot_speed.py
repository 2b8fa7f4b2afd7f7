"""Training and evaluation time of each zero-shot method on a CUB-sized planted problem.

11,788 features of 2,048 dimensions, 312 attributes, 200 classes (150 seen / 50 unseen, 7,057 training images):
with FEWSHOT_DATA set, the real CUB split and attributes with planted features (`tests/support/zeroshot_planted.py`);
without it, random attributes and a split of the same sizes. Training is `fit` on the training images at the
default settings (10 epochs, batch 128 for the gradient methods; fixed regularisers for ESZSL, and separately
ESZSL's choice of regularisers on the three validation folds). Evaluation is the GBU protocol on the test images
(ZSL top-1 over 50 classes, GZSL u / s / H over 200) plus 600 5-way 0-shot episodes. Wall-clock and CPU seconds
of this process are printed; the machine may be shared.

Usage: [FEWSHOT_DATA=/path/to/data] python -m benchmarks.zeroshot_speed [--threads 1] [--epochs 10]
       [--methods eszsl softmax ale ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fewshot.zeroshot import (
    ZeroShotConfig,
    ZeroShotData,
    episode_accuracies,
    fit,
    generalized_accuracy,
    per_class_accuracy,
    validation_fold,
)
from fewshot.zeroshot.pipeline import tune_eszsl

# The planted problems are test scaffolding, kept beside the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.zeroshot_planted import load_planted_gbu, oracle_accuracy, planted_features  # noqa: E402

IMAGES, FEATURE_DIM, ATTRIBUTE_DIM, CLASSES, UNSEEN = 11788, 2048, 312, 200, 50
NOISE = 4.0
METHOD_SETTINGS = {
    "eszsl": {"method": "eszsl", "eszsl_gamma": 1000.0, "eszsl_lambda": 0.1},
    "softmax": {"method": "softmax"},
    "softmax-mlp": {"method": "softmax", "encoder": "mlp"},
    "softmax-sqeuclidean": {"method": "softmax", "score": "sqeuclidean"},
    "ale": {"method": "ale"},
    "devise": {"method": "devise"},
    "sje": {"method": "sje"},
}


def cub_sized_problem(seed: int = 0) -> tuple[ZeroShotData, np.ndarray, str]:
    """The real CUB split with planted features when FEWSHOT_DATA is set, else a random one of the same sizes."""
    if os.environ.get("FEWSHOT_DATA"):
        data, mapping = load_planted_gbu("CUB", noise=NOISE, feature_dim=FEATURE_DIM, seed=seed)
        return data, mapping, "real CUB split and attributes, planted features"
    rng = np.random.default_rng(seed)
    attributes = rng.random((CLASSES, ATTRIBUTE_DIM))
    attributes /= np.linalg.norm(attributes, axis=1, keepdims=True)
    labels = rng.permutation(np.arange(IMAGES) % CLASSES)
    features, mapping = planted_features(attributes, labels, FEATURE_DIM, NOISE, seed)
    data = ZeroShotData.from_arrays(features, labels, attributes, np.arange(CLASSES - UNSEEN, CLASSES),
                                    test_fraction=0.2, folds=3, seed=seed, name="CUB-sized random")
    return data, mapping, "random attributes and split of CUB's sizes, planted features"


def evaluate(model, data: ZeroShotData) -> tuple[float, float, float]:
    """(ZSL top-1, GZSL H, 5-way 0-shot episode accuracy) on the test images."""
    predicted = model.predict(data.features[data.test_unseen], data.attributes[data.unseen_classes],
                              data.unseen_classes)
    zsl = per_class_accuracy(predicted, data.labels[data.test_unseen])
    rows = np.concatenate([data.test_seen, data.test_unseen])
    candidates = np.concatenate([data.seen_classes, data.unseen_classes])
    gzsl = generalized_accuracy(model.scores(data.features[rows], data.attributes[candidates]), data.labels[rows],
                                candidates, data.seen_classes)
    episodes = episode_accuracies(model, data.features[data.test_unseen], data.labels[data.test_unseen],
                                  data.attributes, data.unseen_classes, ways=5, shots=0, queries=15, episodes=600)
    return zsl, gzsl.h, float(episodes.mean())


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=ZeroShotConfig().epochs)
    parser.add_argument("--methods", nargs="+", choices=list(METHOD_SETTINGS) + ["eszsl-tuned"],
                        default=list(METHOD_SETTINGS) + ["eszsl-tuned"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, mapping, source = cub_sized_problem()
    print(f"{source}: {len(data.features)} x {data.feature_dim} features, {data.attribute_dim} attributes, "
          f"{len(data.seen_classes)} seen / {len(data.unseen_classes)} unseen classes, {len(data.trainval)} training "
          f"images; noise {NOISE}; {args.threads} threads, {args.epochs} epochs")
    print(f"Bayes classifier (true map): ZSL top-1 {100 * oracle_accuracy(data, mapping):.1f}\n")
    print(f"{'method':<22}{'train s':>9}{'(cpu s)':>9}{'eval s':>8}{'(cpu s)':>9}{'ZSL':>7}{'H':>7}{'0-shot':>8}")
    training = (data.features[data.trainval], data.labels[data.trainval], data.attributes, data.seen_classes)
    for name in args.methods:
        if name == "eszsl-tuned":
            config = ZeroShotConfig(method="eszsl").resolved()
            folds = [validation_fold(data, k) for k in range(len(data.folds))]
            choice, wall, cpu = timed(lambda: tune_eszsl(data, folds, config))
            tuned = ZeroShotConfig(method="eszsl", eszsl_gamma=choice["eszsl_gamma"],
                                   eszsl_lambda=choice["eszsl_lambda"])
            model, fit_wall, fit_cpu = timed(lambda: fit(*training, tuned))
            wall, cpu = wall + fit_wall, cpu + fit_cpu
            label = f"eszsl ({len(folds)}-fold choice)"
        else:
            config = ZeroShotConfig(**METHOD_SETTINGS[name], epochs=args.epochs)
            model, wall, cpu = timed(lambda: fit(*training, config))
            label = name
        (zsl, h, zero_shot), eval_wall, eval_cpu = timed(lambda: evaluate(model, data))
        print(f"{label:<22}{wall:>9.1f}{cpu:>9.1f}{eval_wall:>8.2f}{eval_cpu:>9.2f}{100 * zsl:>7.1f}{100 * h:>7.1f}"
              f"{100 * zero_shot:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
