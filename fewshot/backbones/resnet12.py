"""ResNet-12: the few-shot residual network (four residual blocks, global average pooling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones.base import BACKBONES, check_input_shape, check_widths
from fewshot.backbones.fused_norm import norm_activation


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
        # Each [batch norm, leaky ReLU] and the block's end [batch norm + shortcut batch norm, max-pool, leaky ReLU]
        # run as one operation each (fused on CPUs). LeakyReLU is monotone, so it commutes with the max-pool.
        body, slope = self.body, self.activation.negative_slope
        hidden = norm_activation(body[0](x), body[1], slope)
        hidden = norm_activation(body[3](hidden), body[4], slope)
        return norm_activation(body[6](hidden), body[7], slope, pool=True,
                               x2=self.shortcut[0](x), norm2=self.shortcut[1])


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
        check_widths("ResNet12", in_channels=in_channels,
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
        _, height, width = check_input_shape(input_shape, self.in_channels)
        if height < 16 or width < 16:
            raise ValueError(f"ResNet12 needs images of at least 16x16, got {height}x{width}")
        return self.embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.blocks(images).mean(dim=(2, 3))
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings
