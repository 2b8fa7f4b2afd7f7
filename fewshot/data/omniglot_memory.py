"""The memory a run on Omniglot holds, counted and checked before the images are decoded or copied.

A run holds the decoded images and the copies its splits make of them: the mirrored images, and the
quarter-turned copy of each split whose classes turn a quarter. Which splits turn depends on their rotations,
so the rotations' parsing (`rotation_turns`: degrees to quarter turns, as `fewshot.data.omniglot` builds its
splits) lives here too.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fewshot.files import check_memory

DEGREES_TO_TURNS = {0: 0, 90: 1, 180: 2, 270: 3}
#: The rotations of the Lake scheme's background (training) characters when `rotations` is not given.
LAKE_TRAIN_ROTATIONS = (0, 90, 180, 270)
#: What to do when the images do not fit.
SMALLER_IMAGES = "choose a smaller --image-size (Omniglot's default is 28)"


def rotation_turns(rotations: Iterable[int]) -> list[int]:
    """The quarter turns (0 to 3) of `rotations` in degrees; refuses an empty list, repeats and other angles."""
    degrees = list(rotations)
    if not degrees or len(set(degrees)) != len(degrees) or any(d not in DEGREES_TO_TURNS for d in degrees):
        raise ValueError(f"rotations must be distinct degrees from (0, 90, 180, 270), got {degrees!r}")
    return [DEGREES_TO_TURNS[d] for d in degrees]


def held_image_copies(scheme: str, rotations: tuple[int, ...] | None = None, mirrors: bool = False) -> int:
    """The image memory a training run on Omniglot's `scheme` splits holds at once, in decoded images.

    The decoded images (1); with `mirrors`, the images and their mirrors (`OmniglotStore.images_and_mirrors`,
    2 more);
    and for each split a run reads (train or trainval, val, test) whose classes include a quarter or three-quarter
    turn, the copy that its `episodes.torch.TensorStore` makes of the images it reads stacked on their
    quarter-turned copy (2 per image set: of the images, or of the images and their mirrors for a split with
    mirrored classes). Vinyals' split files list all four turns of every character; the Lake scheme turns the
    background alphabets (train, val) and not the evaluation ones (test).
    """
    def quarter_turned(degrees: Iterable[int]) -> bool:
        return any(turns % 2 == 1 for turns in rotation_turns(degrees))  # checked as the splits check them

    mirrors = mirrors is True  # anything else is refused by name when the splits are made
    if scheme == "vinyals":
        turned = rotations is None or quarter_turned(rotations)
        # (whether the split has a quarter turn, the image sets it reads) for train, val, test
        reads = [(turned, 2 if mirrors else 1), (turned, 1), (turned, 1)]
    else:
        background = quarter_turned(rotations if rotations is not None else LAKE_TRAIN_ROTATIONS)
        sets = 2 if mirrors else 1  # val is a subset of the background split, its images included
        reads = [(background, sets), (background, sets), (quarter_turned(rotations or (0,)), 1)]
    return 1 + 2 * int(mirrors) + sum(2 * sets for turned, sets in reads if turned)


def held_description(count: int, image_size: int, copies: int) -> str:
    """What holding `copies` times `count` decoded images of `image_size` px is, for a memory error."""
    return (f"holding {count:,} Omniglot images at {image_size}x{image_size} px with the rotated and mirrored copies "
            f"the splits make of them ({copies} times the decoded images)")


def check_decoding_memory(count: int, image_size: int, held_copies: int) -> None:
    """Refuse decoding `count` images at `image_size` px when they, or the `held_copies` decoded images' worth
    that the run will hold, do not fit in the memory available now."""
    decoded = count * image_size * image_size
    check_memory(decoded, f"decoding {count:,} Omniglot images at {image_size}x{image_size} px", SMALLER_IMAGES)
    if held_copies > 1:  # the copies come later, when the splits are first read: refused now, not killed then
        check_memory(held_copies * decoded, held_description(count, image_size, held_copies), SMALLER_IMAGES)


def check_copies_memory(images: torch.Tensor, image_size: int, held_copies: int) -> None:
    """Refuse, for `images` read from the cache, a run whose copies of them (`held_copies` decoded images' worth
    in all) do not fit beside them in the memory available now."""
    if held_copies > 1:  # the decoded images are held already: the copies still to come must fit beside them
        check_memory((held_copies - 1) * images.numel(), held_description(len(images), image_size, held_copies),
                     SMALLER_IMAGES)
