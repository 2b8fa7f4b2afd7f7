"""Test-time views as plug-ins: each image also embedded shifted, quarter-turned or mirrored, and the views
combined. A view kind registers in `VIEWS`; `compose_views` builds the views an evaluation asked for from the
evaluated dataset's declaration, so the evaluator knows neither the kinds nor the dataset.

Two ways of combining exist. An *averaged* kind (shift) replaces an image's embedding by the mean embedding of
its transformed copies. A *copies* kind (quarter turns, mirror) turns every image of an episode alike and scores
each turned copy of the episode as an episode of its own, the scores summed: for a model trained on rotated or
mirrored classes, each copy is a look it was trained on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from fewshot.data.datasets import DatasetInfo
from fewshot.model.network import FewShotModel
from fewshot.registry import Registry

#: A transform of float images [n, C, H, W].
Transform = Callable[[torch.Tensor], torch.Tensor]
AVERAGE, COPIES = "average", "copies"


def identity(images: torch.Tensor) -> torch.Tensor:
    return images


def shift_views(max_shift: int) -> list[tuple[int, int]]:
    """The (dx, dy) pixel shifts of test-time shift averaging: none, then 1..max_shift pixels
    left, right, up and down (4 * max_shift + 1 views)."""
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"the test-time shift must be a whole number of pixels >= 0, got {max_shift!r}")
    views = [(0, 0)]
    for k in range(1, max_shift + 1):
        views += [(k, 0), (-k, 0), (0, k), (0, -k)]
    return views


def check_shift(max_shift: int, height: int, width: int) -> None:
    """Refuse a test-time shift that moves images of `height` x `width` by half their side or more: each shifted
    view must keep more than half of the image (``2 * max_shift < min(height, width)``); beyond that a view
    shows more fill than image, and a shift of the whole side shows none of it."""
    side = min(height, width)
    if 2 * max_shift >= side:
        raise ValueError(f"--test-time-shift {max_shift} moves {height}x{width} images by half their side or more, so "
                         f"the shifted views show more background than image; use at most {(side - 1) // 2} pixels")


def shifted(images: torch.Tensor, dx: int, dy: int, fill: float) -> torch.Tensor:
    """`images` [n, C, H, W] moved dx pixels right and dy down, the uncovered border filled with `fill`
    (the dataset's background, `DatasetInfo.background`)."""
    k = max(abs(dx), abs(dy))
    if k == 0:
        return images
    height, width = images.shape[-2:]
    padded = F.pad(images, (k, k, k, k), value=fill)
    return padded[..., k - dy:k - dy + height, k - dx:k - dx + width]


def turn_views(rotations: bool = False, mirror: bool = False) -> list[tuple[int, bool]]:
    """The (quarter turns, mirrored) copies of test-time turn views: the image itself, then its
    rotations by 90, 180 and 270 degrees when `rotations`, each also mirrored left-right when `mirror`."""
    return [(turns, flip) for flip in ((False, True) if mirror else (False,))
            for turns in (range(4) if rotations else range(1))]


def turned(images: torch.Tensor, quarter_turns: int, mirror: bool) -> torch.Tensor:
    """`images` [n, C, H, W] mirrored left-right (when `mirror`), then rotated by `quarter_turns` x 90
    degrees counter-clockwise."""
    if quarter_turns % 4 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"test-time rotations need square images, got {images.shape[-2]}x{images.shape[-1]}")
    out = torch.flip(images, dims=(-1,)) if mirror else images
    return torch.rot90(out, quarter_turns, dims=(-2, -1)) if quarter_turns % 4 else out


@dataclass(frozen=True)
class ViewKind:
    """A kind of test-time view.

    Attributes:
        combine: `AVERAGE` (an image's embedding is the mean over the transforms) or `COPIES` (each
            transform makes a copy of the episode, scored on its own, the scores summed).
        views: `views(setting, dataset) -> [(label, transform), ...]`, the first the image itself; a
            setting that is off (0, False) gives that one view. Bad settings raise a ValueError.
        off: the setting that leaves the kind out (the default of an evaluation that does not name it).
        report_key: the evaluation report's entry for this kind's setting.
        check_size: `check_size(setting, height, width)` raises a ValueError when the setting does not suit
            images of that size (None: any size), so that it fails before anything is embedded.
    """

    combine: str
    views: Callable[[Any, DatasetInfo], list[tuple[Any, Transform]]]
    off: Any
    report_key: str
    check_size: Callable[[Any, int, int], None] | None = None

    def __post_init__(self) -> None:
        if self.combine not in (AVERAGE, COPIES):
            raise ValueError(f"a view kind combines by {AVERAGE!r} or {COPIES!r}, got {self.combine!r}")


#: View kinds by name. Copy kinds compose in registration order: a copy applies their transforms in
#: that order, the first-registered kind varying slowest.
VIEWS: Registry[ViewKind] = Registry("test-time view")


def _shift(max_shift: int, dataset: DatasetInfo) -> list[tuple[Any, Transform]]:
    return [((dx, dy), partial(shifted, dx=dx, dy=dy, fill=dataset.background)) for dx, dy in shift_views(max_shift)]


