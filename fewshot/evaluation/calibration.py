"""Operating points chosen on validation classes: the verification threshold (same / different pair) and the
open-set threshold (a known class, or "unknown"), each at a chosen false accept rate, stored with that rate.

    from fewshot.api import calibrate, calibrate_checkpoint
    calibration = calibrate("runs/proto/best.pt", far=1e-2)    # the checkpoint's own validation classes
    calibrate_checkpoint("runs/proto/best.pt")                  # the same, stored in the checkpoint

(This module works on loaded models, `fewshot.api.FewShotClassifier`; the API turns paths into those.)

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
from fewshot.learners.base import prototypes

#: Where a checkpoint stores its calibration.
CHECKPOINT_KEY = "verification"
CALIBRATION_VERSION = 1
DEFAULT_FAR = 1e-2
DEFAULT_PAIRS = 100_000
#: Support images per known class when the open-set threshold is calibrated.
DEFAULT_SHOTS = 5
KINDS = ("pair", "open_set")


def _check_far(far: float) -> float:
    if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0.0 < float(far) < 1.0:
        raise ValueError(f"far (false accept rate) must be a number in (0, 1), e.g. 0.01; got {far!r}")
    return float(far)


def balanced_pairs(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[count, 2] item pairs, half of one class (an item and another item of its class) and half of two
    classes (drawn until `count - count // 2` are found); classes with one item give no same-class pair."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts[labels] >= 2)
    if len(eligible) == 0 or np.count_nonzero(counts) < 2:
        raise ValueError(f"calibration needs at least 2 classes and a class with 2 items; got {np.count_nonzero(counts)} "
                         f"class(es) of {len(labels)} items")
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(len(labels)) - starts[labels[order]]
    anchor = eligible[rng.integers(0, len(eligible), count // 2)]
    size = counts[labels[anchor]]
    partner = order[starts[labels[anchor]] + (rank[anchor] + rng.integers(1, size)) % size]
    first_parts, second_parts, needed = [], [], count - count // 2
    while needed > 0:
        first, second = rng.integers(0, len(labels), (2, 2 * needed + 16))
        keep = labels[first] != labels[second]
        first_parts.append(first[keep][:needed])
        second_parts.append(second[keep][:needed])
        needed -= len(first_parts[-1])
    return np.stack([np.concatenate([anchor, *first_parts]), np.concatenate([partner, *second_parts])], axis=1)


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


def _resolve(classifier: Any) -> "FewShotClassifier":
    """`classifier` if it is a loaded model (`fewshot.api.FewShotClassifier`). This module sits below the API,
    so checkpoint paths and bare models are turned into one there (`fewshot.api.calibrate`)."""
    if all(hasattr(classifier, name) for name in ("model", "device", "weights_sha256", "state_info")):
        return classifier
    raise TypeError(f"fewshot.verification.calibrate takes a FewShotClassifier (fewshot.api.load(path)); got "
                    f"{type(classifier).__name__}. For a checkpoint path or a FewShotModel use fewshot.api.calibrate")


def validation_split(classifier: "FewShotClassifier") -> ClassSplit:
    """The validation classes of the checkpoint a classifier was loaded from, prepared as it was trained."""
    from fewshot.evaluation import checkpoint_splits

    if classifier.state_info is None:
        raise ValueError("this model was not loaded from a checkpoint, so its validation classes are unknown; pass "
                         "val_split= (a ClassSplit of classes it was not trained on)")
    return checkpoint_splits(classifier.state_info, image_size=classifier.model.spec.image_size).val


@torch.no_grad()
def calibrate(checkpoint_or_model: Any, val_split: ClassSplit | DatasetSplits | None = None, far: float = DEFAULT_FAR,
              *, pairs: int = DEFAULT_PAIRS, shots: int = DEFAULT_SHOTS, seed: int = 0,
              progress: bool = False) -> dict[str, Any]:
    """Choose the verification and open-set thresholds on validation classes at false accept rate `far`.

    - "pair": `pairs` balanced same / different pairs of validation items (`balanced_pairs`), scored
      `-distance`; the threshold accepts at most `far` of the different-class pairs.
    - "open_set": half the validation classes (seeded) known, `shots` support images each, their other images
      known queries, every image of the other half unknown queries; a query's score is `-distance` to its
      nearest prototype, and the threshold accepts at most `far` of the unknown queries.

    `val_split` defaults to the checkpoint's own validation classes (`fewshot.evaluation.checkpoint_splits`).
    Returns plain values and sorted float32 score tensors (see `operating_point`), safe to store in a checkpoint.
    """
    from fewshot.evaluation.cache import SplitEmbeddings

    far = _check_far(far)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive int, got {shots!r}")
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 2:
        raise ValueError(f"pairs must be an int >= 2, got {pairs!r}")
    classifier = _resolve(checkpoint_or_model)
    if isinstance(val_split, DatasetSplits):
        val_split = val_split.val
    split = validation_split(classifier) if val_split is None else val_split
    if not isinstance(split, ClassSplit):
        raise TypeError(f"val_split must be a ClassSplit or DatasetSplits, got {type(split).__name__}")
    model = classifier.model
    cache = SplitEmbeddings(model, split, classifier.device, batch_size=256, progress=progress)
    cache.max_bytes = max(cache.max_bytes, 1 << 34)  # every validation item at once (4 d bytes each)
    items = np.arange(len(split))
    cache.ensure(items)
    embeddings = cache.rows(items).float()
    labels = split.labels
    distance = model.learner.scoring_distance
    rng = np.random.default_rng(seed)

    chosen = torch.from_numpy(balanced_pairs(labels, pairs, rng))
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
        best, which = [], []
        for start in range(0, len(rows), 4096):
            block = distance(embeddings[torch.from_numpy(rows[start:start + 4096])], centres)
            d, i = block.min(dim=1)
            best.append(d.float().cpu())
            which.append(i.cpu())
        return -torch.cat(best).double().numpy(), torch.cat(which).numpy()

    known_scores, known_pred = nearest(known_rows)
    unknown_scores, _ = nearest(unknown_rows)
    correct = known_pred == relabel[labels[known_rows]]
    open_point = _threshold_at(known_scores, unknown_scores, far)
    order = np.argsort(-known_scores, kind="stable")
    return {
        "version": CALIBRATION_VERSION,
        "far": far,
        "weights_sha256": classifier.weights_sha256,
        "data": {"dataset": classifier.dataset if val_split is None else "given", "split": "val",
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
                              _check_far(far))
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
    from fewshot.model.checkpoint import load_checkpoint, save_checkpoint

    check_calibration(calibration, "the calibration given")
    state = load_checkpoint(checkpoint)
    state[CHECKPOINT_KEY] = calibration
    return save_checkpoint(checkpoint, state)
