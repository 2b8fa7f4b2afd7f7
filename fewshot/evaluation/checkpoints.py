"""Evaluating checkpoints: novel-class accuracy with 95% intervals, paired comparison, the JSON report,
its table and its plot. Episodes come from a seed (or a saved episode list), and the report records
which, with the checkpoint's SHA-256, so any number can be reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes.lists import load_episodes, save_episodes
from episodes.sampler import Episode
from fewshot import metrics
from fewshot.model.checkpoint import file_sha256, model_from_checkpoint
from fewshot.data.datasets import DatasetSplits, dataset_options, load_splits
from fewshot.data.splits import ClassSplit
from fewshot.runtime import current_world
from fewshot.evaluation.embedding_metrics import embedding_metrics
from fewshot.evaluation.cache import DEFAULT_MAX_BYTES, SplitEmbeddings
from fewshot.evaluation.views import shift_views, turn_views
from fewshot.evaluation.episodes import evaluate_model, evaluation_episodes
from fewshot.model.network import FewShotModel

EVAL_SPLITS = ("test", "val", "train")


def check_novel(state: dict[str, Any], dataset: str, split: ClassSplit, split_name: str, allow_seen: bool) -> None:
    """Refuse to report 'novel-class' accuracy on classes the checkpoint was trained on."""
    if state.get("dataset") != dataset:
        return  # another dataset's class names cannot overlap
    seen = set(state.get("train_classes", []))
    overlap = [name for name in split.class_names if name in seen]
    if overlap and not allow_seen:
        raise ValueError(
            f"{len(overlap)} of the {split.num_classes} classes of the {dataset} '{split_name}' split were seen in "
            f"training by this checkpoint (e.g. {', '.join(overlap[:3])}); accuracy on them is not few-shot accuracy "
            "on novel classes. Pass --allow-seen-classes to evaluate anyway."
        )


def _interval_dict(interval: metrics.Interval) -> dict[str, Any]:
    return {"mean": interval.mean, "half_width": interval.half_width, "low": interval.low, "high": interval.high,
            "method": interval.method, "n": interval.n, "confidence": interval.confidence}


def checkpoint_splits(state: dict[str, Any], *, dataset: str | None = None, split: str | None = None,
                      data_root: str | Path | None = None, image_size: int | None = None) -> DatasetSplits:
    """The class splits a checkpoint is evaluated on: its own dataset, scheme, data root and dataset
    arguments (the same preprocessing), unless another dataset is named."""
    own = state.get("dataset", "omniglot")
    dataset = dataset or own
    if dataset != own:
        return load_splits(dataset, split, data_root, image_size)
    config = state.get("config", {})
    accepted = dataset_options(dataset).parameters(dataset)
    options = {k: v for k, v in state.get("dataset_args", {}).items() if k in accepted}
    options.update({k: v for k, v in config.get("dataset_args", {}).items() if k in accepted})
    if data_root is None and config.get("data_root") and Path(config["data_root"]).is_dir():
        data_root = config["data_root"]  # where the run read its data (recorded as an absolute path)
    return load_splits(dataset, split or state.get("split_scheme"), data_root, image_size, **options)


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    split: str | None = None,
    eval_split: str = "test",
    settings: list[tuple[int, int]] = ((5, 1),),
    queries: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    data_root: str | None = None,
    device: str = "cpu",
    compare: str | Path | None = None,
    ensemble: Sequence[str | Path] = (),
    allow_seen: bool = False,
    with_embedding_metrics: bool = False,
    episode_list: str | Path | None = None,
    save_episode_lists: str | Path | None = None,
    splits: DatasetSplits | None = None,
    progress: bool = True,
    per_episode: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    test_time_shift: int = 0,
    test_time_rotations: bool = False,
    test_time_mirror: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint (and optionally a second one on identical episodes); return the report dict.

    Episodes come from `seed`, or from a saved `episode_list` (then `settings`, `queries` and
    `episodes` are those of the list). `save_episode_lists` writes each setting's seeded episodes
    as an episode list `<stem>_<ways>way<shots>shot.json`, for other models or libraries.

    Each model embeds every image the episodes touch once (at most `max_bytes` of embeddings held
    at a time), and all settings, the comparison and the embedding metrics are scored from those
    embeddings; `per_episode=True` embeds each episode's images afresh instead (same numbers).
    A compared checkpoint gets its own preprocessing (its own image size, channels and dataset
    arguments); the comparison is refused when its data does not hold the same items.

    `ensemble` names more checkpoints scored together with `checkpoint` as one model: each query goes
    to the class with the largest sum of the members' log-softmax prototype scores, every member
    embedding the images with its own preprocessing. The report's results are the ensemble's, and
    `report["ensemble"]` lists every member with its SHA-256.

    `test_time_shift` K > 0 embeds every image as the mean embedding of itself and its copies
    shifted by 1..K pixels left, right, up and down (`embed_views`), for every model evaluated.
    `test_time_rotations` and `test_time_mirror` also embed every image's quarter-turned and/or
    mirrored copies (each shift-averaged when K > 0); every image of an episode is turned alike, each
    turned copy of the episode is scored as an episode of its own, and a query's scores are summed over
    the copies: for a model trained on rotated (`mirrors=true`: mirrored) classes, each copy is a look
    it was trained on.
    """
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"unknown evaluation split {eval_split!r}; expected one of {', '.join(EVAL_SPLITS)}")
    device_t = torch.device(device)
    model, state = model_from_checkpoint(checkpoint, device_t)
    if splits is None:
        splits = checkpoint_splits(state, dataset=dataset, split=split, data_root=data_root,
                                   image_size=model.spec.image_size)
    dataset = splits.dataset
    target = splits.get(eval_split)
    check_novel(state, dataset, target, eval_split, allow_seen)
    models, targets = [model], [target]
    members: list[dict[str, Any]] = []
    for path in ensemble:
        member, member_state = model_from_checkpoint(path, device_t)
        check_novel(member_state, dataset, target, eval_split, allow_seen)
        models.append(member)
        targets.append(comparison_split(member, member_state, state, splits, eval_split, path, data_root))
        members.append({"checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "spec": member_state["spec"]})
    if members and with_embedding_metrics:
        raise ValueError("embedding metrics describe one model's embeddings, not an ensemble's; "
                         "evaluate each member alone with --embedding-metrics")
    turns = turn_views(test_time_rotations, test_time_mirror)
    views_on = bool(test_time_shift) or len(turns) > 1
    if test_time_shift:
        shift_views(test_time_shift)
    if views_on and with_embedding_metrics:
        raise ValueError("test-time views (shifts, rotations, mirrors) apply to the accuracy evaluation; the embedding "
                         "metrics use each model's own embeddings, so evaluate them without views")
    size = len(models)  # the evaluated model: `checkpoint` alone, or it and the ensemble members
    other_state = None
    if compare is not None:
        other, other_state = model_from_checkpoint(compare, device_t)
        check_novel(other_state, dataset, target, eval_split, allow_seen)
        models.append(other)
        targets.append(comparison_split(other, other_state, state, splits, eval_split, compare, data_root))

    fixed: list[Episode] | None = None
    if episode_list is not None:
        fixed = load_episodes(episode_list, target)
        shapes = sorted({(e.ways, e.shots, e.queries) for e in fixed})
        if len(shapes) != 1:
            raise ValueError(f"{episode_list} mixes episode shapes (ways, shots, queries) {shapes}; evaluate one shape per list")
        (ways, shots, queries), = shapes
        settings, episodes = [(ways, shots)], len(fixed)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
        "spec": model.spec.to_dict(), "dataset": dataset, "split": splits.scheme, "eval_split": eval_split,
        "classes": target.num_classes, "queries": queries,
        "episode_source": ({"kind": "seed", "seed": seed, "sampler": "episodes.EpisodeSampler"} if fixed is None else
                           {"kind": "list", "path": str(episode_list), "sha256": file_sha256(episode_list)}),
        "results": [],
    }
    if members:
        report["ensemble"] = [{"checkpoint": str(checkpoint), "checkpoint_sha256": report["checkpoint_sha256"],
                               "spec": report["spec"]}, *members]
    if compare is not None:
        report["compare"] = {"checkpoint": str(compare), "checkpoint_sha256": file_sha256(compare),
                             "spec": other_state["spec"], "results": []}
    smallest = int(np.bincount(target.labels).min())
    for ways, shots in settings:  # every setting checked before any is evaluated
        if ways > target.num_classes:
            raise ValueError(f"--ways {ways} exceeds the {target.num_classes} classes of the {dataset} {eval_split} split")
        if shots + queries > smallest:
            raise ValueError(f"--shots {shots} + --queries {queries} needs {shots + queries} images per class, but classes "
                             f"of the {dataset} {eval_split} split have as few as {smallest}")
    if views_on and (per_episode or not all(m.embeds_independently for m in models)):
        raise ValueError("test-time views (shifts, rotations, mirrors) embed each image once, so they cannot be combined "
                         "with per-episode embedding (--per-episode, or a model whose embeddings depend on the episode)")
    caches = [SplitEmbeddings(m, t, device_t, max_bytes=max_bytes, progress=progress, max_shift=test_time_shift,
                              turns=turns) for m, t in zip(models, targets)]
    if test_time_shift:
        report["test_time_shift"] = {"max_shift": test_time_shift, "views": shift_views(test_time_shift)}
    if len(turns) > 1:
        report["test_time_turns"] = {"rotations": test_time_rotations, "mirror": test_time_mirror,
                                     "copies": [list(t) for t in turns]}
    for ways, shots in settings:
        chosen = fixed if fixed is not None else evaluation_episodes(target, ways, shots, queries, episodes, seed)
        if save_episode_lists is not None and fixed is None and current_world().is_main:
            base = Path(save_episode_lists)
            path = base.with_name(f"{base.stem}_{ways}way{shots}shot.json")
            save_episodes(path, chosen, target, metadata={"dataset": dataset, "split": splits.scheme, "eval_split": eval_split,
                                                          "seed": seed, "ways": ways, "shots": shots, "queries": queries})
            report.setdefault("saved_episode_lists", []).append(str(path))
        options = dict(episode_list=chosen, device=device_t, progress=progress, per_episode=per_episode)
        accuracies = np.stack([
            # One model is scored by its own logits (the path every earlier report used), several as an ensemble.
            evaluate_model(models[0], target, ways, shots, queries, embeddings=caches[:1], **options) if size == 1 else
            evaluate_model(models[:size], target, ways, shots, queries, embeddings=caches[:size], splits=targets[:size],
                           ensemble=True, **options),
            *(evaluate_model(m, t, ways, shots, queries, embeddings=[cache], **options)
              for m, t, cache in zip(models[size:], targets[size:], caches[size:])),
        ])
        normal = metrics.confidence_interval(accuracies[0], "normal")
        student = metrics.confidence_interval(accuracies[0], "t")
        report["results"].append({
            "ways": ways, "shots": shots, "episodes": episodes, "accuracy": normal.mean, "ci95": normal.half_width,
            "normal": _interval_dict(normal), "t": _interval_dict(student),
            "per_episode": accuracies[0].tolist(),
        })
        if compare is not None:
            other_interval = metrics.confidence_interval(accuracies[1], "normal")
            paired = metrics.paired_comparison(accuracies[0], accuracies[1])
            report["compare"]["results"].append({
                "ways": ways, "shots": shots, "accuracy": other_interval.mean, "ci95": other_interval.half_width,
                "difference": _interval_dict(paired.difference), "t_statistic": paired.t_statistic,
                "p_value": paired.p_value, "wilcoxon_p_value": paired.wilcoxon_p_value,
            })
    if with_embedding_metrics:
        report["embedding_metrics"] = embedding_metrics(model, splits.val, target, device_t, seed=seed,
                                                        test_embeddings=caches[0])
    report["embedding"] = {
        "path": "per-episode" if per_episode else "embed-once",
        "images_embedded": [cache.embedded for cache in caches],
        "matrix_bytes": [cache.nbytes for cache in caches],
    }
    return report


def comparison_split(other: FewShotModel, other_state: dict[str, Any], state: dict[str, Any], splits: DatasetSplits,
                     eval_split: str, compare: str | Path, data_root: str | Path | None) -> ClassSplit:
    """The evaluation split as the compared model was trained to see it: the same items, prepared with
    its own preprocessing (image size, channels, dataset arguments). Refuses a comparison whose data
    would not hold the same items, or whose images the other model cannot take."""
    target = splits.get(eval_split)
    same_shape = (other.spec.image_size, other.spec.in_channels) == (splits.image_size, splits.in_channels)
    other_dataset = other_state.get("dataset", "omniglot")
    if other_dataset != splits.dataset:
        if same_shape:
            return target  # a model of another dataset, evaluated on these images as they are
        raise ValueError(f"cannot compare {compare}: it takes {other.spec.in_channels}-channel {other.spec.image_size}px "
                         f"{other_dataset} images, and the evaluation data is {splits.dataset} at "
                         f"{splits.in_channels} channel(s), {splits.image_size}px")
    if same_shape and other_state.get("dataset_args", {}) == splits.options:
        return target
    other_splits = checkpoint_splits({**other_state, "split_scheme": splits.scheme}, data_root=data_root,
                                     image_size=other.spec.image_size)
    other_target = other_splits.get(eval_split)
    if other_target.class_names != target.class_names or not np.array_equal(other_target.item_ids, target.item_ids):
        raise ValueError(f"cannot compare {compare} on identical episodes: prepared as it was trained "
                         f"({other.spec.image_size}px, {other.spec.in_channels} channel(s), dataset arguments "
                         f"{other_state.get('dataset_args', {})}), its {eval_split} split holds other classes or items")
    return other_target
