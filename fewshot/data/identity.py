"""What identifies a class and a split, so that novel classes stay novel when the data changes.

- A class is identified by its content: `class_fingerprint` is the SHA-256 over the sorted SHA-256s of its
  image files, so renaming, copying or linking a class folder keeps its fingerprint, and adding, removing
  or editing one of its images changes it. Datasets that hash their files (the "folder" dataset) record one
  per class in `DatasetSplits.fingerprints`.
- A split is identified by the class lists a run recorded when it started (splits.json and every checkpoint
  hold them with the fingerprints): `apply_split_record` rebuilds the splits from that record, never from
  the data as it is now, and refuses a class that vanished or changed since; a class that appeared is
  refused too, unless the dataset option `new_classes=ignore` leaves it out. A class is never moved
  between splits.
- The splits of one load share no image: `check_disjoint_images` refuses the same file content in two
  splits (a test class copied from or linked to a training class), naming both classes and a file of each.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from fewshot.data.datasets import DatasetSplits
from fewshot.data.splits import ClassSplit

#: The dataset option (`--dataset-arg new_classes=...`) that says what a recorded split does with classes
#: that appeared in the data since the run started; it changes no numbers, so a resume may add it.
NEW_CLASSES_OPTION = "new_classes"
NEW_CLASSES_POLICIES = ("refuse", "ignore")
RECORDED_SPLITS = ("train", "val", "test")
_LISTED = 5  # class names shown per kind in an error


def class_fingerprint(file_hashes: Iterable[str]) -> str:
    """The content fingerprint of one class: SHA-256 over its files' sorted SHA-256 hex digests (names and
    order of the files play no part)."""
    return hashlib.sha256("\n".join(sorted(file_hashes)).encode()).hexdigest()


def check_new_classes_policy(value: Any) -> str:
    """`value` as a new-classes policy ("refuse" or "ignore"), or a ValueError naming it."""
    if value not in NEW_CLASSES_POLICIES:
        raise ValueError(f"{NEW_CLASSES_OPTION} must be one of {', '.join(NEW_CLASSES_POLICIES)}, got {value!r}")
    return str(value)


def check_disjoint_images(files: Mapping[str, Mapping[str, Sequence[tuple[str, str]]]], where: str) -> None:
    """Refuse the same image content in two splits. `files` is {split: {class: [(file, sha256), ...]}}; the
    error names both classes and a file of each, and how many images are shared."""
    owner: dict[str, tuple[str, str, str]] = {}  # sha256 -> (split, class, file) where it was first seen
    shared: list[tuple[tuple[str, str, str], tuple[str, str, str]]] = []
    for split, classes in files.items():
        for name, entries in classes.items():
            for path, digest in entries:
                first = owner.setdefault(digest, (split, name, path))
                if first[0] != split:
                    shared.append((first, (split, name, path)))
    if shared:
        (split_a, class_a, file_a), (split_b, class_b, file_b) = shared[0]
        pairs = sorted({(a[1], b[1]) for a, b in shared})
        more = f" ({len(shared)} shared images in all, between the classes {_pairs(pairs)})" if len(shared) > 1 else ""
        raise ValueError(
            f"{where}: the {split_a} class {class_a!r} and the {split_b} class {class_b!r} hold the same image "
            f"({file_a} and {file_b}){more}. Splits must not share images, or the 'novel' classes are not novel: "
            "remove the copy (or the link), or give each image to one class only")


def _pairs(pairs: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{a!r} and {b!r}" for a, b in pairs[:_LISTED])
    return shown + (", ..." if len(pairs) > _LISTED else "")


def split_record(splits: DatasetSplits) -> dict[str, Any]:
    """The record that identifies `splits`: {"classes": {split: [names]}, "fingerprints": {name: sha256}}
    (fingerprints empty when the dataset has none)."""
    classes = {name: list(splits.get(name).class_names) for name in RECORDED_SPLITS}
    listed = {name for names in classes.values() for name in names}
    return {"classes": classes, "fingerprints": {k: v for k, v in splits.fingerprints.items() if k in listed}}


def _listed(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names[:_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")


def _merged(splits: DatasetSplits) -> ClassSplit:
    """Every class of train, val and test as one split over the shared images (classes in that order)."""
    parts = [splits.get(name) for name in RECORDED_SPLITS]
    if any(part.images is not parts[0].images for part in parts):
        raise ValueError(f"the {splits.dataset} splits do not share one image tensor, so classes cannot be regrouped")
    offsets = np.cumsum([0] + [part.num_classes for part in parts])
    rotated = any(part.rotation.any() for part in parts)
    return ClassSplit(parts[0].images, np.concatenate([part.labels + offset for part, offset in zip(parts, offsets)]),
                      [name for part in parts for name in part.class_names],
                      np.concatenate([part.item_ids for part in parts]),
                      image_index=np.concatenate([part.image_index for part in parts]),
                      rotation=np.concatenate([part.rotation for part in parts]) if rotated else None)


def apply_split_record(splits: DatasetSplits, record: Mapping[str, Any], where: str) -> DatasetSplits:
    """`splits` with the recorded class split (`split_record`'s form), checked against the data as it is now.

    Refused, naming the classes: a recorded class that is gone (or renamed: found by its fingerprint under
    another name), a class whose content changed, a class now in another split than recorded, and a class
    that appeared since, unless `splits.options["new_classes"] == "ignore"` (then it is left out, with a
    warning). Returns `splits` itself when the data is as recorded. `where` names the record in errors."""
    classes: dict[str, list[str]] = {name: list(record["classes"][name]) for name in RECORDED_SPLITS}
    recorded_prints: dict[str, str] = dict(record.get("fingerprints") or {})
    policy = check_new_classes_policy(splits.options.get(NEW_CLASSES_OPTION, "refuse"))
    current = {name: split for split in RECORDED_SPLITS for name in splits.get(split).class_names}
    recorded = {name: split for split, names in classes.items() for name in names}
    gone = [name for name in recorded if name not in current]
    new = [name for name in current if name not in recorded]
    changed = [name for name in recorded if name in current and name in recorded_prints
               and name in splits.fingerprints and recorded_prints[name] != splits.fingerprints[name]]
    problems = []
    if gone:
        by_print = {fingerprint: name for name, fingerprint in splits.fingerprints.items() if name in new}
        renamed = [f"{name!r} (now named {by_print[recorded_prints[name]]!r})" for name in gone
                   if recorded_prints.get(name) in by_print]
        problems.append(f"{len(gone)} recorded class(es) are no longer in the data: {_listed(gone)}"
                        + (f"; renamed: {', '.join(renamed[:_LISTED])}" if renamed else ""))
    if changed:
        problems.append(f"{len(changed)} class(es) changed content (images added, removed or edited): "
                        f"{_listed(changed)}")
    if new and policy == "refuse":
        problems.append(f"{len(new)} class(es) appeared in the data: {_listed(new)} (the dataset option "
                        f"{NEW_CLASSES_OPTION}=ignore leaves new classes out)")
    if not new:
        moved = [f"{name!r} ({recorded[name]} -> {current[name]})" for name in recorded
                 if name in current and current[name] != recorded[name]]
        if moved:
            problems.append(f"{len(moved)} class(es) are in another split than recorded: {', '.join(moved[:_LISTED])}")
    if problems:
        raise ValueError(
            f"the data changed since the run's class split was recorded in {where}: " + "; ".join(problems) +
            ". The recorded split is the run's split (a novel class must stay novel): restore the data as it was, "
            "or start a new run on the data as it is now")
    if not new:
        return splits  # the data as recorded: the split the loader made is the recorded one
    warnings.warn(f"{NEW_CLASSES_OPTION}=ignore: left out {len(new)} class(es) that appeared since the run's split "
                  f"was recorded in {where}: {_listed(new)}", stacklevel=2)
    full = _merged(splits)
    index = {name: i for i, name in enumerate(full.class_names)}
    ids = {split: np.array([index[name] for name in names], dtype=np.int64) for split, names in classes.items()}
    train, val, test = (full.subset(ids[split]) for split in RECORDED_SPLITS)
    trainval = None if splits.trainval is None else full.subset(np.concatenate([ids["train"], ids["val"]]))
    fingerprints = {name: fp for name, fp in splits.fingerprints.items() if name in recorded}
    return replace(splits, train=train, val=val, test=test, trainval=trainval, fingerprints=fingerprints)
