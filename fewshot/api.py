"""Use a trained model from Python: load a checkpoint, embed raw images, classify queries against a support set.

    from fewshot.api import load
    model = load("runs/proto/best.pt")
    labels = model.classify(support=["a1.png", "b1.png"], support_labels=["a", "b"], query=["q.png"])

Images go through exactly the preprocessing used to build the training data: the checkpoint's dataset
declares it (for Omniglot, `fewshot.data.omniglot.preprocess_image`: grayscale, antialiased resize, ink = 1;
for a user's folder, grayscale or RGB as trained, antialiased resize).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Union

import torch
from PIL import Image

from fewshot.checkpoint import model_from_checkpoint
from fewshot.data import DATASETS
from fewshot.data.store import to_float
from fewshot.learners.base import prototype_logits
from fewshot.model import FewShotModel

ImageLike = Union[str, Path, Image.Image]


def preprocessor(dataset: str, image_size: int, channels: int | None = None):
    """The function that turns one raw image into the uint8 tensor a dataset's model was trained on,
    as the dataset's declaration gives it."""
    info = DATASETS.get_or_raise(dataset)
    channels = info.channels if channels is None else channels
    return lambda image: info.preprocess(image, image_size, channels)


class FewShotClassifier:
    """A trained model with its preprocessing: embed images and classify queries by nearest prototype."""

    def __init__(self, model: FewShotModel, dataset: str, device: str | torch.device = "cpu") -> None:
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.dataset = dataset
        self._preprocess = preprocessor(dataset, model.spec.image_size, model.spec.in_channels)

    @property
    def expected_input(self) -> str:
        """The tensor input this model takes, in words (for error messages)."""
        side, channels = self.model.spec.image_size, self.model.spec.in_channels
        shapes = f"[n,{side},{side}] or [n,1,{side},{side}]" if channels == 1 else f"[n,{channels},{side},{side}]"
        return (f"{shapes} images ({channels} channel(s), {side}x{side} px, prepared like its {self.dataset} "
                "training data): uint8 in 0..255 or float in 0..1")

    def _check_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """The float32 [n,C,H,W] model input of a preprocessed tensor, after checking it fits the model."""
        side, channels = self.model.spec.image_size, self.model.spec.in_channels
        expected = self.expected_input
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

    def images_to_tensor(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        """Float [n,C,H,W] model input from image paths / PIL images, or from an already preprocessed tensor
        (uint8 in 0..255 or float in 0..1, of the model's channels and image size: checked)."""
        if isinstance(images, torch.Tensor):
            return self._check_tensor(images)
        if isinstance(images, (str, Path, Image.Image)):
            raise TypeError("pass a list of images, not a single image")
        if not isinstance(images, Sequence):
            raise TypeError(f"images must be a list of image paths or PIL images, or a tensor; got {type(images).__name__}")
        if len(images) == 0:
            raise ValueError("no images given")
        for position, image in enumerate(images):
            if not isinstance(image, (str, Path, Image.Image)):
                raise TypeError(f"image {position} is a {type(image).__name__}; a list holds image paths or PIL images "
                                "(pass preprocessed pixels as one tensor)")
        return to_float(torch.stack([self._preprocess(image) for image in images]))

    @torch.no_grad()
    def _embed_on_device(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return torch.cat([self.model.embed(x[i:i + batch_size].to(self.device)) for i in range(0, len(x), batch_size)])

    def embed(self, images: Sequence[ImageLike] | torch.Tensor) -> torch.Tensor:
        """Embeddings [n, d] of raw images (on the CPU)."""
        return self._embed_on_device(self.images_to_tensor(images)).cpu()

    @torch.no_grad()
    def predict_proba(self, support: Sequence[ImageLike] | torch.Tensor, support_labels: Sequence[Hashable],
                      query: Sequence[ImageLike] | torch.Tensor) -> tuple[torch.Tensor, list[Hashable]]:
        """Class probabilities [n_query, classes] and the class order (first appearance in `support_labels`)."""
        support_x = self.images_to_tensor(support)  # first: a single path must not be counted as its characters
        if len(support_labels) != len(support_x):
            raise ValueError(f"got {len(support_x)} support images but {len(support_labels)} support labels")
        classes = list(dict.fromkeys(support_labels))
        index = {label: i for i, label in enumerate(classes)}
        support_y = torch.tensor([index[label] for label in support_labels])
        # Embed support and query in one pass, as in training and evaluation.
        embeddings = self._embed_on_device(torch.cat([support_x, self.images_to_tensor(query)]))
        support_e, query_e = embeddings[: len(support_y)], embeddings[len(support_y):]
        logits = prototype_logits(self.model.learner.scoring_distance, support_e, support_y.to(self.device), query_e, len(classes))
        return logits.softmax(dim=1).cpu(), classes

    def classify(self, support: Sequence[ImageLike] | torch.Tensor, support_labels: Sequence[Hashable],
                 query: Sequence[ImageLike] | torch.Tensor) -> list[Hashable]:
        """The support label predicted for each query image (nearest prototype)."""
        probabilities, classes = self.predict_proba(support, support_labels, query)
        return [classes[i] for i in probabilities.argmax(dim=1).tolist()]


def check_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, refused with a clear message when it is not a valid name or not present here."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for CUDA, but torch sees no CUDA device here; use device='cpu'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    return resolved


def load(checkpoint: str | Path, device: str | torch.device = "cpu") -> FewShotClassifier:
    """Load a checkpoint written by `fewshot.train` (weights-only unpickling) as a classifier.

    The device is checked first; a checkpoint with non-finite weights is refused (`model_from_checkpoint`).
    """
    device = check_device(device)
    model, state = model_from_checkpoint(checkpoint, device)
    return FewShotClassifier(model, state.get("dataset", "omniglot"), device)
