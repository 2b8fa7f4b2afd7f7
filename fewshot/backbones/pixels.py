"""Raw pixels as the embedding: the untrained baseline a trained backbone has to beat."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones.base import BACKBONES, check_input_shape


@BACKBONES.register("pixels")
class Pixels(nn.Module):
    """The image itself, flattened: ``[n, C, H, W]`` -> ``[n, C * H * W]``, no parameters.

    With the protonet learner this is nearest class mean on raw pixels (Euclidean by default, cosine with
    ``metric="cosine"``), the baseline of docs/training.md's colour table. It cannot be trained (it has
    nothing to learn); build it with `FewShotModel(ModelSpec(backbone="pixels", in_channels=3, image_size=64))`
    and score it with `fewshot.evaluation.evaluate_model`.
    """

    def __init__(self, in_channels: int = 1, normalize: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.normalize = normalize

    def out_dim(self, input_shape: tuple[int, int, int]) -> int:
        """Embedding size for images of shape ``(channels, height, width)``: their pixel count times channels."""
        channels, height, width = check_input_shape(input_shape, self.in_channels)
        return channels * height * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"pixels expects images [n, {self.in_channels}, H, W], got {tuple(images.shape)}")
        embeddings = images.float().reshape(len(images), -1)
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings
