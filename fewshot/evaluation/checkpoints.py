"""Evaluating checkpoints: novel-class accuracy with 95% intervals, paired comparison, the JSON report,
its table and its plot. Episodes come from a seed (or a saved episode list), and the report records
which, with the checkpoint's SHA-256, so any number can be reproduced exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from episodes.lists import load_episodes, save_episodes
from episodes.sampler import Episode
from fewshot import metrics
from fewshot.model.checkpoint import file_sha256, model_from_checkpoint
from fewshot.data.datasets import DATASETS, DatasetSplits, dataset_options, load_splits
from fewshot.data.identity import apply_split_record
from fewshot.data.splits import ClassSplit, drop_small_classes
from fewshot.runtime import current_world
from fewshot.evaluation.embedding_metrics import embedding_metrics
from fewshot.evaluation.base_mean import BaseClassMean
from fewshot.evaluation.cache import SplitEmbeddings
from fewshot.evaluation.views import compose_views
from fewshot.evaluation.episodes import (Candidate, Ensemble, Scorer, episode_distribution, evaluation_episodes,
                                         metadataset_evaluation, score_episodes, within_parent_evaluation)
from fewshot.evaluation.heads import build_head, head_label
from fewshot.evaluation.settings import EVAL_SPLITS, EvaluationSettings, episode_list_path
from fewshot.model.network import FewShotModel

__all__ = ["EVAL_SPLITS", "BaseClassMean", "adapt_split", "check_novel", "checkpoint_base_split", "checkpoint_splits",
           "comparison_split", "evaluate_checkpoint"]

#: ITU-R BT.601 luma weights of R, G and B: how a colour image becomes the gray one a 1-channel model takes.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Images converted at a time by `adapt_split` (bounds the float copy).
ADAPT_CHUNK = 1024


def adapt_split(split: ClassSplit, in_channels: int, image_size: int,
                dataset: str = "the evaluation data") -> tuple[ClassSplit, dict[str, Any] | None]:
    """`split` with its images made what a model taking `in_channels`-channel `image_size`px images expects,
    and a record of what was done (None when nothing was): the cross-domain evaluation of a checkpoint on
    data of another kind.

    Gray images go to 3 channels by repeating the gray channel; colour (RGB) images go to 1 channel by their
    luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, rounded); images of another side are resized to
    `image_size` x `image_size` (bilinear, antialiased). Other channel counts are refused with a ValueError.
    The items, labels, names and rotations stay those of `split`, so the episodes are the same.
    """
    images = split.images
    channels = 1 if images.dim() == 3 else int(images.shape[1])
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if channels == in_channels and (height, width) == (image_size, image_size):
        return split, None
    if channels != in_channels and (channels, in_channels) not in ((1, 3), (3, 1)):
        raise ValueError(f"cannot evaluate a model taking {in_channels}-channel images on {dataset}, whose images have "
                         f"{channels} channel(s): only gray -> 3 channels (repeated) and RGB -> gray (luminance) are "
                         "adapted")
    steps = []
    if channels != in_channels:
        steps.append("gray repeated to 3 channels" if in_channels == 3
                     else "RGB to gray by luminance (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B)")
    if (height, width) != (image_size, image_size):
        steps.append(f"resized from {height}x{width} to {image_size}x{image_size} (bilinear, antialiased)")
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    chunks = []
    for start in range(0, len(images), ADAPT_CHUNK):
        chunk = images[start:start + ADAPT_CHUNK].float()
        chunk = chunk.unsqueeze(1) if chunk.dim() == 3 else chunk
        if (height, width) != (image_size, image_size):
            chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear", antialias=True,
                                  align_corners=False)
        if channels == 1 and in_channels == 3:
            chunk = chunk.expand(-1, 3, -1, -1)
        elif channels == 3 and in_channels == 1:
            chunk = (chunk * weights).sum(dim=1, keepdim=True)
        chunk = chunk.round().clamp(0, 255).to(torch.uint8)
        chunks.append(chunk[:, 0] if in_channels == 1 else chunk)  # one channel: [n,H,W], as datasets store it
    shape = (0, image_size, image_size) if in_channels == 1 else (0, in_channels, image_size, image_size)
    adapted = torch.cat(chunks) if chunks else torch.zeros(shape, dtype=torch.uint8)
    record = {"from": {"channels": channels, "size": [height, width]},
              "to": {"channels": in_channels, "size": [image_size, image_size]}, "steps": steps}
    return ClassSplit(adapted, split.labels, split.class_names, split.item_ids, image_index=split.image_index,
                      rotation=split.rotation), record


def check_novel(state: dict[str, Any], dataset: str, split: ClassSplit, split_name: str, allow_seen: bool,
                fingerprints: dict[str, str] | None = None) -> None:
    """Refuse to report 'novel-class' accuracy on classes the checkpoint was trained on.

    Classes are compared by content where both the checkpoint and `fingerprints` ({class name: content
    fingerprint} of the evaluated data) have fingerprints, so a renamed, copied or linked training class is
    recognised under any name and in any dataset; otherwise (checkpoints of earlier versions, datasets
    without fingerprints) by name within the same dataset."""
    if allow_seen:
        return
    recorded = state.get("class_fingerprints") or {}
    trained = {recorded[name]: name for name in state.get("train_classes", []) if name in recorded}
    if trained and fingerprints:
        overlap = [f"{name} (trained on as {trained[fingerprints[name]]})" if trained[fingerprints[name]] != name
                   else name for name in split.class_names if fingerprints.get(name) in trained]
    elif state.get("dataset") != dataset:
        return  # another dataset's class names cannot overlap
    else:
        seen = set(state.get("train_classes", []))
        overlap = [name for name in split.class_names if name in seen]
    if overlap:
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
    own = state.get("dataset")
    if own is None and dataset is None:
        raise ValueError("the checkpoint records no dataset; name the evaluation data (--dataset NAME)")
    dataset = dataset or own
    if dataset != own:
        return load_splits(dataset, split, data_root, image_size)
    config = state.get("config", {})
    accepted = dataset_options(dataset).parameters(dataset)
    options = {k: v for k, v in state.get("dataset_args", {}).items() if k in accepted}
    options.update({k: v for k, v in config.get("dataset_args", {}).items() if k in accepted})
    recorded = config.get("data_root")
    moved = data_root is None and bool(recorded) and not Path(recorded).is_dir()
    if data_root is None and recorded and not moved:
        data_root = recorded  # where the run read its data (recorded as an absolute path)
    try:
        return with_recorded_split(state, split, load_splits(dataset, split or state.get("split_scheme"), data_root,
                                                             image_size, **options))
    except (ValueError, FileNotFoundError) as error:
        if not moved:
            raise
        # The default data root was tried instead: say where the run's data was, so the user can point at it.
        message = (f"{error}\nThe run read its data from {recorded}, which is no longer a folder; pass --data-root "
                   "(data_root=) with where that data is now")
        raise (FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError)(message) from None


def _dropped_classes(splits: DatasetSplits, eval_split: str, min_images: int | None) -> dict[str, Any]:
    """The report's record of the `eval_split` classes left out for their size: {"dataset": ...} by the data's
    own min_images option (a run's --min-images-per-class, which the checkpoint's dataset arguments repeat),
    {"evaluation": ...} by `min_images`; each {"min_images": N, "classes": [{"name": ..., "images": count}]}."""
    def listed(threshold: int, classes: dict[str, int]) -> dict[str, Any]:
        return {"min_images": threshold,
                "classes": [{"name": name, "images": count} for name, count in classes.items()]}

    record: dict[str, Any] = {}
    if splits.dropped_classes is not None and eval_split in splits.dropped_classes["classes"]:
        record["dataset"] = listed(splits.dropped_classes["min_images"], splits.dropped_classes["classes"][eval_split])
    if min_images is not None:
        record["evaluation"] = listed(min_images, drop_small_classes(splits.get(eval_split), min_images)[1])
    return record


def checkpoint_base_split(state: dict[str, Any], splits: DatasetSplits | None = None, *,
                          data_root: str | Path | None = None, image_size: int | None = None) -> ClassSplit:
    """The classes a checkpoint was trained on (its base classes: its `train_split`, "train" or "trainval"),
    prepared as it was trained: taken from `splits` when those are its own dataset's, else loaded
    (`checkpoint_splits`). Refused when the checkpoint records no dataset or when the classes found are not the
    ones it records having trained on."""
    own = state.get("dataset")
    if own is None:
        raise ValueError("the checkpoint records no dataset, so its training (base) classes are unknown; a head that "
                         "needs their mean embedding cannot be used with it")
    name = state.get("config", {}).get("train_split", "train")
    source = splits if splits is not None and splits.dataset == own else checkpoint_splits(
        state, data_root=data_root, image_size=image_size)
    base = source.get(name)
    trained = state.get("train_classes")
    if trained and sorted(base.class_names) != sorted(trained):
        raise ValueError(f"the {own} {name} split found now holds {base.num_classes} classes, not the {len(trained)} "
                         "the checkpoint was trained on, so their mean embedding cannot be computed; point --data-root "
                         "(data_root=) at the run's data")
    return base


def with_recorded_split(state: dict[str, Any], scheme: str | None, splits: DatasetSplits) -> DatasetSplits:
    """`splits` (the checkpoint's own dataset under `scheme`) with the class split the checkpoint recorded,
    never one re-derived from the data as it is now, when they are the data the run read (the same root);
    as loaded for data elsewhere (another folder: `check_novel` then compares classes by content) and for
    checkpoints of earlier versions, which record no split."""
    if "split_classes" not in state or (scheme is not None and scheme != state.get("split_scheme")):
        return splits
    if splits.options.get("root") != state.get("dataset_args", {}).get("root"):
        return splits
    record = {"classes": state["split_classes"], "fingerprints": state.get("class_fingerprints") or {}}
    return apply_split_record(splits, record, "the checkpoint")


def evaluate_checkpoint(
    checkpoint: str | Path,
    settings: EvaluationSettings | None = None,
    *,
    compare: str | Path | None = None,
    ensemble: Sequence[str | Path] = (),
    dataset: str | None = None,
    split: str | None = None,
    data_root: str | Path | None = None,
    splits: DatasetSplits | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate a checkpoint (and optionally a second one on identical episodes); return the report dict.

    How is `settings` (`EvaluationSettings`; `overrides` are its fields by name, e.g. `episodes=100`);
    what is the checkpoint, the `compare`d one, the `ensemble` members, and the data: the checkpoint's own
    dataset, scheme and data root unless `dataset`, `split`, `data_root` or ready `splits` are given.

    Episodes come from `settings.seed`, or from a saved `settings.episode_list` (then its shape replaces
    `ways_shots`, `queries` and `episodes`). `settings.save_episode_lists` writes each setting's seeded
    episodes as an episode list `<stem>_<ways>way<shots>shot.json`, for other models or libraries.

    Each model embeds every image the episodes touch once (at most `max_bytes` of embeddings held
    at a time), and all settings, the comparison and the embedding metrics are scored from those
    embeddings; `per_episode=True` embeds each episode's images afresh instead (same numbers).
    A compared checkpoint gets its own preprocessing (its own image size, channels and dataset
    arguments); the comparison is refused when its data does not hold the same items.

    `ensemble` names more checkpoints scored together with `checkpoint` as one model: each query goes
    to the class with the largest sum of the members' log-softmax prototype scores, every member
    embedding the images with its own preprocessing. The report's results are the ensemble's, and
    `report["ensemble"]` lists every member with its SHA-256.

    `settings.views` applies test-time views (`fewshot.evaluation.views`) to every model evaluated, made
    for the evaluated dataset's images: {"shift": K} embeds every image as the mean embedding of itself
    and its copies shifted by 1..K pixels left, right, up and down (the border filled with the dataset's
    background); {"rotations": True} and {"mirror": True} also embed every image's quarter-turned and/or
    mirrored copies; every image of an episode is turned alike, each turned copy of the episode is scored
    as an episode of its own, and a query's scores are summed over the copies: for a model trained on
    rotated (`mirrors=true`: mirrored) classes, each copy is a look it was trained on.

    `settings.episode_kind` chooses the episodes: "fixed" (the default, above), "within-parent" (Lake's
    within-alphabet protocol: each (ways, shots) setting's episodes take their classes from one alphabet,
    the first part of the class names; rotated classes restricted to rot000) or "meta-dataset"
    (Meta-Dataset's variable-way, variable-shot, imbalanced episodes, one result row with the ways and
    shots distribution).

    Evaluated on data of another kind than it was trained on (cross-domain: `dataset`, `data_root`), the
    checkpoint's images are adapted where they can be (`adapt_split`: gray <-> RGB, size) and the report
    records how under "input_adaptation"; other channel counts are refused.
    """
    settings = EvaluationSettings.of(settings, overrides, progress=True)
    eval_split = settings.eval_split
    device = torch.device(settings.device)
    main_model, state = model_from_checkpoint(checkpoint, device)
    if splits is None:
        splits = checkpoint_splits(state, dataset=dataset, split=split, data_root=data_root,
                                   image_size=main_model.spec.image_size)
    dataset = splits.dataset
    dropped = _dropped_classes(splits, eval_split, settings.min_images)
    if settings.min_images is not None:  # the evaluated classes only: comparisons and members take the same
        kept = drop_small_classes(splits.get(eval_split), settings.min_images)[0]
        if kept.num_classes < 2:
            raise ValueError(f"--min-images-per-class {settings.min_images} leaves {kept.num_classes} of the "
                             f"{splits.get(eval_split).num_classes} classes of the {dataset} {eval_split} split, whose "
                             f"largest holds {int(splits.get(eval_split).class_counts().max())} images; lower it")
        splits = replace(splits, **{eval_split: kept})
    target = splits.get(eval_split)
    check_novel(state, dataset, target, eval_split, settings.allow_seen, splits.fingerprints)
    # Cross-domain: the checkpoint takes the images as it was trained to see them (channels, size) where they can be.
    target, adaptation = adapt_split(target, main_model.spec.in_channels, main_model.spec.image_size,
                                     f"the {dataset} {eval_split} split")
    model = Candidate("model", main_model, target)
    # Test-time heads: one candidate each, sharing the model's embeddings; "prototype" is `model` itself.
    heads: list[Candidate] = []
    if settings.heads:
        if compare is not None or ensemble:
            raise ValueError("test-time heads (--head) are compared on one checkpoint; --compare and --ensemble "
                             "compare checkpoints: run them separately")
        mean = BaseClassMean(main_model, lambda: checkpoint_base_split(state, splits, data_root=data_root,
                                                                       image_size=main_model.spec.image_size),
                             device, settings.batch_size)
        heads = [Candidate(head_label(name, arguments), main_model, target, head=build_head(name, **arguments),
                           base_mean=mean)
                 for name, arguments in settings.heads if head_label(name, arguments) != "prototype"]
    members: list[Candidate] = []
    member_records: list[dict[str, Any]] = []
    for path in ensemble:
        member, member_state = model_from_checkpoint(path, device)
        check_novel(member_state, dataset, target, eval_split, settings.allow_seen, splits.fingerprints)
        members.append(Candidate(f"member {len(members) + 1}", member,
                                 comparison_split(member, member_state, state, splits, eval_split, path, data_root)))
        member_records.append({"checkpoint": str(path), "checkpoint_sha256": file_sha256(path),
                               "spec": member_state["spec"]})
    if members and settings.embedding_metrics:
        raise ValueError("embedding metrics describe one model's embeddings, not an ensemble's; "
                         "evaluate each member alone with --embedding-metrics")
    views = compose_views(settings.views, DATASETS.get_or_raise(dataset))
    if views.on and (adapting := [c.name for c in heads if c.head.needs_images]):
        raise ValueError(f"the head(s) {', '.join(adapting)} adapt the model on each episode's images, so test-time "
                         "views (shifts, rotations, mirrors), which embed each image once, cannot apply to them")
    if views.on and settings.embedding_metrics:
        raise ValueError("test-time views (shifts, rotations, mirrors) apply to the accuracy evaluation; the embedding "
                         "metrics use each model's own embeddings, so evaluate them without views")
    # The evaluated scorer: the checkpoint alone, or it and the ensemble members as one model.
    evaluated: Scorer = Ensemble("ensemble", [model, *members]) if members else model
    compared: Candidate | None = None
    other_state = None
    if compare is not None:
        other, other_state = model_from_checkpoint(compare, device)
        check_novel(other_state, dataset, target, eval_split, settings.allow_seen, splits.fingerprints)
        compared = Candidate("compare", other,
                             comparison_split(other, other_state, state, splits, eval_split, compare, data_root))

    ways_shots, queries, episodes = settings.ways_shots, settings.queries, settings.episodes
    kind = settings.episode_kind
    if kind != "fixed" and (settings.episode_list is not None or settings.save_episode_lists is not None):
        raise ValueError(f"{kind} episodes are drawn from the seed; they cannot be combined with an episode list "
                         "(--episode-list / --save-episodes)")
    fixed: list[Episode] | None = None
    if settings.episode_list is not None:
        fixed = load_episodes(settings.episode_list, target)
        shapes = sorted({(e.ways, e.shots, e.queries) for e in fixed})  # lists hold balanced episodes only
        if len(shapes) != 1:
            raise ValueError(f"{settings.episode_list} mixes episode shapes (ways, shots, queries) {shapes}; "
                             "evaluate one shape per list")
        (ways, shots, queries), = shapes
        ways_shots, episodes = [(ways, shots)], len(fixed)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
        "spec": main_model.spec.to_dict(), "dataset": dataset, "split": splits.scheme, "eval_split": eval_split,
        "classes": target.num_classes, "queries": queries,
        "episode_source": ({"kind": "seed", "seed": settings.seed, "sampler": "episodes.EpisodeSampler"} if fixed is None
                           else {"kind": "list", "path": str(settings.episode_list),
                                 "sha256": file_sha256(settings.episode_list)}),
        "results": [],
    }
    if kind in ("within-parent", "meta-dataset"):
        report["episode_source"] = {"kind": kind, "seed": settings.seed}  # completed by each setting's sampler
        report["queries"] = queries if kind == "within-parent" else "variable"
    if settings.query_dirichlet is not None:  # per-class counts vary; `queries` stays the mean per class
        report["episode_source"]["query_dirichlet"] = settings.query_dirichlet
    if dropped:
        report["dropped_classes"] = dropped
    if adaptation is not None:
        report["input_adaptation"] = {"trained_on": state.get("dataset"), "evaluated_on": dataset, **adaptation}
    if members:
        report["ensemble"] = [{"checkpoint": str(checkpoint), "checkpoint_sha256": report["checkpoint_sha256"],
                               "spec": report["spec"]}, *member_records]
    if compare is not None:
        report["compare"] = {"checkpoint": str(compare), "checkpoint_sha256": file_sha256(compare),
                             "spec": other_state["spec"], "results": []}
    smallest = int(np.bincount(target.labels).min())
    checked = ways_shots
    if kind == "meta-dataset":
        ways_shots, checked = [("variable", "variable")], []  # one row; the sampler checks the classes itself
    for ways, shots in checked:  # every setting checked before any is evaluated
        if ways > target.num_classes:
            raise ValueError(f"--ways {ways} exceeds the {target.num_classes} classes of the {dataset} {eval_split} split")
        if shots + queries > smallest:
            small = int((np.bincount(target.labels) < shots + queries).sum())
            larger = (f", or evaluate on the {target.num_classes - small} larger classes only with "
                      f"--min-images-per-class {shots + queries}" if target.num_classes - small >= ways else "")
            raise ValueError(f"--shots {shots} + --queries {queries} needs {shots + queries} images per class, but classes "
                             f"of the {dataset} {eval_split} split have as few as {smallest} ({small} of its "
                             f"{target.num_classes} classes have fewer): " +
                             (f"lower --queries to {smallest - shots} or less" if smallest > shots
                              else f"lower --shots below {smallest}") + larger)
    if views.on and settings.per_episode:
        raise ValueError("test-time views (shifts, rotations, mirrors) embed each image once, so they cannot be combined "
                         "with per-episode embedding (--per-episode)")
    candidates = [model, *members, *([compared] if compared else [])]
    for candidate in candidates:
        candidate.embeddings = SplitEmbeddings(candidate.model, candidate.split, device, batch_size=settings.batch_size,
                                               max_bytes=settings.max_bytes, progress=settings.progress,
                                               views=views if views.on else None)
    for head in heads:
        head.embeddings = model.embeddings  # embedded once, scored by every head on identical episodes
    if any(c.head.needs_base_mean for c in heads):
        mean()  # now, so that no head's time per episode counts it
    report.update(views.report())
    if settings.heads:
        report["heads"] = [{"head": "prototype", "name": "prototype", "args": {}, "transductive": False,
                            "reference": True, "results": []}]
        report["heads"] += [{"head": c.name, "name": name, "args": arguments, "transductive": c.head.transductive,
                             "reference": False, "results": []}
                            for c, (name, arguments) in zip(heads, [h for h in settings.heads
                                                                    if head_label(*h) != "prototype"])]
    scorers: list[Scorer] = [evaluated, *heads, *([compared] if compared else [])]
    for ways, shots in ways_shots:
        source: dict[str, Any] | None = None
        if fixed is not None:
            chosen = fixed
        elif kind == "within-parent":
            chosen, source = within_parent_evaluation(target, ways, shots, queries, episodes, settings.seed)
        elif kind == "meta-dataset":
            chosen, source = metadataset_evaluation(target, episodes, settings.seed, settings.max_ways)
        else:
            chosen = evaluation_episodes(target, ways, shots, queries, episodes, settings.seed,
                                         settings.query_dirichlet)
        if settings.save_episode_lists is not None and fixed is None and current_world().is_main:
            path = episode_list_path(settings.save_episode_lists, ways, shots)
            save_episodes(path, chosen, target, metadata={"dataset": dataset, "split": splits.scheme,
                                                          "eval_split": eval_split, "seed": settings.seed,
                                                          "ways": ways, "shots": shots, "queries": queries})
            report.setdefault("saved_episode_lists", []).append(str(path))
        timings: dict[str, float] = {}
        accuracies = score_episodes(scorers, chosen, settings, timings)
        mine = accuracies[evaluated.name]
        normal = metrics.confidence_interval(mine, "normal")
        student = metrics.confidence_interval(mine, "t")
        report["results"].append({
            "ways": ways, "shots": shots, "episodes": episodes, "accuracy": normal.mean, "ci95": normal.half_width,
            "normal": _interval_dict(normal), "t": _interval_dict(student),
            "per_episode": mine.tolist(),
        })
        if kind != "fixed" or settings.query_dirichlet is not None:
            report["results"][-1]["distribution"] = episode_distribution(chosen)
        if source is not None:
            report["episode_source"].update({k: v for k, v in source.items()
                                             if k not in ("included_parents", "excluded_parents")})
            if kind == "within-parent":
                report["results"][-1]["parents"] = {k: source[k] for k in ("included_parents", "excluded_parents")}
        if compared is not None:
            theirs = accuracies[compared.name]
            other_interval = metrics.confidence_interval(theirs, "normal")
            paired = metrics.paired_comparison(mine, theirs)
            report["compare"]["results"].append({
                "ways": ways, "shots": shots, "accuracy": other_interval.mean, "ci95": other_interval.half_width,
                "difference": _interval_dict(paired.difference), "t_statistic": paired.t_statistic,
                "p_value": paired.p_value, "wilcoxon_p_value": paired.wilcoxon_p_value,
            })
        for record, candidate in zip(report.get("heads", []), [model, *heads]):
            record["results"].append(_head_row(ways, shots, accuracies[candidate.name], mine, timings[candidate.name],
                                               reference=candidate is model))
    if heads and mean.record is not None:
        report["base_mean"] = mean.record
    if settings.embedding_metrics:
        validation = adapt_split(splits.val, main_model.spec.in_channels, main_model.spec.image_size)[0]
        report["embedding_metrics"] = embedding_metrics(main_model, validation, target, device, seed=settings.seed,
                                                        test_embeddings=model.embeddings, progress=settings.progress)
    report["embedding"] = {
        "path": "per-episode" if settings.per_episode else "embed-once",
        "images_embedded": [c.embeddings.embedded for c in candidates],
        "matrix_bytes": [c.embeddings.nbytes for c in candidates],
    }
    return report


