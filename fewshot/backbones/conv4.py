"""Conv-4: four [3x3 conv, batch norm, ReLU, 2x2 max-pool] blocks, the classic few-shot embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones.base import BACKBONES, check_input_shape, check_widths
from fewshot.backbones.fused_norm import norm_activation


class ConvBlock(nn.Sequential):
    """[3x3 conv, batch norm, (2x2 max-pool), ReLU] as a sequence of modules, whose batch norm, max-pool and ReLU
    run as one fused operation where `norm_activation` can fuse them (on CPUs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm = self[0], self[1]
        return norm_activation(conv(x), norm, slope=0.0, pool=isinstance(self[2], nn.MaxPool2d))


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> ConvBlock:
    """One Conv-4 block: [3x3 conv, batch norm, ReLU], then a 2x2 max-pool when `pool`."""
    # [conv, BN, ReLU, max-pool], computed with the pool before the ReLU: the two commute (ReLU is
    # monotone), and the ReLU then touches a quarter of the values. The modules are listed in that order;
    # the parameter names are the same with or without the pool.
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.ReLU(inplace=True))
    return ConvBlock(*layers)


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
        check_widths("Conv4", in_channels=in_channels, hidden=hidden, out_channels=out_channels)
        if isinstance(pools, bool) or not isinstance(pools, int) or not 0 <= pools <= 4:
            raise ValueError(f"Conv4 pools must be an integer from 0 to 4, got {pools!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pools = pools
        self.normalize = normalize
        widths = (in_channels, hidden, hidden, hidden, out_channels)
        self.encoder = nn.Sequential(
            *(conv_block(widths[i], widths[i + 1], pool=i < pools) for i in range(4))
        )

    def out_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """The feature map ``(channels, height, width)`` that images of shape ``(channels, height, width)`` give
        before it is flattened (what a relation module compares)."""
        _, height, width = check_input_shape(input_shape, self.in_channels)
        # Each max-pool floors the size by 2: floor(H / 2**pools) after all of them.
        scale = 2**self.pools
        if height < scale or width < scale:
            raise ValueError(
                f"Conv4 with pools={self.pools} needs images of at least {scale}x{scale}, "
                f"got {height}x{width}"
            )
        return self.out_channels, height // scale, width // scale

    def out_dim(self, input_shape: tuple[int, int, int]) -> int:
        """Embedding size for images of shape ``(channels, height, width)``."""
        channels, height, width = self.out_shape(input_shape)
        return channels * height * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.encoder(images).flatten(1)
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings
