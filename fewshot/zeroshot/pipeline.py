"""The zero-shot pipeline (the GBU protocol end to end): train on the seen classes, choose what the protocol chooses
on validation classes, evaluate on the unseen (and, generalized, all) classes; and `embed_images`, the way in for
images through a backbone of this project.

    from fewshot.zeroshot import ZeroShotConfig, ZeroShotData, evaluate_zero_shot, load_gbu
    report = evaluate_zero_shot(load_gbu("CUB"), ZeroShotConfig(method="ale"))
    print(report["zsl_top1"], report["gzsl_calibrated"])

    # any features, labels and class attributes:
    data = ZeroShotData.from_arrays(features, labels, attributes, unseen_classes=[3, 7, 9])
    # or images, through a backbone of this project (a checkpoint of `fewshot.train`):
    data = ZeroShotData.from_arrays(embed_images("runs/x/best.pt", images), labels, attributes, [3, 7, 9])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot import metrics
from fewshot.model.checkpoint import model_from_checkpoint
from fewshot.model.network import FewShotModel
from fewshot.zeroshot.data import ZeroShotData
from fewshot.zeroshot.evaluate import (
    CalibrationFold,
    choose_calibration,
    episode_accuracies,
    generalized_accuracy,
    interval_dict,
    per_class_accuracy,
)
from fewshot.zeroshot.methods import (
    ESZSL_GRID,
    METHODS,
    AttributeModel,
    ESZSLSolver,
    ZeroShotConfig,
    eszsl_targets,
    fit,
    prepared_numpy,
)

#: Attribute weights tried when the fusion weight of K >= 1 episodes is chosen on validation classes.
FUSION_GRID = tuple(round(0.1 * k, 1) for k in range(11))
#: Share of each training class's images held out as "seen" validation images for the calibration.
SEEN_VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class ValidationFold:
    """Image rows of one validation fold: `fit` (train classes, trained on), `seen` (held-out images of the
    train classes) and `unseen` (the validation classes' images)."""

    train_classes: np.ndarray
    val_classes: np.ndarray
    fit: np.ndarray
    seen: np.ndarray
    unseen: np.ndarray


def validation_fold(data: ZeroShotData, fold: int, seed: int = 0) -> ValidationFold:
    """Fold `fold` (0-based) of `data.folds` as image rows of the trainval images (seeded)."""
    if not 0 <= fold < len(data.folds):
        raise ValueError(f"fold {fold} does not exist: {data.name} has {len(data.folds)} validation folds")
    train_classes, val_classes = data.folds[fold]
    rows = data.trainval
    labels = data.labels[rows]
    rng = np.random.default_rng([seed, fold])
    fit_rows, seen_rows = [], []
    for c in train_classes:
        members = rng.permutation(rows[labels == c])
        cut = int(round(SEEN_VALIDATION_FRACTION * len(members)))
        seen_rows.append(members[:cut])
        fit_rows.append(members[cut:])
    return ValidationFold(train_classes, val_classes, np.sort(np.concatenate(fit_rows)),
                          np.sort(np.concatenate(seen_rows)), rows[np.isin(labels, val_classes)])


def _zsl_top1(model: AttributeModel, data: ZeroShotData, rows: np.ndarray, classes: np.ndarray) -> float:
    predicted = model.predict(data.features[rows], data.attributes[classes], classes)
    return per_class_accuracy(predicted, data.labels[rows])


def tune_eszsl(data: ZeroShotData, folds: list[ValidationFold], config: ZeroShotConfig) -> dict[str, Any]:
    """ESZSL's (gamma, lambda) from `ESZSL_GRID` with the best ZSL top-1 on the validation classes, averaged
    over `folds` (each trained on its fit rows)."""
    totals: dict[tuple[float, float], float] = {}
    for fold in folds:
        y = np.searchsorted(fold.train_classes, data.labels[fold.fit])
        solver = ESZSLSolver(prepared_numpy(data.features[fold.fit], config.feature_norm),
                             eszsl_targets(y, len(fold.train_classes)), data.attributes[fold.train_classes])
        validation = prepared_numpy(data.features[fold.unseen], config.feature_norm)
        truth = data.labels[fold.unseen]
        for gamma, lam, scores in solver.score_grid(validation, data.attributes[fold.val_classes], *ESZSL_GRID):
            accuracy = per_class_accuracy(fold.val_classes[scores.argmax(1)], truth)
            totals[(gamma, lam)] = totals.get((gamma, lam), 0.0) + accuracy / len(folds)
    (gamma, lam), best = max(totals.items(), key=lambda item: item[1])  # the first of equal scores
    return {"eszsl_gamma": gamma, "eszsl_lambda": lam, "validation_zsl_top1": best}


def _episode_ways(ways: int, classes: np.ndarray) -> int:
    episode_ways = min(ways, len(classes))
    if episode_ways < 2:
        raise ValueError(f"{ways}-way episodes over {len(classes)} class(es) have {episode_ways} way: an episode "
                         "needs at least 2 classes (one class alone is always 100% accurate)")
    return episode_ways


def affordable_queries(labels: np.ndarray, classes: np.ndarray, shots: int, queries: int) -> int:
    """`queries`, lowered so that every class in `classes` has `max(shots, 1) + queries` images (SUN's
    validation classes have 16 training images each: 5 shots leave 11 queries). At least 1."""
    smallest = int(np.bincount(labels, minlength=int(classes.max()) + 1)[classes].min())
    affordable = smallest - max(shots, 1)
    if affordable < 1:
        raise ValueError(f"{shots}-shot episodes need at least {max(shots, 1) + 1} images per class, but a class "
                         f"has only {smallest}")
    return min(queries, affordable)


def evaluate_zero_shot(
    data: ZeroShotData,
    config: ZeroShotConfig | None = None,
    *,
    calibration: str | float = "validation",
    fusion_weight: str | float = "validation",
    tune: bool | None = None,
    folds: int | None = None,
    shots: Sequence[int] = (0, 1, 5),
    ways: int = 5,
    queries: int = 15,
    episodes: int = 600,
    validation_episodes: int = 200,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train on the seen classes and report the GBU numbers and episode accuracies (fractions in [0, 1]).

    Args:
        data: features, labels, class attributes and the seen / unseen split.
        config: the method (`ZeroShotConfig()`: ALE with a linear encoder).
        calibration: "validation" (calibrated stacking, the value chosen on the validation folds), "none",
            or a number (the value to subtract from every seen class's score).
        fusion_weight: the attribute prototype's weight in K >= 1 episodes: "validation" (chosen from
            `FUSION_GRID` on validation-class episodes) or a number in [0, 1].
        tune: choose ESZSL's regularisers on the validation folds (default: on for ESZSL, which has no other
            way to set them; the gradient methods keep their settings).
        folds: how many of `data.folds` to validate on (default all).
        shots: K of the N-way K-shot episodes on unseen classes (0: attributes only).
        ways, queries, episodes: episode shape and count (`validation_episodes` on validation classes); the
            queries are lowered where a class has too few images (`affordable_queries`).
        seed: episodes and validation splits; the training seed is `config.seed`.
        log: called with progress lines.
    """
    say = log or (lambda line: None)
    config = (config or ZeroShotConfig()).resolved()
    tune = METHODS[config.method].loss is None if tune is None else bool(tune)
    if tune and METHODS[config.method].loss is not None:
        raise ValueError(f"tune chooses ESZSL's regularisers; {config.method} has none to choose")
    if isinstance(calibration, str) and calibration not in ("validation", "none"):
        raise ValueError(f"calibration must be 'validation', 'none' or a number, got {calibration!r}")
    if isinstance(fusion_weight, str) and fusion_weight != "validation":
        raise ValueError(f"fusion_weight must be 'validation' or a number in [0, 1], got {fusion_weight!r}")
    if not isinstance(fusion_weight, str) and not 0.0 <= float(fusion_weight) <= 1.0:
        raise ValueError(f"fusion_weight must be in [0, 1], got {fusion_weight!r}")
    shots = [int(k) for k in shots]
    if any(k < 0 for k in shots):
        raise ValueError(f"shots must be >= 0, got {shots}")
    if isinstance(ways, bool) or not isinstance(ways, (int, np.integer)) or ways < 2:
        raise ValueError(f"ways (--ways) must be at least 2, got {ways!r}: a 1-way episode has one class to choose, "
                         "so every answer is right (100% whatever the model)")
    _episode_ways(ways, data.unseen_classes)  # refused now, not after the training, when unseen classes are too few
    few_shot = [k for k in shots if k > 0]
    needs_validation = tune or calibration == "validation" or (fusion_weight == "validation" and few_shot)
    if folds is not None:
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 1:
            raise ValueError(f"folds (--folds) must be a whole number >= 1 (how many validation folds to use), "
                             f"got {folds!r}")
        if folds > len(data.folds):
            raise ValueError(f"folds (--folds) is {folds}, but {data.name} has {len(data.folds)} validation fold(s); "
                             f"use at most {len(data.folds)}, or leave it out to use all")
    fold_count = len(data.folds) if folds is None else int(folds)
    if needs_validation and fold_count == 0:
        raise ValueError(f"{data.name} has no validation folds, which calibration='validation', "
                         "fusion_weight='validation' and tune need; give numbers instead or build the data with folds")
    report: dict[str, Any] = {"dataset": data.summary(), "seed": seed, "timing": {}}

    # --- choices made on validation classes -------------------------------------------------
    started = time.perf_counter()
    chosen_calibration = 0.0 if calibration == "none" else (None if calibration == "validation" else float(calibration))
    weights = {k: (None if fusion_weight == "validation" else float(fusion_weight)) for k in few_shot}
    validation: dict[str, Any] = {"folds": fold_count if needs_validation else 0}
    if needs_validation:
        fold_rows = [validation_fold(data, k, seed) for k in range(fold_count)]
        if tune:
            choice = tune_eszsl(data, fold_rows, config)
            config = replace(config, eszsl_gamma=choice["eszsl_gamma"], eszsl_lambda=choice["eszsl_lambda"])
            validation["eszsl"] = choice
            say(f"ESZSL regularisers chosen on validation classes: gamma={config.eszsl_gamma:g}, "
                f"lambda={config.eszsl_lambda:g}")
        calibration_folds, fusion_scores = [], {k: [] for k in few_shot}
        if chosen_calibration is None or any(w is None for w in weights.values()):
            for index, fold in enumerate(fold_rows):
                say(f"validation fold {index + 1}/{fold_count}: training on {len(fold.train_classes)} classes")
                model = fit(data.features[fold.fit], data.labels[fold.fit], data.attributes, fold.train_classes, config)
                if chosen_calibration is None:
                    rows = np.concatenate([fold.seen, fold.unseen])
                    candidates = np.concatenate([fold.train_classes, fold.val_classes])
                    calibration_folds.append(CalibrationFold(model.scores(data.features[rows], data.attributes[candidates]),
                                                             data.labels[rows], candidates, fold.train_classes))
                for k in few_shot:
                    if weights[k] is None:
                        labels = data.labels[fold.unseen]
                        accuracies = episode_accuracies(
                            model, data.features[fold.unseen], labels, data.attributes, fold.val_classes,
                            _episode_ways(ways, fold.val_classes), k,
                            affordable_queries(labels, fold.val_classes, k, queries), validation_episodes, seed,
                            fusion_weight=FUSION_GRID)
                        fusion_scores[k].append(accuracies.mean(1))
        if chosen_calibration is None:
            chosen_calibration, validation_h = choose_calibration(calibration_folds)
            validation["calibration"] = {"value": chosen_calibration, "validation_H": validation_h}
            say(f"calibration chosen on validation classes: {chosen_calibration:.4g} (validation H {validation_h:.3f})")
        for k in few_shot:
            if weights[k] is None:
                mean = np.mean(fusion_scores[k], axis=0)
                weights[k] = float(FUSION_GRID[int(np.argmax(mean))])
                validation.setdefault("fusion_weight", {})[str(k)] = {
                    "value": weights[k], "validation_accuracy": dict(zip(map(str, FUSION_GRID), mean.tolist()))}
    report["timing"]["validation_seconds"] = time.perf_counter() - started
    report["validation"] = validation
    report["config"] = config.to_dict()

    # --- the final model, on every seen class --------------------------------------------------
    say(f"training {config.method} on {len(data.seen_classes)} seen classes ({len(data.trainval)} images)")
    model = fit(data.features[data.trainval], data.labels[data.trainval], data.attributes, data.seen_classes, config)
    report["config"]["scale"] = model.scale
    report["timing"]["train_seconds"] = model.fit_seconds

    started = time.perf_counter()
    report["zsl_top1"] = _zsl_top1(model, data, data.test_unseen, data.unseen_classes)
    rows = np.concatenate([data.test_seen, data.test_unseen])
    candidates = np.concatenate([data.seen_classes, data.unseen_classes])
    scores = model.scores(data.features[rows], data.attributes[candidates])
    report["gzsl"] = generalized_accuracy(scores, data.labels[rows], candidates, data.seen_classes).to_dict()
    report["gzsl_calibrated"] = (None if chosen_calibration is None or calibration == "none" else
                                 generalized_accuracy(scores, data.labels[rows], candidates, data.seen_classes,
                                                      chosen_calibration).to_dict())
    report["timing"]["evaluate_seconds"] = time.perf_counter() - started

    # --- episodes on the unseen classes ----------------------------------------------------------
    started = time.perf_counter()
    report["episodes"] = []
    episode_ways = _episode_ways(ways, data.unseen_classes)
    features, labels = data.features[data.test_unseen], data.labels[data.test_unseen]
    for k in shots:
        k_queries = affordable_queries(labels, data.unseen_classes, k, queries)
        if k == 0:
            accuracies = episode_accuracies(model, features, labels, data.attributes, data.unseen_classes,
                                            episode_ways, 0, k_queries, episodes, seed, fusion_weight=1.0)
            report["episodes"].append({"ways": episode_ways, "shots": 0, "queries": k_queries,
                                       "prototype": "attributes", **interval_dict(accuracies)})
            continue
        both = episode_accuracies(model, features, labels, data.attributes, data.unseen_classes, episode_ways, k,
                                  k_queries, episodes, seed, fusion_weight=[weights[k], 0.0])
        paired = metrics.paired_comparison(both[0], both[1])
        report["episodes"].append({
            "ways": episode_ways, "shots": k, "queries": k_queries, "prototype": "attributes + support",
            "fusion_weight": weights[k], **interval_dict(both[0]),
            "support_only": interval_dict(both[1]),
            "gain_over_support_only": {"mean": paired.mean_difference, "ci95": paired.difference.half_width,
                                       "p_value": paired.p_value}})
    report["timing"]["episode_seconds"] = time.perf_counter() - started
    return report


# ----------------------------------------------------------------------------------------------
# Images through a backbone of this project
# ----------------------------------------------------------------------------------------------


def _image_batch(images: Any, model: FewShotModel) -> torch.Tensor:
    """Float [N, C, H, W] in [0, 1] from uint8 (0..255) or float (0..1) images of the model's input shape."""
    tensor = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(1)
    channels, size = model.spec.in_channels, model.spec.image_size
    if tensor.dim() == 4 and tensor.shape[1] != channels and tensor.shape[-1] == channels:
        tensor = tensor.permute(0, 3, 1, 2)  # channels-last (numpy / PIL convention)
    expected = (channels, size, size)
    if tensor.dim() != 4 or tuple(tensor.shape[1:]) != expected:
        raise ValueError(f"images have shape {tuple(tensor.shape)}, but the backbone takes [N, {channels}, {size}, "
                         f"{size}] (its checkpoint's channels and image size); resize them first")
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    if not tensor.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {tensor.dtype}")
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ValueError(f"float images must lie in [0, 1], got values in [{tensor.min():g}, {tensor.max():g}]")
    return tensor.float()


@torch.no_grad()
def embed_images(backbone: FewShotModel | str | Path, images: Any, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """Embeddings [N, d] (float32 numpy) of images through a few-shot model of this project (a model, or a
    checkpoint written by `fewshot.train`), frozen, in eval mode: the space of its support prototypes."""
    model = model_from_checkpoint(backbone, device)[0] if isinstance(backbone, (str, Path)) else backbone
    was_training = model.training
    model.eval()
    try:
        batch = _image_batch(images, model)
        out = [model.embed(batch[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(batch), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def format_report(report: dict[str, Any]) -> str:
    """The report's headline numbers as text (percentages)."""
    config, lines = report["config"], []
    lines.append(f"{report['dataset']['name']}: {config['method']} ({config['encoder']} encoder, {config['score']} "
                 f"score) on {report['dataset']['seen_classes']} seen / {report['dataset']['unseen_classes']} unseen "
                 "classes")
    lines.append(f"  ZSL top-1 (per-class, unseen classes): {100 * report['zsl_top1']:.1f}")
    g = report["gzsl"]
    lines.append(f"  GZSL                    u {100 * g['u']:.1f}  s {100 * g['s']:.1f}  H {100 * g['H']:.1f}")
    c = report.get("gzsl_calibrated")
    if c is not None:
        lines.append(f"  GZSL calibrated ({c['calibration']:.3g})  u {100 * c['u']:.1f}  s {100 * c['s']:.1f}  "
                     f"H {100 * c['H']:.1f}")
    for e in report["episodes"]:
        text = (f"  {e['ways']}-way {e['shots']}-shot episodes ({e['prototype']}): {100 * e['accuracy']:.2f} "
                f"+- {100 * e['ci95']:.2f}")
        if "support_only" in e:
            text += (f"  (weight {e['fusion_weight']:g}; support only {100 * e['support_only']['accuracy']:.2f} "
                     f"+- {100 * e['support_only']['ci95']:.2f})")
        lines.append(text)
    t = report["timing"]
    lines.append(f"  time: validation {t['validation_seconds']:.1f} s, training {t['train_seconds']:.1f} s, "
                 f"evaluation {t['evaluate_seconds'] + t['episode_seconds']:.1f} s")
    return "\n".join(lines)
