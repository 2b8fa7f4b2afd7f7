"""The memory check before decoding Omniglot counts what a run holds (issue 25): the decoded images, their
mirrored copy, and the quarter-turned copy each split's episode store makes, not the decoded images alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fewshot.files
from fewshot.data.omniglot import load_splits_omniglot
from fewshot.data.omniglot_memory import held_image_copies

SIZE = 100  # pixels: small enough to decode the miniature Omniglot quickly


def held_bytes(splits) -> int:
    """Bytes of the distinct image arrays alive once a run has read its train, val and test splits."""
    arrays: dict[int, int] = {}
    for split in (splits.train, splits.val, splits.test):
        split.gather(np.arange(len(split)))
        arrays[id(split.images)] = split.images.numel()
        quarter_turned = split.tensor_store._both_parities  # [images; images turned a quarter], made on first need
        if quarter_turned is not None:
            arrays[id(quarter_turned)] = quarter_turned.size
    return sum(arrays.values())


@pytest.mark.parametrize(("rotations", "mirrors"), [(None, False), (None, True), ((0, 180), False), ((0, 90), True)])
def test_the_counted_copies_are_the_copies_a_run_holds(synthetic_root: Path, rotations, mirrors) -> None:
    splits = load_splits_omniglot(synthetic_root, "vinyals", 28, rotations=rotations, mirrors=mirrors, download=False)
    decoded = splits.test.images.numel()  # val and test read the decoded images; train their mirrored set
    assert held_image_copies("vinyals", rotations, mirrors) * decoded == held_bytes(splits)


def test_an_image_size_whose_rotated_copies_do_not_fit_is_refused_before_decoding(
        synthetic_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    count = len(load_splits_omniglot(synthetic_root, "vinyals", 28, download=False).test.images)
    decoded = count * SIZE * SIZE
    copies = held_image_copies("vinyals")
    assert copies == 7  # Vinyals' classes turn a quarter in train, val and test: 1 + 3 x 2

    def available(bytes_: int) -> None:
        monkeypatch.setattr(fewshot.files, "available_memory", lambda: bytes_, raising=False)

    # Room for the decoded images, not for their copies: refused before decoding, with the figure.
    available(copies * decoded - 1)
    with pytest.raises(ValueError, match=rf"holding {count} Omniglot images at {SIZE}x{SIZE} px with the rotated and "
                                         rf"mirrored copies the splits make of them \(7 times the decoded images\) needs "
                                         rf"{copies * decoded / 1e6:.1f} MB of memory.*choose a smaller --image-size"):
        load_splits_omniglot(synthetic_root, "vinyals", SIZE, download=False)
    available(copies * decoded)  # exactly enough
    load_splits_omniglot(synthetic_root, "vinyals", SIZE, download=False)
    # From the cache the decoded images are held already: the copies still to come must fit beside them.
    available((copies - 1) * decoded - 1)
    with pytest.raises(ValueError, match=rf"holding {count} Omniglot images at {SIZE}x{SIZE} px"):
        load_splits_omniglot(synthetic_root, "vinyals", SIZE, download=False)
    available((copies - 1) * decoded)
    load_splits_omniglot(synthetic_root, "vinyals", SIZE, download=False)
