"""Generic data plumbing: where data and caches live, class views over image tensors, atomic writes."""

from __future__ import annotations

import errno
import os
import re
import tempfile
import time
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

# When this process started using fewshot: a temporary file of ours last modified before then cannot be a
# write in progress in this process (see `remove_stale_temporaries`).
PROCESS_STARTED = time.time()
# atomic_write's temporaries: ".<name>.<8 characters of tempfile's alphabet>.tmp".
_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# A live writer touches its temporary continuously; one untouched this long is an orphan even if it is newer
# than this process (a process killed mid-write while this one was running).
_STALE_SECONDS = 60.0


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


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries `atomic_write` left in `folder` when a process was killed mid-write.

    Only files of atomic_write's naming (`.<name>.<random>.tmp`) are touched, and only those last modified
    before this process started and over a minute ago, so another process's write in progress is kept.
    Returns the files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder (nothing to clean) or an unreadable one (the caller's own access will say so)
        return removed
    cutoff = min(PROCESS_STARTED, time.time() - _STALE_SECONDS)
    for entry in entries:
        if not _TEMPORARY_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # removed meanwhile by another process, or not ours to remove: leave it
            continue
    return removed


def os_error_of(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or one in its cause / context chain (torch's writer reports a
    failed `file.write` as a RuntimeError raised while handling the OSError)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def load_error_reason(error: BaseException) -> str:
    """A short reason why torch could not read a file, without torch's advice to disable weights-only
    loading (for an untrusted or damaged file that advice points at the unsafe action)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = next((line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()), "")
        detail = detail.split(". ")[0].rstrip(".")  # the rest suggests allow-listing the object
        return f"it holds something other than tensors, numbers and strings ({detail or 'unreadable data'})"
    if isinstance(error, EOFError) or not text:
        return f"the file ends early or is empty ({type(error).__name__})"
    reason = text.splitlines()[0].split(". ")[0].rstrip(".")
    return type(error).__name__ if "weights_only" in reason.lower() else reason


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable, else free pages); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(size: float) -> str:
    """`size` bytes as a short figure: 32.5 GB, 610.0 MB."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def check_memory(needed: int, what: str, advice: str) -> None:
    """Refuse, before allocating, what cannot fit in the memory available now (`what` needs `needed` bytes)."""
    available = available_memory()
    if available is not None and needed > available:
        raise ValueError(f"{what} needs {format_bytes(needed)} of memory, but only {format_bytes(available)} is "
                         f"available; {advice}")


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
    Temporaries left in the cache folder by a process killed while writing a cache are removed.
    """
    remove_stale_temporaries(path.parent)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as error:  # any unreadable file: rebuild rather than fail
        warnings.warn(f"ignoring unreadable {what} cache {path} ({load_error_reason(error)}); rebuilding it", stacklevel=3)
        return None
    return payload if isinstance(payload, dict) and payload.get("key") == key else None


def write_cache(path: Path, payload: dict, what: str) -> bool:
    """Write a derived cache atomically; return whether it was written.

    The cache only saves time, so a failure to write it (a full disk, a read-only or missing cache folder)
    is a warning naming `what` and the reason, and loading goes on without it. torch's writer reports a
    failed file write as a RuntimeError; that is caught here too, with the OSError behind it named.
    """
    try:
        atomic_write(path, lambda file: torch.save(payload, file))
        return True
    except (OSError, RuntimeError) as error:
        cause = os_error_of(error)
        if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = f"no space left on the device ({cause.strerror})"
        else:
            reason = str(cause or error)
        warnings.warn(f"could not write {what} cache {path}: {reason}; continuing without the cache "
                      f"(set ${CACHE_ENV} to a folder with room to keep one)", stacklevel=3)
        return False
