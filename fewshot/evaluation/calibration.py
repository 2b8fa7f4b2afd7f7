"""Operating points chosen on validation classes: the verification threshold (same / different pair) and the
open-set threshold (a known class, or "unknown"), each at a chosen false accept rate, stored with that rate.

    from fewshot.evaluation.calibration import calibrate, calibrate_checkpoint
    calibration = calibrate(model, val_split, far=1e-2)       # a FewShotModel and classes it was not trained on
    calibrate_checkpoint("runs/proto/best.pt")                 # its own validation classes, stored in the checkpoint

This module works on a model and a split; `fewshot.api.calibrate` also takes a loaded `TrainedModel` or a path.

A checkpoint holds its calibration under `state["verification"]` (`CHECKPOINT_KEY`): tensors and plain values,
read weights-only. The validation scores are kept (sorted, float32), so another false accept rate can be chosen
later without embedding the validation classes again (`operating_point`).

Scores follow `fewshot.metrics`: a score is `-distance` in the model's own metric, and a pair (or a query and
its nearest prototype) is accepted when `score >= threshold`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot import metrics
from fewshot.data.datasets import DatasetSplits
from fewshot.data.splits import ClassSplit
from fewshot.evaluation.cache import SplitEmbeddings
from fewshot.evaluation.checkpoints import checkpoint_splits
from fewshot.evaluation.episodes import announce, terminal_progress
from fewshot.files import check_writable
from fewshot.learners.base import nearest_prototype, prototypes
from fewshot.metrics.verification import balanced_pairs
from fewshot.model.checkpoint import (
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    weights_fingerprint,
)
from fewshot.model.network import FewShotModel
from fewshot.runtime import resolve_device

#: Where a checkpoint stores its calibration.
CHECKPOINT_KEY = "verification"
CALIBRATION_VERSION = 1
DEFAULT_FAR = 1e-2
DEFAULT_PAIRS = 100_000
#: Support images per known class when the open-set threshold is calibrated.
DEFAULT_SHOTS = 5
KINDS = ("pair", "open_set")


def check_far(far: float) -> float:
    """`far` as a float in (0, 1), else a ValueError saying what a false accept rate is."""
    if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 < float(far) < 1.0:
        raise ValueError(f"far (false accept rate) must be a number in (0, 1), e.g. 0.01; got {far!r}")
    return float(far)


def _threshold_at(accepted_scores: np.ndarray, rejected_scores: np.ndarray, far: float) -> dict[str, float]:
    """The operating point with the highest true accept rate whose false accept rate is <= far (the rule of
    `metrics.tar_at_far`): its threshold and both rates on these scores."""
    scores = np.concatenate([accepted_scores, rejected_scores])
    same = np.concatenate([np.ones(len(accepted_scores), bool), np.zeros(len(rejected_scores), bool)])
    curve_far, curve_tar, thresholds = metrics.roc_curve(scores, same)
    point = int(np.searchsorted(curve_far, far, side="right") - 1)
    return {"threshold": float(thresholds[point]), "far_measured": float(curve_far[point]),
            "tar": float(curve_tar[point])}


def _sorted_scores(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.sort(np.asarray(values, dtype=np.float32))[::-1].copy())


def validation_split(state: dict[str, Any], image_size: int | None = None, *,
                     data_root: str | Path | None = None) -> ClassSplit:
    """The validation classes of a checkpoint (its loaded `state`), prepared as its model was trained, read from
    `data_root` (default: where the run read its data)."""
    return checkpoint_splits(state, image_size=image_size, data_root=data_root).val


@torch.no_grad()
def calibrate(model: FewShotModel, split: ClassSplit | DatasetSplits, far: float = DEFAULT_FAR, *,
              device: str | torch.device = "cpu", pairs: int = DEFAULT_PAIRS, shots: int = DEFAULT_SHOTS,
              seed: int = 0, progress: bool | None = None, dataset: str = "given") -> dict[str, Any]:
    """Choose the verification and open-set thresholds of `model` on the validation classes `split` at false
    accept rate `far` (`dataset` names where the split came from, in the record).

    - "pair": `pairs` balanced same / different pairs of validation items (`balanced_pairs`), scored
      `-distance`; the threshold accepts at most `far` of the different-class pairs.
    - "open_set": half the validation classes (seeded) known, `shots` support images each, their other images
      known queries, every image of the other half unknown queries; a query's score is `-distance` to its
      nearest prototype, and the threshold accepts at most `far` of the unknown queries.

    Returns plain values and sorted float32 score tensors (see `operating_point`), safe to store in a checkpoint,
    with the fingerprint of the weights they hold for (`weights_fingerprint`). `progress` (default: when stderr
    is a terminal) shows the embedding bar and a line per phase after it.
    """
    far = check_far(far)
    progress = terminal_progress() if progress is None else progress
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive int, got {shots!r}")
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 2:
        raise ValueError(f"pairs must be an int >= 2, got {pairs!r}")
    if isinstance(split, DatasetSplits):
        split = split.val
    if not isinstance(split, ClassSplit):
        raise TypeError(f"val_split must be a ClassSplit or DatasetSplits, got {type(split).__name__}")
    if not isinstance(model, FewShotModel):
        raise TypeError(f"calibrate takes a FewShotModel, got {type(model).__name__} (for a checkpoint path or a "
                        "loaded TrainedModel use fewshot.api.calibrate)")
    distance = model.learner.pair_distance("verification and open-set calibration")  # refused before any work
    cache = SplitEmbeddings(model, split, resolve_device(device), batch_size=256, progress=progress)
    cache.max_bytes = max(cache.max_bytes, 1 << 34)  # every validation item at once (4 d bytes each)
    items = np.arange(len(split))
    cache.ensure(items)
    embeddings = cache.rows(items).float()
    labels = split.labels
    rng = np.random.default_rng(seed)

    chosen = torch.from_numpy(balanced_pairs(labels, pairs, rng))
    announce(f"calibrating: scoring {len(chosen)} validation pairs for the verification threshold", progress)
    pair_scores, same = metrics.pair_scores(embeddings, torch.from_numpy(labels), distance=distance, pairs=chosen)
    pair_point = _threshold_at(pair_scores[same], pair_scores[~same], far)

    counts = np.bincount(labels, minlength=split.num_classes)
    usable = np.flatnonzero(counts > shots)  # a known class needs a query beyond its support
    if len(usable) < 1 or split.num_classes < 2:
        raise ValueError(f"open-set calibration needs classes with more than shots={shots} images and at least 2 "
                         f"classes; the validation split has {split.num_classes} classes of at most {counts.max()} images")
    classes = rng.permutation(split.num_classes)
    known = np.sort(np.array([c for c in classes[: split.num_classes // 2] if counts[c] > shots] or usable[:1]))
    unknown = np.setdiff1d(np.arange(split.num_classes), known)
    support_rows, query_rows = [], []
    for c in known:
        rows = rng.permutation(np.flatnonzero(labels == c))
        support_rows.append(rows[:shots])
        query_rows.append(rows[shots:])
    support_rows, known_rows = np.concatenate(support_rows), np.concatenate(query_rows)
    unknown_rows = np.flatnonzero(np.isin(labels, unknown))
    relabel = np.full(split.num_classes, -1)
    relabel[known] = np.arange(len(known))
    support_y = torch.from_numpy(relabel[labels[support_rows]]).to(embeddings.device)
    centres = prototypes(embeddings[torch.from_numpy(support_rows)], support_y, len(known))

    def nearest(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best, which = nearest_prototype(distance, embeddings[torch.from_numpy(rows)], centres)
        return -best.double().numpy(), which.numpy()

    announce(f"calibrating: the open-set threshold ({len(known)} known classes of {shots} shots, "
             f"{len(known_rows) + len(unknown_rows)} queries)", progress)
    known_scores, known_pred = nearest(known_rows)
    unknown_scores, _ = nearest(unknown_rows)
    correct = known_pred == relabel[labels[known_rows]]
    open_point = _threshold_at(known_scores, unknown_scores, far)
    order = np.argsort(-known_scores, kind="stable")
    return {
        "version": CALIBRATION_VERSION,
        "far": far,
        "weights_sha256": weights_fingerprint(model),
        "data": {"dataset": dataset, "split": "val",
                 "classes": int(split.num_classes),
                 "items": int(len(split)), "seed": int(seed)},
        "pair": {**pair_point, "pairs": int(len(pair_scores)), "same": int(same.sum()),
                 "different": int((~same).sum()),
                 "accepted_scores": _sorted_scores(pair_scores[same]),
                 "rejected_scores": _sorted_scores(pair_scores[~same])},
        "open_set": {**open_point, "shots": int(shots), "known_classes": int(len(known)),
                     "unknown_classes": int(len(unknown)), "rule": "nearest prototype",
                     "known_accuracy": _known_accuracy(known_scores, correct, open_point["threshold"]),
                     "accepted_scores": torch.from_numpy(known_scores[order].astype(np.float32)),
                     "accepted_correct": torch.from_numpy(correct[order]),
                     "rejected_scores": _sorted_scores(unknown_scores)},
    }


def _known_accuracy(scores: np.ndarray, correct: np.ndarray, threshold: float) -> float:
    """Fraction of known-class queries accepted AND given the right class."""
    return float(np.mean((scores >= threshold) & correct))


def check_calibration(calibration: Any, where: str) -> dict[str, Any]:
    """`calibration` if it is one `calibrate` wrote, else a ValueError naming `where` it came from."""
    if not isinstance(calibration, dict) or calibration.get("version") != CALIBRATION_VERSION or \
            any(kind not in calibration for kind in KINDS):
        raise ValueError(f"{where} holds no calibration written by fewshot.verification.calibrate (version "
                         f"{CALIBRATION_VERSION}); calibrate again")
    return calibration


def operating_point(calibration: dict[str, Any], kind: str = "pair", far: float | None = None) -> dict[str, float]:
    """The threshold of `kind` ("pair" or "open_set") at `far` (None: the rate it was calibrated for), chosen on
    the stored validation scores: {"threshold", "far" (asked), "far_measured" and "tar" on validation}."""
    if kind not in KINDS:
        raise ValueError(f"unknown operating point {kind!r}; expected one of {', '.join(KINDS)}")
    check_calibration(calibration, "this object")
    section = calibration[kind]
    if far is None:
        point = {key: section[key] for key in ("threshold", "far_measured", "tar")}
        far = calibration["far"]
    else:
        point = _threshold_at(section["accepted_scores"].double().numpy(), section["rejected_scores"].double().numpy(),
                              check_far(far))
    point["far"] = float(far)
    if kind == "open_set":
        point["known_accuracy"] = _known_accuracy(section["accepted_scores"].double().numpy(),
                                                  section["accepted_correct"].numpy(), point["threshold"])
    return point


def describe(calibration: dict[str, Any]) -> str:
    """One line per operating point, for printing."""
    data = calibration["data"]
    pair, open_set = calibration["pair"], calibration["open_set"]
    return (f"calibrated on {data['classes']} {data['dataset']} {data['split']} classes ({data['items']} images) at "
            f"FAR {calibration['far']:g}:\n"
            f"  verification: accept a pair when distance <= {-pair['threshold']:.6g} (FAR {pair['far_measured']:.4g}, "
            f"TAR {pair['tar']:.4f} on {pair['pairs']} validation pairs)\n"
            f"  open set: a known class when its prototype is at distance <= {-open_set['threshold']:.6g} "
            f"(unknowns accepted {open_set['far_measured']:.4g}, known queries accepted and right "
            f"{open_set['known_accuracy']:.4f}; {open_set['known_classes']} known classes of {open_set['shots']} shots)")


def store_calibration(checkpoint: str | Path, calibration: dict[str, Any]) -> Path:
    """Write `calibration` into `checkpoint` under `CHECKPOINT_KEY` (atomically; everything else unchanged)."""
    check_calibration(calibration, "the calibration given")
    check_writable(checkpoint, "checkpoint")
    state = load_checkpoint(checkpoint)
    state[CHECKPOINT_KEY] = calibration
    return save_checkpoint(checkpoint, state)


def calibrate_checkpoint(checkpoint: str | Path, split: ClassSplit | DatasetSplits | None = None,
                         far: float | None = None, *, device: str | torch.device = "cpu",
                         **options: Any) -> dict[str, Any]:
    """Calibrate the model of `checkpoint` on `split` (default: its own validation classes) and store the result
    in it: the call made at the end of training, so that a loaded model's `verify` needs no calibration at first
    use. `options` go to `calibrate` (pairs, shots, seed, progress)."""
    far = check_far(DEFAULT_FAR if far is None else far)
    check_writable(checkpoint, "checkpoint")  # the result is stored in it: refused before the work, not after
    model, state = model_from_checkpoint(checkpoint, resolve_device(device))
    dataset = "given"
    if split is None:
        split, dataset = validation_split(state, model.spec.image_size), state["dataset"]
    calibration = calibrate(model, split, far, device=device, dataset=dataset, **options)
    store_calibration(checkpoint, calibration)
    return calibration
