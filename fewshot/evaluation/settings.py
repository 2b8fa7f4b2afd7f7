"""The settings of an evaluation as one object: which episodes, where, how embedded, with which test-time views."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from fewshot.evaluation.cache import DEFAULT_MAX_BYTES
from fewshot.evaluation.heads import build_head, head_label

EVAL_SPLITS = ("test", "val", "train")
#: How evaluation episodes are drawn: "fixed" (`EpisodeSampler`, every (ways, shots) of `ways_shots`),
#: "within-parent" (Lake's within-alphabet protocol: each episode's classes share one parent, e.g. an Omniglot
#: alphabet) and "meta-dataset" (Meta-Dataset's variable-way, variable-shot, imbalanced episodes).
EPISODE_KINDS = ("fixed", "within-parent", "meta-dataset")


def episode_list_path(base: str | Path, ways: int, shots: int) -> Path:
    """Where `save_episode_lists=base` writes the (ways, shots) setting's episodes: `<stem>_<ways>way<shots>shot.json`
    beside `base`."""
    base = Path(base)
    return base.with_name(f"{base.stem}_{ways}way{shots}shot.json")


def _checked_heads(heads: Any) -> tuple[tuple[str, dict[str, Any]], ...]:
    """`heads` as (name, arguments) pairs, each built once to check its name and arguments, their labels distinct."""
    if isinstance(heads, (str, bytes)) or not isinstance(heads, (list, tuple)):
        raise ValueError(f"heads must be a list of head names or (name, arguments) pairs, got {heads!r}")
    pairs = []
    for entry in heads:
        if isinstance(entry, str):
            name, arguments = entry, {}
        elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], Mapping):
            name, arguments = entry[0], dict(entry[1])
        else:
            raise ValueError(f"a head must be a name or a (name, {{argument: value}}) pair, got {entry!r}")
        build_head(name, **arguments)  # an unknown name or argument, or a bad value, fails now
        pairs.append((name, arguments))
    labels = [head_label(name, arguments) for name, arguments in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"heads must differ in name or arguments, got {', '.join(labels)}")
    return tuple(pairs)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")


@dataclass(frozen=True)
class EvaluationSettings:
    """How to evaluate: the same settings give the same episodes and the same accuracies.

    Attributes:
        ways_shots: the (ways, shots) episode settings evaluated, in order (at least 2 ways).
        queries: query images per class.
        episodes: episodes per setting, drawn from `seed` (`episodes.EpisodeSampler`).
        seed: the episodes are a pure function of it.
        episode_list: a saved episode list (JSON, `episodes.lists`) used instead of seeded episodes; its
            shape then replaces `ways_shots`, `queries` and `episodes`.
        save_episode_lists: write each setting's seeded episodes as `<stem>_<ways>way<shots>shot.json`.
        eval_split: which classes: "test" (novel), "val" or "train".
        device: where the models run.
        progress: show progress bars.
        per_episode: embed each episode's images afresh instead of each image once (the same numbers).
        views: test-time views, view kind -> setting (`fewshot.evaluation.views.VIEWS`), e.g.
            {"shift": 1, "rotations": True, "mirror": False}.
        batch_size: images embedded at a time.
        max_bytes: memory for one model's embedding matrix; beyond it episodes are scored in chunks.
        distributed: inside a torch.distributed group, shard the episodes over the ranks (else score all here).
        allow_seen: evaluate even on classes the checkpoint was trained on.
        embedding_metrics: also verification, retrieval and clustering metrics of the embeddings.
        episode_kind: one of `EPISODE_KINDS`; "within-parent" uses `ways_shots` and `queries` inside one parent,
            "meta-dataset" ignores them and draws Meta-Dataset's episodes with its defaults.
        max_ways: for "meta-dataset", the most ways per episode (default: Meta-Dataset's 50).
        min_images: leave out the evaluated classes of fewer images (None: keep every class), e.g. 16 for 1-shot
            episodes with 15 queries on a folder whose classes differ in size; the report lists them.
        query_dirichlet: None for `queries` queries of every class; a concentration alpha > 0 for class-imbalanced
            query sets (Veilleux et al. 2021; their alpha is 2): per-class query counts from Dirichlet(alpha * 1),
            `ways * queries` in all (`episodes.EpisodeSampler(query_dirichlet=)`); "fixed" episodes only.
        heads: test-time heads (`fewshot.evaluation.heads.HEADS`) scored on identical episodes, each a name or a
            (name, {argument: value}) pair, e.g. ("simpleshot", ("logistic", {"C": 0.5})); () scores the learner's
            own rule only. Each is compared with "prototype" (the learner's own rule), which is always scored.
    """

    ways_shots: tuple[tuple[int, int], ...] = ((5, 1),)
    queries: int = 15
    episodes: int = 1000
    seed: int = 0
    episode_list: str | Path | None = None
    save_episode_lists: str | Path | None = None
    eval_split: str = "test"
    device: str | torch.device = "cpu"
    progress: bool = False
    per_episode: bool = False
    views: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    max_bytes: int = DEFAULT_MAX_BYTES
    distributed: bool = True
    allow_seen: bool = False
    embedding_metrics: bool = False
    episode_kind: str = "fixed"
    max_ways: int | None = None
    min_images: int | None = None
    query_dirichlet: float | None = None
    heads: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    def __post_init__(self) -> None:
        try:
            pairs = tuple((ways, shots) for ways, shots in self.ways_shots)
        except (TypeError, ValueError):
            raise ValueError(f"ways_shots must be (ways, shots) pairs, got {self.ways_shots!r}") from None
        for ways, shots in pairs:
            _positive_int("ways", ways)
            _positive_int("shots", shots)
            if ways < 2:  # what episode lists refuse too
                raise ValueError(f"--ways must be at least 2, got {ways}: a 1-way episode has one class to choose, "
                                 "so every answer is right (100% whatever the model)")
        object.__setattr__(self, "ways_shots", pairs)
        object.__setattr__(self, "views", dict(self.views))
        for name in ("queries", "batch_size", "max_bytes"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes < 0:
            raise ValueError(f"episodes must be a whole number >= 0, got {self.episodes!r}")
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"unknown evaluation split {self.eval_split!r}; expected one of {', '.join(EVAL_SPLITS)}")
        if self.episode_kind not in EPISODE_KINDS:
            raise ValueError(f"unknown episode kind {self.episode_kind!r}; expected one of {', '.join(EPISODE_KINDS)}")
        if self.min_images is not None:
            _positive_int("min_images", self.min_images)
        object.__setattr__(self, "heads", _checked_heads(self.heads))
        if self.query_dirichlet is not None:
            alpha = self.query_dirichlet
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
                raise ValueError(f"query_dirichlet must be a Dirichlet concentration > 0 (e.g. 2), got {alpha!r}")
            if self.episode_kind != "fixed":
                raise ValueError(f"Dirichlet query counts apply to fixed (ways, shots) episodes, not to "
                                 f"{self.episode_kind!r} ones")
            if self.episode_list is not None or self.save_episode_lists is not None:
                raise ValueError("Dirichlet query counts are drawn from the seed; they cannot be combined with an "
                                 "episode list (--episode-list / --save-episodes)")
        if self.max_ways is not None:
            _positive_int("max_ways", self.max_ways)
            if self.episode_kind != "meta-dataset":
                raise ValueError(f"max_ways={self.max_ways} applies to Meta-Dataset episodes only "
                                 f"(episode_kind='meta-dataset'), not to {self.episode_kind!r} ones")

    @classmethod
    def of(cls, settings: EvaluationSettings | None, overrides: Mapping[str, Any], **defaults: Any) -> EvaluationSettings:
        """`settings` (or the defaults, updated by `defaults`) with `overrides` applied; unknown names are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown evaluation setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        if settings is None:
            return cls(**{**defaults, **overrides})
        if not isinstance(settings, cls):
            raise TypeError(f"settings must be an EvaluationSettings, got {type(settings).__name__} "
                            "((ways, shots) pairs go in ways_shots=...)")
        return replace(settings, **overrides)