def _mirror(on: bool, dataset: DatasetInfo) -> list[tuple[Any, Transform]]:
    if not isinstance(on, bool):
        raise ValueError(f"the test-time mirror setting must be True or False, got {on!r}")
    return [(flip, partial(turned, quarter_turns=0, mirror=flip)) for flip in ((False, True) if on else (False,))]


def _rotations(on: bool, dataset: DatasetInfo) -> list[tuple[Any, Transform]]:
    if not isinstance(on, bool):
        raise ValueError(f"the test-time rotations setting must be True or False, got {on!r}")
    return [(turns, partial(turned, quarter_turns=turns, mirror=False)) for turns in (range(4) if on else range(1))]


VIEWS.register("shift", ViewKind(AVERAGE, _shift, off=0, report_key="max_shift", check_size=check_shift))
VIEWS.register("mirror", ViewKind(COPIES, _mirror, off=False, report_key="mirror"))
VIEWS.register("rotations", ViewKind(COPIES, _rotations, off=False, report_key="rotations"))


def _composed(parts: list[list[tuple[Any, Transform]]]) -> list[tuple[tuple[Any, ...], Transform]]:
    """Every combination of one view per part (the first part varying slowest), applied in part order."""
    def chain(transforms: tuple[Transform, ...]) -> Transform:
        if len(transforms) == 1:
            return transforms[0]

        def apply(images: torch.Tensor) -> torch.Tensor:
            for transform in transforms:
                images = transform(images)
            return images
        return apply

    combos = itertools.product(*parts) if parts else [((None, identity),)]
    return [(tuple(label for label, _ in combo), chain(tuple(t for _, t in combo))) for combo in combos]


@dataclass(frozen=True)
class ViewSet:
    """The test-time views of one evaluation (made by `compose_views`): each episode scored in the copies of
    `copies_views`, each copy's embeddings averaged over `averaged_views`; each entry is (label, transform).
    `embed` gives an image's embedding as the concatenation of its copies'."""

    settings: Mapping[str, Any] = field(default_factory=dict)
    copies_views: list[tuple[tuple[Any, ...], Transform]] = field(default_factory=lambda: _composed([]))
    averaged_views: list[tuple[tuple[Any, ...], Transform]] = field(default_factory=lambda: _composed([]))
    averaged_kind: str | None = None

    @property
    def copies(self) -> int:
        """How many copies of each episode are scored (1: the episode itself)."""
        return len(self.copies_views)

    @property
    def on(self) -> bool:
        return self.copies > 1 or len(self.averaged_views) > 1

    @torch.no_grad()
    def embed(self, model: FewShotModel, images: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings of `images`: for each copy (in order), the mean embedding of its averaged views;
        the copies concatenated along the features (the evaluator splits them back and sums their scores).
        Each image's embedding depends on it alone."""
        parts = []
        for _, make_copy in self.copies_views:
            copy = make_copy(images)
            total = model.embed(self.averaged_views[0][1](copy)).float()
            for _, transform in self.averaged_views[1:]:
                total += model.embed(transform(copy)).float()
            parts.append(total / len(self.averaged_views))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def check_image_size(self, height: int, width: int) -> None:
        """Raise a ValueError when a view setting does not suit images of `height` x `width` (`ViewKind.check_size`)."""
        for name, setting in self.settings.items():
            check_size = VIEWS[name].check_size
            if check_size is not None and setting != VIEWS[name].off:
                check_size(setting, height, width)

    def report(self) -> dict[str, Any]:
        """The report's record of the views: per kind of combining, the settings and the views made."""
        entries: dict[str, Any] = {}
        kinds = [(name, VIEWS[name]) for name in VIEWS if name in self.settings]
        if self.averaged_kind is not None:
            name, kind = self.averaged_kind, VIEWS[self.averaged_kind]
            entries["test_time_" + name] = {kind.report_key: self.settings[name],
                                            "views": [label[0] for label, _ in self.averaged_views]}
        if self.copies > 1:
            # Each copy is named by its kinds' labels, the fastest-varying first: (quarter turns, mirrored).
            entries["test_time_turns"] = {**{k.report_key: self.settings[n] for n, k in reversed(kinds)
                                             if k.combine == COPIES},
                                          "copies": [list(reversed(label)) for label, _ in self.copies_views]}
        return entries


def compose_views(settings: Mapping[str, Any], dataset: DatasetInfo) -> ViewSet:
    """The test-time views named by `settings` (view kind -> its setting, e.g. {"shift": 1, "mirror": True};
    kinds not named are off), made for images of `dataset` (e.g. shifts fill with its background)."""
    for name in settings:
        VIEWS.get_or_raise(name)
    settings = {name: settings.get(name, kind.off) for name, kind in VIEWS.items()}
    copies: list[list[tuple[Any, Transform]]] = []
    averaged: dict[str, list[tuple[Any, Transform]]] = {}
    for name, kind in VIEWS.items():
        views = kind.views(settings[name], dataset)
        if kind.combine == COPIES:
            copies.append(views)  # off, it still names each copy ("not mirrored")
        elif len(views) > 1:
            averaged[name] = views
    if len(averaged) > 1:
        raise ValueError(f"one averaged test-time view kind at a time, got {', '.join(averaged)}")
    (kind_name, views), = averaged.items() if averaged else [(None, [])]
    return ViewSet(settings, _composed(copies), _composed([views] if views else []), kind_name)
