"""Streaming images into a trained model: a folder walked once, files decoded a batch at a time.

Works on any `fewshot.inference.inputs.Embedder` (a loaded `TrainedModel`): its `input` turns images into model
input, its `embed_input` embeds them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from fewshot.data.images import IMAGE_EXTENSIONS, is_image_name, is_os_artifact
from fewshot.inference.inputs import Embedder, ModelInput, is_single_image


def folder_images(root: str | Path) -> tuple[list[Path], list[str] | None]:
    """The image files under `root` (recursively, sorted by relative path) and their labels: the class
    folder (path relative to `root`) when images sit in sub-folders, None when all sit in `root` itself.
    OS artifacts are skipped; other non-image files are skipped with a warning naming a few."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    images, skipped = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_os_artifact(d))
        for name in sorted(files):
            if is_os_artifact(name):
                continue
            path = Path(folder) / name
            (images if is_image_name(path) else skipped).append(path)
    images.sort(key=lambda path: path.relative_to(root).as_posix())
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:3])
        warnings.warn(f"skipped {len(skipped)} file(s) under {root} that are not images (by extension: "
                      f"{', '.join(IMAGE_EXTENSIONS)}): {shown}{', ...' if len(skipped) > 3 else ''}", stacklevel=3)
    if not images:
        raise ValueError(f"no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case): the gallery "
                         "would be empty")
    parents = [path.parent.relative_to(root).as_posix() for path in images]
    if all(parent == "." for parent in parents):
        return images, None
    if any(parent == "." for parent in parents):
        loose = next(path for path, parent in zip(images, parents) if parent == ".")
        raise ValueError(f"{root} mixes images in class folders with images directly in it (e.g. {loose}); put every "
                         "image in a class folder, or none")
    return images, parents


def _describe_item(image: Any, position: int) -> str:
    if isinstance(image, (str, Path)):
        return str(Path(image).expanduser().resolve())
    return f"#{position}"


class ImageStream:
    """Images (a folder, a list or any iterable of paths / PIL images, or a preprocessed tensor) turned into
    batches of model input, a batch in memory at a time. Unreadable files are collected, not fatal on
    the first: `failures` names them all after the stream is consumed."""

    def __init__(self, model_input: ModelInput, images: Any, labels: Sequence[Hashable] | None,
                 batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.input, self.batch_size = model_input, batch_size
        self.failures: list[tuple[str, str]] = []
        self.source = "images"
        if isinstance(images, (str, Path)) and Path(images).expanduser().is_dir():
            if labels is not None:
                raise ValueError(f"labels come from the class folders of {images}; pass labels=None for a folder "
                                 "(or pass a list of image paths with their labels)")
            self.source = str(Path(images).expanduser().resolve())
            images, labels = folder_images(images)
        elif isinstance(images, (str, Path)) and not Path(images).expanduser().exists():
            raise FileNotFoundError(f"{images} does not exist (expected a folder of images, or pass a list of images)")
        elif is_single_image(images):
            raise TypeError(f"pass a folder or a list of images, not a single image ({images!r} is not a folder)")
        elif not isinstance(images, (torch.Tensor, Iterable)):
            raise TypeError(f"images must be a folder, a list of image paths / PIL images, or a tensor; got "
                            f"{type(images).__name__}")
        self.images = images
        self.total = len(images) if hasattr(images, "__len__") else None
        if labels is not None:
            labels = list(labels)
            if self.total is not None and len(labels) != self.total:
                raise ValueError(f"got {self.total} images but {len(labels)} labels")
        self.labels = labels

    def batches(self) -> Iterator[tuple[Tensor, list[str], list[Hashable] | None]]:
        """(float input [b, C, H, W], item names, labels or None) per batch of readable images."""
        if isinstance(self.images, torch.Tensor):
            for start in range(0, len(self.images), self.batch_size):
                x = self.input.to_tensor(self.images[start:start + self.batch_size])
                names = [f"#{i}" for i in range(start, start + len(x))]
                yield x, names, None if self.labels is None else self.labels[start:start + len(x)]
            return
        pending: list[tuple[Tensor, str, Hashable]] = []
        position = -1
        for position, image in enumerate(self.images):
            self.input.check_image(image, position)
            if self.labels is not None and position >= len(self.labels):
                raise ValueError(f"got more images than the {len(self.labels)} labels")
            name = _describe_item(image, position)
            label = None if self.labels is None else self.labels[position]
            try:
                pixels = self.input.preprocess(image)
            except Exception as error:  # a damaged file can make PIL raise anything: name the file instead
                self.failures.append((name, str(error)))
                continue
            pending.append((pixels, name, label))
            if len(pending) == self.batch_size:
                yield self._batch(pending)
                pending = []
        if self.labels is not None and self.total is None and position + 1 != len(self.labels):
            raise ValueError(f"got {position + 1} images but {len(self.labels)} labels")
        if pending:
            yield self._batch(pending)

    def _batch(self, pending: list[tuple[Tensor, str, Hashable]]) -> tuple[Tensor, list[str], list[Hashable] | None]:
        x = self.input.stack([pixels for pixels, _, _ in pending])
        return x, [name for _, name, _ in pending], None if self.labels is None else [label for _, _, label in pending]

    def failure_message(self) -> str:
        shown = "; ".join(f"{name}: {reason}" for name, reason in self.failures[:10])
        more = f"; and {len(self.failures) - 10} more" if len(self.failures) > 10 else ""
        return f"{len(self.failures)} image(s) could not be read: {shown}{more}"


class UnreadableImages(ValueError):
    """Images that could not be read; `failures` names them, and the message says how to leave them out
    (`option`: the keyword or command-line flag of the caller, None where the caller has none)."""

    def __init__(self, failures: str, option: str | None = None) -> None:
        self.failures = failures
        super().__init__(failures + (f" (pass {option} to leave them out)" if option else ""))


@torch.no_grad()
def embed_stream(embedder: Embedder, images: Any, labels: Sequence[Hashable] | None = None, *,
                 batch_size: int = 256, progress: bool = True, skip_unreadable: bool | None = None,
                 what: str = "embedding") -> tuple[Tensor, list[str], list[Hashable] | None, str]:
    """Embeddings [n, d] (CPU float32), item names, labels and a description of the source, streamed: one
    batch of images in memory at a time. Unreadable files are named together at the end (an error, or a
    warning with `skip_unreadable`; None: an error that does not offer skipping, for callers without that option)."""
    stream = ImageStream(embedder.input, images, labels, batch_size)
    chunks: list[Tensor] = []
    names: list[str] = []
    kept_labels: list[Hashable] = []
    counted_failures = 0
    with tqdm(total=stream.total, desc=what, unit="img", disable=not progress, leave=False) as bar:
        for x, batch_names, batch_labels in stream.batches():
            chunks.append(embedder.embed_input(x, batch_size=len(x)).float().cpu())
            names.extend(batch_names)
            if batch_labels is not None:
                kept_labels.extend(batch_labels)
            bar.update(len(x) + len(stream.failures) - counted_failures)  # unreadable files count as done
            counted_failures = len(stream.failures)
        bar.update(len(stream.failures) - counted_failures)
    if stream.failures:
        if not skip_unreadable:
            raise UnreadableImages(stream.failure_message(), "skip_unreadable=True" if skip_unreadable is False else None)
        warnings.warn(f"left out {stream.failure_message()}", stacklevel=3)
    if not chunks:
        empty = ": the gallery would be empty" if what == "indexing" else ""
        raise ValueError(f"no images given (from {stream.source}){empty}")
    return torch.cat(chunks), names, (kept_labels if stream.labels is not None else None), stream.source
