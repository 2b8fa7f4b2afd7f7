"""The embed-once cache: a split's images embedded once (in every view), then gathered per episode."""

from __future__ import annotations

import numpy as np
import torch

from fewshot.data.splits import ClassSplit
from fewshot.evaluation.views import ViewSet
from fewshot.model.network import FewShotModel, embed_in_batches

#: Default memory for one model's embedding matrix; beyond it, episodes are scored in chunks.
DEFAULT_MAX_BYTES = 1 << 30


class SplitEmbeddings:
    """Float32 embeddings of a split's items under one model, computed on demand, once per item.

    `ensure(items)` embeds the items not yet held (in item order, `batch_size` at a time, under the
    model's precision, on its device); `rows(items)` returns their embeddings. At most `max_bytes`
    of embeddings are held: `ensure` clears what it holds when the new items would not fit, so a
    caller that needs more than that at once must chunk its work (`capacity` items per chunk).
    `views` (test-time views, `compose_views`) embed each image as its views combine it: averaged over
    shifted copies, and its turned copies concatenated.
    """

    def __init__(self, model: FewShotModel, split: ClassSplit, device: torch.device | str = "cpu",
                 batch_size: int = 64, max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = False,
                 views: ViewSet | None = None) -> None:
        if max_bytes < 1 or batch_size < 1:
            raise ValueError(f"max_bytes and batch_size must be positive, got {max_bytes} and {batch_size}")
        if views is not None:  # a setting the images cannot take fails now, before anything is embedded
            views.check_image_size(*split.images.shape[-2:])
        self.views = views
        self.model, self.split, self.device = model, split, torch.device(device)
        self.batch_size, self.max_bytes, self.progress = batch_size, max_bytes, progress
        self.position = np.full(len(split), -1, dtype=np.int64)  # item -> row of `matrix`, -1 if not held
        self.matrix: torch.Tensor | None = None
        self.dim: int | None = None
        self.embedded = 0  # items embedded so far (counting re-embeddings after a clear)

    @property
    def capacity(self) -> int:
        """Items that fit in `max_bytes` (known after the first embedding; before it, one batch)."""
        return self.batch_size if self.dim is None else max(1, self.max_bytes // (4 * self.dim))

    @property
    def copies(self) -> int:
        """How many turned copies each row concatenates (1 without views)."""
        return 1 if self.views is None else self.views.copies

    @property
    def nbytes(self) -> int:
        return 0 if self.matrix is None else self.matrix.numel() * 4

    def clear(self) -> None:
        self.position[:] = -1
        self.matrix = None

    def ensure(self, items: np.ndarray) -> None:
        """Hold the embeddings of `items` (ids into the split)."""
        missing = np.unique(np.asarray(items, dtype=np.int64))
        missing = missing[self.position[missing] < 0]
        if not len(missing):
            return
        held = 0 if self.matrix is None else len(self.matrix)
        if self.dim is not None and held + len(missing) > self.capacity:
            self.clear()
            return self.ensure(items)
        new = embed_in_batches(self.model, missing, self.batch_size, self.device, progress=self.progress,
                               load=lambda batch: self.split.to_float(self.split.gather(batch)),
                               embed=None if self.views is None else self.views.embed)
        self.dim = new.shape[1]
        self.position[missing] = held + np.arange(len(missing))
        self.matrix = new if self.matrix is None else torch.cat([self.matrix, new])
        self.embedded += len(missing)

    def rows(self, items: np.ndarray) -> torch.Tensor:
        """Embeddings [len(items), d] of items already held (see `ensure`)."""
        rows = self.position[np.asarray(items, dtype=np.int64)]
        if self.matrix is None or (rows < 0).any():
            raise KeyError("some items are not embedded; call ensure(items) first")
        return self.matrix[torch.from_numpy(rows).to(self.matrix.device)]
