"""`ClassSplit`: a set of classes viewed over a shared uint8 image tensor, the type every later stage takes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from episodes.torch import TensorStore


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images [n,H,W] or [n,C,H,W] to float32 [n,1,H,W] or [n,C,H,W] in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects a uint8 tensor, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() != 4:
        raise ValueError(f"to_float expects shape [n,H,W] or [n,C,H,W], got {tuple(images.shape)}")
    return images.float().div_(255.0)


def drop_small_classes(split: "ClassSplit", min_images: int) -> tuple["ClassSplit", dict[str, int]]:
    """(`split` without its classes of fewer than `min_images` items, {dropped class name: its item count}).
    Returns `split` itself when no class is dropped."""
    if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 1:
        raise ValueError(f"min_images must be a positive int, got {min_images!r}")
    counts = split.class_counts()
    small = np.flatnonzero(counts < min_images)
    if not len(small):
        return split, {}
    dropped = {split.class_names[c]: int(counts[c]) for c in small}
    return split.subset(np.flatnonzero(counts >= min_images)), dropped


class ClassSplit(torch.utils.data.Dataset):
    """A set of classes viewed over a shared uint8 image tensor.

    Item `i` is `images[image_index[i]]` with label `labels[i]`; a dataset that defines rotated
    classes (Omniglot) also gives `rotation`, applied on access and never stored.

    Attributes:
        images: shared uint8 tensor [N,H,W] or [N,C,H,W].
        labels: np.int64 [M], class of each item in 0..num_classes-1.
        class_names: one name per class, e.g. "Alphabet/character01/rot090".
        item_ids: np.str_ array [M], a name for each item, unique within the split (default: the row number).
        image_index: np.int64 [M], row of `images` for each item (default: item i is row i).
        rotation: np.int8 [M], quarter turns k as in `torch.rot90(x, k, dims=(-2, -1))` (counter-clockwise),
            or None (default) for no rotation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: np.ndarray,
        class_names: Sequence[str],
        item_ids: Sequence[str] | np.ndarray | None = None,
        *,
        image_index: np.ndarray | None = None,
        rotation: np.ndarray | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() not in (3, 4):
            described = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a uint8 tensor [N,H,W] or [N,C,H,W], got {described}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_index = (np.arange(len(self.labels), dtype=np.int64) if image_index is None
                            else np.asarray(image_index, dtype=np.int64))
        self._rotation = None if rotation is None else np.asarray(rotation, dtype=np.int8)
        self.class_names = list(class_names)
        self.item_ids = (np.arange(len(self.labels)).astype(np.str_) if item_ids is None
                         else np.asarray(item_ids, dtype=np.str_))
        self._store: TensorStore | None = None
        self._validate()

    @property
    def rotation(self) -> np.ndarray:
        """Quarter turns per item (all zero for a dataset without rotations)."""
        if self._rotation is None:
            self._rotation = np.zeros(len(self.image_index), dtype=np.int8)
        return self._rotation

    def _validate(self) -> None:
        num_items = len(self.image_index)

        def span(values: np.ndarray) -> str:
            return f"{values.min()}..{values.max()}"

        for name in ("labels", "item_ids") + (("rotation",) if self._rotation is not None else ()):
            if len(getattr(self, name)) != num_items:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {num_items} (one per item)")
        if num_items and not (0 <= self.image_index.min() and self.image_index.max() < len(self.images)):
            raise ValueError(f"image_index must lie in [0, {len(self.images)}), got {span(self.image_index)}")
        if self._rotation is not None and num_items:
            if not (0 <= self._rotation.min() and self._rotation.max() <= 3):
                raise ValueError(f"rotation must be quarter turns in 0..3, got {span(self._rotation)}")
            height, width = self.images.shape[-2:]
            if height != width and np.any(self._rotation % 2 == 1):
                raise ValueError(f"quarter-turn rotations need square images, got {height}x{width}")
        if num_items and not (0 <= self.labels.min() and self.labels.max() < self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {span(self.labels)}")

    def class_counts(self) -> np.ndarray:
        """Items per class, [num_classes]."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, keep: np.ndarray | Sequence[int]) -> "ClassSplit":
        """The classes `keep` (class indices) of this split, relabelled 0..len(keep)-1, over the same images."""
        keep = np.asarray(keep, dtype=np.int64)
        relabel = np.full(self.num_classes, -1, dtype=np.int64)
        relabel[keep] = np.arange(len(keep))
        rows = np.flatnonzero(relabel[self.labels] >= 0)
        return ClassSplit(self.images, relabel[self.labels[rows]], [self.class_names[i] for i in keep],
                          self.item_ids[rows], image_index=self.image_index[rows],
                          rotation=None if self._rotation is None else self._rotation[rows])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Return (float image [1,H,W] or [C,H,W] in [0, 1], label)."""
        image = self.gather(np.array([index]))
        return to_float(image)[0], int(self.labels[index])

    @property
    def tensor_store(self) -> TensorStore:
        """This split's items as an `episodes.torch.TensorStore` (rotations applied on the fly), built on
        first use and shared by `gather` and by every `EpisodeDataset` over this split, so its
        quarter-turned image copy is made once."""
        if self._store is None:
            self._store = TensorStore.from_arrays(self)
        return self._store

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        """Return the uint8 images of items `indices`, rotations applied: [n,H,W] (or [n,C,H,W])."""
        images = self.tensor_store.gather(np.asarray(indices, dtype=np.int64), torch.uint8)
        return images.view(len(images), *self.images.shape[1:])

    def episode_tensors(self, episode, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(support_x, support_y, query_x, query_y) of an `episodes.Episode` over this split, as float
        images in [0, 1] and episode labels, on `device`; support and query gathered in one pass."""
        images = to_float(self.gather(np.concatenate([episode.support, episode.query]))).to(device, non_blocking=True)
        n_support = len(episode.support)
        return (images[:n_support], torch.from_numpy(episode.support_labels).to(device),
                images[n_support:], torch.from_numpy(episode.query_labels).to(device))

    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        """Convert gathered uint8 images to float [n,1,H,W] (or [n,C,H,W]) in [0, 1]."""
        return to_float(images)

    def __repr__(self) -> str:
        shape = tuple(self.images.shape[1:])
        return f"{type(self).__name__}(num_classes={self.num_classes}, items={len(self)}, image_shape={shape})"
