"""Embedding networks: the registry (`BACKBONES`) and the built-in backbones, one module each.

Every backbone maps images ``[batch, channels, H, W]`` (float, 0..1) to flat embeddings ``[batch, dim]``; with
``normalize=True`` the embeddings are L2-normalised (needed e.g. by distance-weighted mining).

- ``conv4`` (`fewshot.backbones.conv4`) and ``resnet12`` (`fewshot.backbones.resnet12`), trained from scratch;
- ``pixels`` (`fewshot.backbones.pixels`): the flattened image itself, no parameters (the raw-pixel baseline);
- ``tv-resnet18`` ... ``tv-convnext_base`` and ``timm`` (`fewshot.backbones.pretrained`): pretrained networks,
  headless, with their own input preprocessing.
"""

from fewshot.backbones.base import (
    BACKBONES,
    build_backbone,
    check_backbone,
    check_input_shape,
    check_widths,
    embedding_dim,
    feature_shape,
    initialisation_arguments,
    recorded_arguments,
    starts_pretrained,
)
from fewshot.backbones.conv4 import Conv4, conv_block
from fewshot.backbones.resnet12 import ResidualBlock, ResNet12
from fewshot.backbones.pixels import Pixels
# Imported last: the pretrained backbones come after conv4 and resnet12 in the registry's listings.
from fewshot.backbones.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputPreprocessing,
    PretrainedBackbone,
    TimmBackbone,
    TorchvisionBackbone,
    timm_available,
)

__all__ = [
    "BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "Conv4", "InputPreprocessing", "Pixels", "PretrainedBackbone", "ResNet12",
    "ResidualBlock", "TimmBackbone", "TorchvisionBackbone", "build_backbone", "check_backbone", "check_input_shape",
    "check_widths", "conv_block", "embedding_dim", "feature_shape", "initialisation_arguments", "recorded_arguments",
    "starts_pretrained", "timm_available",
]
