"""Generic data plumbing: where data and caches live, class views over image tensors, atomic writes."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.utils import download_url
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from episodes.torch import TensorStore

DATA_ENV = "FEWSHOT_DATA"
CACHE_ENV = "FEWSHOT_CACHE"


def _user_cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def absolute_path(path: str | Path) -> Path:
    """`path` with `~` expanded, made absolute against the current directory now (not when it is used)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def resolve_data_root(root: str | Path | None = None) -> Path:
    """Return the absolute data root: `root` if given, else $FEWSHOT_DATA, else the user cache
    (`<cache>/fewshot/data`). Relative paths are taken against the current directory at this call."""
    if root is not None:
        return absolute_path(root)
    env_root = os.environ.get(DATA_ENV)
    if env_root:
        return absolute_path(env_root)
    return absolute_path(_user_cache_home() / "fewshot" / "data")


def describe_data_root(root: str | Path | None = None) -> str:
    """Say which data root `resolve_data_root(root)` picks and why, for error messages."""
    if root is not None:
        origin = "the root argument"
    elif os.environ.get(DATA_ENV):
        origin = f"${DATA_ENV}"
    else:
        origin = f"the default; set ${DATA_ENV} or pass root= to use another folder"
    return f"{resolve_data_root(root)} (from {origin})"


def cache_dir() -> Path:
    """Return the folder for derived caches: $FEWSHOT_CACHE, else `<user cache>/fewshot`.

    Derived files never go under the data root, which may be read-only (a shared data folder).
    """
    env_cache = os.environ.get(CACHE_ENV)
    if env_cache:
        return absolute_path(env_cache)
    return absolute_path(_user_cache_home() / "fewshot")


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | Path, write_fn: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through `write_fn(file)` so that readers see either the old file or the complete new one.

    The data goes to a temporary file in the same folder (same filesystem, so the rename is atomic), is
    fsynced, then renamed over `path`. If `write_fn` raises, the temporary file is removed and `path`
    is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write_fn(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if os.name == "posix":  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images [n,H,W] or [n,C,H,W] to float32 [n,1,H,W] or [n,C,H,W] in [0, 1]."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects a uint8 tensor, got {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.dim() != 4:
        raise ValueError(f"to_float expects shape [n,H,W] or [n,C,H,W], got {tuple(images.shape)}")
    return images.float().div_(255.0)


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


def download_file(url: str, folder: Path, filename: str, md5: str | None) -> None:
    """Download into a temporary folder beside the target, then rename: no partial file is ever left in place."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        download_url(url, tmp, filename=filename, md5=md5)
        os.replace(Path(tmp, filename), folder / filename)


def fetch_split_list(path: Path, url: str, download: bool, what: str) -> None:
    """Download a missing split list from `url` to `path`, or raise one error saying where it looked.

    `what` describes the list for the message, e.g. "Vinyals split list (train/val/test/trainval.txt)".
    """
    failure = ""
    if download:
        try:
            download_file(url, path.parent, path.name, md5=None)
            return
        except Exception as error:  # any network or filesystem failure ends in the one message below
            failure = f"Downloading {url} failed: {error}.\n"
    raise FileNotFoundError(
        f"{what} not found: looked for {path}.\n{failure}"
        f"Put the file (from {url.rsplit('/', 1)[0]}) in {path.parent}, or load with download=True when online."
    )


def load_resized(image: Image.Image | str | Path, image_size: int, mode: str) -> np.ndarray:
    """uint8 pixels of `image` (a PIL image or a file path) in PIL `mode`, resized to a square with
    torchvision's antialiased bilinear resize (a no-op at the image's own size)."""
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                return load_resized(opened, image_size, mode)
        except (OSError, SyntaxError) as error:
            raise ValueError(f"cannot read image {image}: {error}") from error
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    resized = TF.resize(image.convert(mode), [image_size, image_size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return np.array(resized, dtype=np.uint8)


def load_cache(path: Path, key: str, what: str) -> dict | None:
    """The cached payload at `path` if it is readable and built for `key`, else None (then it is rebuilt).

    Read weights-only; a damaged cache is never trusted: it is reported (naming `what`) and rebuilt.
    """
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as error:  # any unreadable file: rebuild rather than fail
        warnings.warn(f"ignoring unreadable {what} cache {path} ({error}); rebuilding it", stacklevel=3)
        return None
    return payload if payload.get("key") == key else None
