"""The mean embedding of a model's base (training) classes: SimpleShot's centring, computed once per model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fewshot.data.splits import ClassSplit
from fewshot.model.network import FewShotModel, embed_in_batches

__all__ = ["BASE_MEAN_IMAGES", "BASE_MEAN_SEED", "BaseClassMean"]

#: The base-class mean embedding (SimpleShot's centring) is the mean over a uniform sample of at most this many of
#: the training classes' images, drawn without replacement by numpy's default_rng(BASE_MEAN_SEED): the same sample
#: for every evaluation seed, so the centring is a property of the checkpoint.
BASE_MEAN_IMAGES = 5000
BASE_MEAN_SEED = 0


class BaseClassMean:
    """The mean embedding ``[d]`` of a model's base (training) classes, computed on first call and kept: the mean
    over a uniform sample of at most `images` of their images (numpy default_rng(`seed`), without replacement),
    embedded without test-time views. `base` is the base split, or a callable loading it (called on first use
    only). `record` says what was computed (None before)."""

    def __init__(self, model: FewShotModel, base: ClassSplit | Callable[[], ClassSplit],
                 device: torch.device | str = "cpu", batch_size: int = 64, images: int = BASE_MEAN_IMAGES,
                 seed: int = BASE_MEAN_SEED) -> None:
        self.model, self.base, self.device, self.batch_size = model, base, torch.device(device), batch_size
        self.images, self.seed = images, seed
        self.mean: torch.Tensor | None = None
        self.record: dict[str, Any] | None = None

    def __call__(self) -> torch.Tensor:
        if self.mean is None:
            split = self.base if isinstance(self.base, ClassSplit) else self.base()
            rng = np.random.default_rng(self.seed)
            items = np.sort(rng.choice(len(split), size=min(self.images, len(split)), replace=False))
            embeddings = embed_in_batches(self.model, items, self.batch_size, self.device,
                                          load=lambda batch: split.to_float(split.gather(batch)))
            self.mean = embeddings.mean(dim=0)
            self.record = {"images": len(items), "of": len(split), "classes": split.num_classes, "seed": self.seed,
                           "sampler": "numpy default_rng(seed).choice without replacement"}
        return self.mean
