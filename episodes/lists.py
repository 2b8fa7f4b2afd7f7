"""Fixed episode lists: save evaluation episodes as plain JSON keyed by class names and item ids, and
load them back against a dataset, so that two models (or two libraries) see identical episodes.

Format (UTF-8 JSON)::

    {
      "format": "episode-list",
      "version": 1,
      "metadata": {...},                      # free-form, e.g. the split, seed and sampler settings
      "episodes": [
        {
          "classes": ["Alphabet/character01/rot000", ...],     # ways class names; label = position
          "support": [["<item id>", ...], ...],               # per class, in `classes` order
          "query":   [["<item id>", ...], ...]
        },
        ...
      ]
    }

An item is identified by its class name and its item id (ids need only be unique within a class).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .sampler import Episode, as_labels

FORMAT, VERSION = "episode-list", 1


def _naming(dataset: Any, labels: Any, class_names: Any, item_ids: Any) -> tuple[np.ndarray, Any, np.ndarray]:
    """Take labels, class names and item ids from the arguments, else from the dataset's attributes."""
    if dataset is not None:
        labels = dataset.labels if labels is None else labels
        class_names = dataset.class_names if class_names is None else class_names
        item_ids = dataset.item_ids if item_ids is None else item_ids
    if labels is None or class_names is None or item_ids is None:
        raise ValueError("need labels, class_names and item_ids: pass a dataset exposing them or each one")
    labels = as_labels(labels)
    item_ids = np.asarray(item_ids).astype(str)
    if item_ids.shape != labels.shape:
        raise ValueError(f"item_ids has {len(item_ids)} entries but labels has {len(labels)}")
    return labels, class_names, item_ids


def _class_name(class_names: Sequence[str] | Mapping[int, str], label: int) -> str:
    try:
        return str(class_names[label])
    except (IndexError, KeyError):
        raise ValueError(f"class {label} has no entry in class_names") from None


def save_episodes(path: str | Path, episodes: Iterable[Episode], dataset: Any = None, *, labels: Any = None,
                  class_names: Sequence[str] | Mapping[int, str] | None = None, item_ids: Any = None,
                  metadata: Mapping[str, Any] | None = None) -> Path:
    """Write `episodes` to `path` as an episode list (see the module docstring for the format).

    Names come from `dataset.labels/.class_names/.item_ids` or from the keyword arguments;
    `class_names[label]` names a class (a sequence or a mapping).
    """
    labels, class_names, item_ids = _naming(dataset, labels, class_names, item_ids)
    records = []
    for episode in episodes:
        ways = episode.ways
        if len(episode.support) != ways * episode.support_counts.min() or len(episode.query) % ways:
            # The format (version 1) holds equal-size groups; imbalanced episodes (MetaDatasetSampler) do not fit.
            raise ValueError(f"episode {episode.index} is imbalanced (support items per class "
                             f"{episode.support_counts.tolist()}): episode lists hold only balanced episodes")
        for part, indices in (("support", episode.support), ("query", episode.query)):
            grouped = indices.reshape(ways, -1)
            mismatched = labels[grouped] != np.asarray(episode.classes)[:, None]
            if mismatched.any():
                raise ValueError(f"episode {episode.index}: {part} items {grouped[mismatched].tolist()[:10]} are not "
                                 "of their episode class: is this the dataset the episodes were drawn from?")
        records.append({
            "classes": [_class_name(class_names, int(c)) for c in episode.classes],
            "support": item_ids[episode.support.reshape(ways, -1)].tolist(),
            "query": item_ids[episode.query.reshape(ways, -1)].tolist(),
        })
    document = {"format": FORMAT, "version": VERSION, "metadata": dict(metadata or {}), "episodes": records}
    path = Path(path)
    # Written beside the target and renamed over it: a reader never sees half a list.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:  # name the list asked for, not the temporary
        if error.filename == str(temporary):
            error.filename = str(path)
        raise
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _is_item_id(value: Any) -> bool:
    # Ids are written as strings; integers are read as their decimal string (as other tools may write them).
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _check_episode(record: Any) -> str | None:
    """What is wrong with one episode of a list (None: nothing): its structure and JSON types, at least
    two distinct classes, non-empty equal-size groups, and support and query items disjoint."""
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, expected an object with \"classes\", \"support\" and \"query\""
    classes = record.get("classes")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        return f"\"classes\" must be a list of class names (strings), got {classes!r:.80}"
    if len(classes) < 2:
        return f"has {len(classes)} class(es); an episode needs at least 2 ways (one class is always 100% accurate)"
    repeated = sorted({name for name in classes if classes.count(name) > 1})
    if repeated:
        return f"names class(es) {repeated[:5]} more than once; the classes of an episode must be distinct"
    ways = len(classes)
    for part in ("support", "query"):
        groups = record.get(part)
        if not isinstance(groups, list) or len(groups) != ways or not all(isinstance(g, list) for g in groups):
            return f"needs \"{part}\" as one list of item ids per class ({ways} lists), got {groups!r:.80}"
        if not all(_is_item_id(item) for group in groups for item in group):
            bad = next(item for group in groups for item in group if not _is_item_id(item))
            return f"has {part} item {bad!r} of JSON type {type(bad).__name__}; item ids are strings"
        sizes = [len(group) for group in groups]
        if len(set(sizes)) > 1:
            return f"has {part} lists of unequal sizes {sizes}"
        if sizes[0] == 0:
            return f"has empty {part} lists; every class needs at least one {part} item"
    for name, support, query in zip(classes, record["support"], record["query"]):
        ids = [str(item) for item in support + query]
        if len(set(ids)) < len(ids):
            leaked = sorted(set(map(str, support)) & set(map(str, query)))
            if leaked:  # the answer is in the support set: accuracy would be meaningless
                return f"puts items {leaked[:5]} of class {name!r} in both support and query"
            return f"repeats items {sorted({i for i in ids if ids.count(i) > 1})[:5]} of class {name!r}"
    return None


