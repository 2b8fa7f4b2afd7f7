"""What the rest of the inference wing needs of a trained model, as a small public interface: how raw images
become its checked input (`ModelInput`), and what streaming, indexing and search ask of it (`Embedder`, which
`fewshot.inference.classifier.TrainedModel` implements). Modules below the classifier depend on these, never on
the classifier itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image
from torch import Tensor

from fewshot.data import DATASETS  # the package: every built-in dataset registered
from fewshot.data.splits import to_float

#: One raw image: a file path or a PIL image.
ImageLike = str | Path | Image.Image
#: A distance between embeddings: [n, d] x [m, d] -> [n, m].
DistanceFn = Callable[[Tensor, Tensor], Tensor]


def is_single_image(value: object) -> bool:
    """Whether `value` is one raw image (a path or a PIL image), as opposed to a list, folder listing or tensor."""
    return isinstance(value, (str, Path, Image.Image))


class ModelInput:
    """How raw images become one model's float [n, C, H, W] input: the dataset's own preprocessing (as its
    training data was prepared) for image files and PIL images, and checks for already preprocessed tensors."""

    def __init__(self, preprocess: Callable[[ImageLike], Tensor], image_size: int, channels: int, dataset: str) -> None:
        self.preprocess = preprocess
        self.image_size, self.channels, self.dataset = image_size, channels, dataset

    @classmethod
    def for_dataset(cls, dataset: str, image_size: int, channels: int | None = None) -> ModelInput:
        """The input of a model trained on `dataset` at `image_size`, with its declared preprocessing."""
        info = DATASETS.get_or_raise(dataset)
        channels = info.channels if channels is None else channels
        return cls(lambda image: info.preprocess(image, image_size, channels), image_size, channels, dataset)

    @property
    def expected(self) -> str:
        """The tensor input this model takes, in words (for error messages)."""
        side, channels = self.image_size, self.channels
        shapes = f"[n,{side},{side}] or [n,1,{side},{side}]" if channels == 1 else f"[n,{channels},{side},{side}]"
        return (f"{shapes} images ({channels} channel(s), {side}x{side} px, prepared like its {self.dataset} "
                "training data): uint8 in 0..255 or float in 0..1")

    def check_tensor(self, images: Tensor) -> Tensor:
        """The float32 [n, C, H, W] model input of a preprocessed tensor, after checking it fits the model."""
        side, channels, expected = self.image_size, self.channels, self.expected
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"images are a {images.dtype} tensor; this model takes {expected}")
        if images.dim() == 3 and channels == 1:
            images = images.unsqueeze(1)
        if images.dim() != 4 or tuple(images.shape[1:]) != (channels, side, side):
            raise ValueError(f"images have shape {list(images.shape)}; this model takes {expected}")
        if len(images) == 0:
            raise ValueError("no images given")
        if images.dtype == torch.uint8:
            return to_float(images)
        images = images.detach().cpu()
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"images hold NaN or inf values; this model takes {expected}")
        low, high = float(images.min()), float(images.max())
        if low < 0.0 or high > 1.0:
            hint = " (0..255 values: divide by 255, or pass a uint8 tensor)" if high > 1.0 else ""
            raise ValueError(f"float images have values in {low:g}..{high:g}, outside 0..1{hint}; this model takes "
                             f"{expected}")
        return images.float()

    @staticmethod
    def check_image(image: object, position: int) -> None:
        """A TypeError unless list entry `position` is one raw image."""
        if not is_single_image(image):
            raise TypeError(f"image {position} is a {type(image).__name__}; a list holds image paths or PIL images "
                            "(pass preprocessed pixels as one tensor)")

    @staticmethod
    def stack(pixels: Sequence[Tensor]) -> Tensor:
        """Model input [n, C, H, W] of preprocessed uint8 images."""
        return to_float(torch.stack(list(pixels)))

    def to_tensor(self, images: Sequence[ImageLike] | Tensor) -> Tensor:
        """Float [n, C, H, W] model input from image paths / PIL images, or from an already preprocessed tensor
        (uint8 in 0..255 or float in 0..1, of the model's channels and image size: checked)."""
        if isinstance(images, Tensor):
            return self.check_tensor(images)
        if is_single_image(images):
            raise TypeError("pass a list of images, not a single image")
        if not isinstance(images, Sequence):
            raise TypeError(f"images must be a list of image paths or PIL images, or a tensor; got {type(images).__name__}")
        if len(images) == 0:
            raise ValueError("no images given")
        for position, image in enumerate(images):
            self.check_image(image, position)
        return self.stack([self.preprocess(image) for image in images])


class Embedder(Protocol):
    """What streaming images, indexing a gallery and searching it need of a trained model."""

    #: How raw images become the model's input.
    input: ModelInput
    #: Where the model runs (searches run there too).
    device: torch.device
    #: The checkpoint file it was loaded from (absolute) and that file's SHA-256; None for a model built in memory.
    checkpoint: Path | None
    checkpoint_sha256: str | None

    @property
    def weights_sha256(self) -> str:
        """Fingerprint of the architecture and weights (`fewshot.model.checkpoint.weights_fingerprint`)."""
        ...

    @property
    def distance(self) -> DistanceFn:
        """The model's scoring distance (the one its nearest-prototype logits use)."""
        ...

    def embed_input(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Embeddings [n, d] (on `device`, no gradient) of model input [n, C, H, W], `batch_size` at a time."""
        ...
