"""Embedding networks for few-shot learning: Conv-4 and ResNet-12.

Both map images ``[batch, channels, H, W]`` to flat embeddings ``[batch, dim]``; with
``normalize=True`` the embeddings are L2-normalised (needed e.g. by distance-weighted mining).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.registry import Registry, call_with_injected

#: Backbones by name: ``nn.Module`` classes mapping images ``[n, C, H, W]`` to ``[n, dim]``. The model
#: injects ``in_channels`` and ``normalize``; other constructor arguments are user settings.
BACKBONES: Registry = Registry("backbone", injected=("in_channels", "normalize"))


def _conv_block(in_channels: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    # [conv, BN, ReLU, max-pool], computed with the pool before the ReLU: the two commute (ReLU is
    # monotone), and the ReLU then touches a quarter of the values (1.2x faster bf16 training steps).
    # Without the pool the block is [conv, BN, ReLU]; the parameter names stay the same either way.
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_widths(backbone: str, **widths: int) -> None:
    """Raise a ValueError naming each layer width (channel count) that is not a positive whole number."""
    for name, value in widths.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{backbone} {name} must be a positive whole number of channels, got {value!r}")


def _check_input_shape(input_shape: tuple[int, ...], in_channels: int) -> tuple[int, int, int]:
    if len(input_shape) != 3 or input_shape[0] != in_channels:
        raise ValueError(
            f"input_shape must be (channels={in_channels}, height, width), got {tuple(input_shape)}"
        )
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


@BACKBONES.register("conv4")
class Conv4(nn.Module):
    """Four blocks of [3x3 conv, batch norm, ReLU, 2x2 max-pool], flattened.

    64-d on 28x28 input (Omniglot), 1600-d on 84x84 (miniImageNet) with the default widths.
    ``pools`` keeps the max-pool in the first ``pools`` blocks only (the Relation Network's
    embedding pools in the first two): fewer pools leave a larger feature map, so a 28x28 image
    gives 64 x 3 x 3 = 576 values with ``pools=3`` and 64 x 7 x 7 = 3,136 with ``pools=2``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_channels: int = 64,
        pools: int = 4,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        _check_widths("Conv4", in_channels=in_channels, hidden=hidden, out_channels=out_channels)
        if isinstance(pools, bool) or not isinstance(pools, int) or not 0 <= pools <= 4:
            raise ValueError(f"Conv4 pools must be an integer from 0 to 4, got {pools!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pools = pools
        self.normalize = normalize
        widths = (in_channels, hidden, hidden, hidden, out_channels)
        self.encoder = nn.Sequential(
            *(_conv_block(widths[i], widths[i + 1], pool=i < pools) for i in range(4))
        )

    def out_dim(self, input_shape: tuple[int, int, int]) -> int:
        """Embedding size for images of shape ``(channels, height, width)``."""
        _, height, width = _check_input_shape(input_shape, self.in_channels)
        # Each max-pool floors the size by 2: floor(H / 2**pools) after all of them.
        scale = 2**self.pools
        if height < scale or width < scale:
            raise ValueError(
                f"Conv4 with pools={self.pools} needs images of at least {scale}x{scale}, "
                f"got {height}x{width}"
            )
        return self.out_channels * (height // scale) * (width // scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.encoder(images).flatten(1)
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings


class ResidualBlock(nn.Module):
    """ResNet-12 block: three [3x3 conv, BN] with LeakyReLU(0.1), 1x1-conv shortcut, 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.activation = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LeakyReLU is monotone, so it commutes with the max-pool: applied after, on a quarter of the values.
        return self.activation(self.pool(self.body(x) + self.shortcut(x)))


@BACKBONES.register("resnet12")
class ResNet12(nn.Module):
    """The few-shot ResNet-12: four residual blocks, then global average pooling.

    The embedding size is ``channels[-1]`` (640 by default) whatever the input size.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, int, int, int] = (64, 160, 320, 640),
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(channels, (str, bytes)) or not hasattr(channels, "__len__") or len(channels) != 4:
            raise ValueError(f"ResNet12 needs 4 block widths, got channels={channels!r}")
        _check_widths("ResNet12", in_channels=in_channels,
                      **{f"channels[{i}]": width for i, width in enumerate(channels)})
        self.in_channels = in_channels
        self.channels = tuple(channels)
        self.normalize = normalize
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(*(ResidualBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.embedding_dim = channels[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def out_dim(self, input_shape: tuple[int, int, int]) -> int:
        """Embedding size for images of shape ``(channels, height, width)``."""
        _, height, width = _check_input_shape(input_shape, self.in_channels)
        if height < 16 or width < 16:
            raise ValueError(f"ResNet12 needs images of at least 16x16, got {height}x{width}")
        return self.embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.blocks(images).mean(dim=(2, 3))
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings


def embedding_dim(backbone: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Embedding size of ``backbone`` for images of shape ``(channels, height, width)``.

    Uses ``backbone.out_dim`` when available, else runs one dummy image through it in eval mode.
    """
    if hasattr(backbone, "out_dim"):
        return int(backbone.out_dim(tuple(input_shape)))
    was_training = backbone.training
    backbone.eval()
    try:
        parameter = next(backbone.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        with torch.no_grad():
            output = backbone(torch.zeros(1, *input_shape, device=device))
    finally:
        backbone.train(was_training)
    return int(output.flatten(1).shape[1])


def check_backbone(name: str, in_channels: int, image_size: int, normalize: bool = False, **kwargs: Any) -> int:
    """The embedding size of the backbone `name` built with `kwargs` for `image_size` square images, found by
    building it on the meta device (no memory, no random numbers drawn): bad constructor arguments and images
    it cannot take fail here, before a run writes anything, with the backbone's own message."""
    try:
        with torch.device("meta"):
            backbone = build_backbone(name, in_channels, normalize, **kwargs)
            return embedding_dim(backbone, (in_channels, image_size, image_size))
    except (RuntimeError, TypeError) as error:  # raised by torch inside a backbone that checks nothing itself
        arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) or "no arguments"
        raise ValueError(f"the {name} backbone with {arguments} cannot take {in_channels}-channel "
                         f"{image_size}x{image_size} images: {error}") from None


def build_backbone(name: str, in_channels: int, normalize: bool = False, **kwargs) -> nn.Module:
    """Build the backbone called ``name`` (one of ``BACKBONES``); ``kwargs`` go to its constructor."""
    factory = BACKBONES.get_or_raise(name)
    BACKBONES.check_arguments(name, kwargs, "backbone argument")
    return call_with_injected(factory, kwargs, in_channels=in_channels, normalize=normalize)
