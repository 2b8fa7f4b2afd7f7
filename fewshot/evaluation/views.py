"""Test-time views: each image also embedded shifted, quarter-turned or mirrored, and the views combined."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.model.network import FewShotModel


def shift_views(max_shift: int) -> list[tuple[int, int]]:
    """The (dx, dy) pixel shifts of test-time shift averaging: none, then 1..max_shift pixels
    left, right, up and down (4 * max_shift + 1 views)."""
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"the test-time shift must be a whole number of pixels >= 0, got {max_shift!r}")
    views = [(0, 0)]
    for k in range(1, max_shift + 1):
        views += [(k, 0), (-k, 0), (0, k), (0, -k)]
    return views


def shifted(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """`images` [n, C, H, W] moved dx pixels right and dy down, the uncovered border filled with 0
    (the background of inverted Omniglot images)."""
    k = max(abs(dx), abs(dy))
    if k == 0:
        return images
    height, width = images.shape[-2:]
    padded = F.pad(images, (k, k, k, k))
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


@torch.no_grad()
def embed_views(model: FewShotModel, images: torch.Tensor, max_shift: int = 0,
                turns: list[tuple[int, bool]] | None = None) -> torch.Tensor:
    """Float32 embeddings of `images`, averaged over the shifted views of `shift_views(max_shift)`
    (the model's own embedding when max_shift is 0). With `turns` (from `turn_views`), the
    embedding is the concatenation of those averages for each turned copy, in the order of `turns`
    (the evaluator splits it back into copies and sums their scores: every copy of an episode is
    turned alike, and a model trained on rotated or mirrored classes scores each copy as another
    episode). Each image's embedding depends on it alone."""
    views = shift_views(max_shift)
    parts = []
    for quarter_turns, mirror in turns or [(0, False)]:
        copy = turned(images, quarter_turns, mirror)
        total = model.embed(copy).float()
        for dx, dy in views[1:]:
            total += model.embed(shifted(copy, dx, dy)).float()
        parts.append(total / len(views))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