def _head_row(ways: Any, shots: Any, accuracies: np.ndarray, prototype: np.ndarray, seconds_per_episode: float,
              reference: bool) -> dict[str, Any]:
    """A head's result on one setting: its per-episode accuracies with their intervals, the time it took per 1,000
    episodes, and (unless it is the reference) the paired difference from the prototype head's accuracies."""
    normal = metrics.confidence_interval(accuracies, "normal")
    row = {"ways": ways, "shots": shots, "episodes": len(accuracies), "accuracy": normal.mean,
           "ci95": normal.half_width, "normal": _interval_dict(normal),
           "t": _interval_dict(metrics.confidence_interval(accuracies, "t")), "per_episode": accuracies.tolist(),
           "seconds_per_1000_episodes": 1000 * seconds_per_episode}
    if not reference:
        paired = metrics.paired_comparison(accuracies, prototype)
        row.update({"difference": _interval_dict(paired.difference), "t_statistic": paired.t_statistic,
                    "p_value": paired.p_value, "wilcoxon_p_value": paired.wilcoxon_p_value})
    return row


def comparison_split(other: FewShotModel, other_state: dict[str, Any], state: dict[str, Any], splits: DatasetSplits,
                     eval_split: str, compare: str | Path, data_root: str | Path | None) -> ClassSplit:
    """The evaluation split as the compared model was trained to see it: the same items, prepared with
    its own preprocessing (image size, channels, dataset arguments). Refuses a comparison whose data
    would not hold the same items, or whose images the other model cannot take."""
    target = splits.get(eval_split)
    same_shape = (other.spec.image_size, other.spec.in_channels) == (splits.image_size, splits.in_channels)
    other_dataset = other_state.get("dataset")
    if other_dataset is None:
        raise ValueError(f"cannot compare {compare}: its checkpoint records no dataset, so its preprocessing is unknown")
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
    index = {name: i for i, name in enumerate(other_target.class_names)}
    if other_target.class_names != target.class_names and all(name in index for name in target.class_names):
        # the evaluated classes only (evaluation's min_images may have left some out); their items are checked below
        other_target = other_target.subset([index[name] for name in target.class_names])
    if other_target.class_names != target.class_names or not np.array_equal(other_target.item_ids, target.item_ids):
        raise ValueError(f"cannot compare {compare} on identical episodes: prepared as it was trained "
                         f"({other.spec.image_size}px, {other.spec.in_channels} channel(s), dataset arguments "
                         f"{other_state.get('dataset_args', {})}), its {eval_split} split holds other classes or items")
    return other_target