def read_episode_list(path: str | Path) -> dict[str, Any]:
    """Read and check an episode list file; return the parsed document.

    Raises ValueError naming the file (and the episode, counted from 0 as in `Episode.index`) for anything
    that is not a well-formed list: unreadable or empty files, bad JSON, wrong JSON types, no episodes,
    1-way episodes, repeated classes, and support items repeated in the query.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"episode list {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read episode list {path}: {error}") from None
    if not text.strip():
        raise ValueError(f"episode list {path} is empty; expected a JSON episode list (\"format\": \"{FORMAT}\")")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"episode list {path} is not valid JSON ({error.msg} at line {error.lineno}, "
                         f"column {error.colno})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{path} is not an episode list (expected \"format\": \"{FORMAT}\")")
    if document.get("version") != VERSION:
        raise ValueError(f"{path} has episode list version {document.get('version')!r}; this reader knows {VERSION}")
    episodes = document.get("episodes")
    if not isinstance(episodes, list):
        raise ValueError(f"{path}: \"episodes\" must be a list of episodes, got {episodes!r:.80}")
    if not episodes:
        raise ValueError(f"{path} holds no episodes (\"episodes\": []); there is nothing to evaluate")
    for number, record in enumerate(episodes):
        problem = _check_episode(record)
        if problem:
            raise ValueError(f"{path}: episode {number} {problem}")
    return document


def load_episodes(path: str | Path, dataset: Any = None, *, labels: Any = None,
                  class_names: Sequence[str] | Mapping[int, str] | None = None, item_ids: Any = None) -> list[Episode]:
    """Load an episode list and resolve its names to indices into the dataset.

    Raises ValueError naming every unknown class and every unknown (class, item id).
    """
    document = read_episode_list(path)
    labels, class_names, item_ids = _naming(dataset, labels, class_names, item_ids)
    present = np.unique(labels)
    name_to_label = {_class_name(class_names, int(label)): int(label) for label in present}
    index_of = {(int(label), item): i for i, (label, item) in enumerate(zip(labels.tolist(), item_ids.tolist()))}
    if len(index_of) != len(labels):
        raise ValueError("item ids are not unique within their classes, so they cannot identify items")

    unknown_classes: list[str] = []
    unknown_items: list[str] = []
    episodes = []
    for number, record in enumerate(document["episodes"]):
        known = [name in name_to_label for name in record["classes"]]
        unknown_classes += [name for name, ok in zip(record["classes"], known) if not ok]
        if not all(known):
            continue
        classes = np.array([name_to_label[name] for name in record["classes"]], dtype=np.int64)
        parts = {}
        for part in ("support", "query"):
            indices = []
            for name, label, group in zip(record["classes"], classes, record[part]):
                for item in group:
                    index = index_of.get((int(label), str(item)))
                    if index is None:
                        unknown_items.append(f"{name}/{item}")
                    indices.append(-1 if index is None else index)
            parts[part] = np.array(indices, dtype=np.int64)
        ways = len(classes)
        episodes.append(Episode(
            index=number, classes=classes,
            support=parts["support"], support_labels=np.repeat(np.arange(ways), len(parts["support"]) // max(ways, 1)),
            query=parts["query"], query_labels=np.repeat(np.arange(ways), len(parts["query"]) // max(ways, 1)),
        ))
    if unknown_classes or unknown_items:
        problems = []
        if unknown_classes:
            names = sorted(set(unknown_classes))
            problems.append(f"{len(names)} unknown classes: {names[:10]}{' ...' if len(names) > 10 else ''}")
        if unknown_items:
            names = sorted(set(unknown_items))
            problems.append(f"{len(names)} unknown items: {names[:10]}{' ...' if len(names) > 10 else ''}")
        raise ValueError(f"{path} does not match this dataset: " + "; ".join(problems))
    return episodes
