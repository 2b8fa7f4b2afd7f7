"""Backbones: embedding sizes on Omniglot- and miniImageNet-sized input, normalisation, registry."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones import BACKBONES, Conv4, ResNet12, build_backbone, check_backbone, embedding_dim


@pytest.mark.parametrize(
    ("name", "shape", "expected_dim"),
    [
        ("conv4", (1, 28, 28), 64),
        ("conv4", (3, 84, 84), 1600),
        ("resnet12", (1, 28, 28), 640),
        ("resnet12", (3, 84, 84), 640),
    ],
)
def test_output_shape_matches_reported_dim(name, shape, expected_dim):
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=shape[0])
    out = backbone(torch.rand(2, *shape))
    assert out.shape == (2, expected_dim)
    assert backbone.out_dim(shape) == expected_dim
    assert embedding_dim(backbone, shape) == expected_dim


def test_embedding_dim_runs_a_dummy_forward_for_other_modules():
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten())
    backbone.train()
    assert embedding_dim(backbone, (1, 10, 10)) == 8 * 8 * 8
    assert backbone.training  # the mode is restored


@pytest.mark.parametrize("backbone", [Conv4(in_channels=1, normalize=True), ResNet12(in_channels=1, normalize=True)])
def test_normalize_gives_unit_norm(backbone):
    out = backbone(torch.rand(3, 1, 28, 28))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_unnormalized_embeddings_are_not_unit_norm():
    out = Conv4(in_channels=1)(torch.rand(3, 1, 28, 28))
    assert not torch.allclose(out.norm(dim=1), torch.ones(3))


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*conv4.*resnet12"):
        build_backbone("vgg", in_channels=1)
    assert list(BACKBONES)[:2] == ["conv4", "resnet12"]  # the pretrained ones (tests/backbones) come after


def test_bad_input_shapes_are_rejected():
    with pytest.raises(ValueError, match="channels=1"):
        Conv4(in_channels=1).out_dim((3, 28, 28))
    with pytest.raises(ValueError, match="at least 16x16"):
        Conv4().out_dim((1, 8, 8))
    with pytest.raises(ValueError, match="4 block widths"):
        ResNet12(channels=(64, 160, 320))


def test_custom_widths():
    backbone = Conv4(in_channels=3, hidden=32, out_channels=16)
    assert backbone(torch.rand(2, 3, 84, 84)).shape == (2, 16 * 5 * 5)
    assert backbone.out_dim((3, 84, 84)) == 400


def test_conv4_computes_conv_bn_relu_pool_blocks():
    # The blocks pool before the ReLU for speed (and fuse batch norm, pool and ReLU on CPUs); the result must be
    # the standard [conv, BN, ReLU, pool], up to float32 rounding of the batch statistics.
    torch.manual_seed(0)
    net = Conv4()
    net.train()
    images = torch.randn(6, 1, 28, 28)
    x = images
    for conv, bn, *_ in net.encoder:
        x = F.max_pool2d(F.relu(F.batch_norm(F.conv2d(x, conv.weight, conv.bias, padding=1), None, None,
                                             bn.weight, bn.bias, training=True)), 2)
    torch.testing.assert_close(net(images), x.flatten(1), rtol=1e-5, atol=1e-5)


def test_resnet12_block_activates_before_pooling_in_effect():
    torch.manual_seed(0)
    net = ResNet12(in_channels=3, channels=(8, 8, 8, 8))
    images = torch.randn(2, 3, 32, 32)
    x = images
    for block in net.blocks:
        x = F.max_pool2d(F.leaky_relu(block.body(x) + block.shortcut(x), 0.1), 2)
    assert torch.allclose(net(images), x.mean(dim=(2, 3)), atol=1e-6)


@pytest.mark.parametrize("pools, side", [(4, 1), (3, 3), (2, 7), (0, 28)])
def test_conv4_pools_keeps_a_larger_feature_map(pools, side):
    backbone = Conv4(in_channels=1, pools=pools)
    out = backbone(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 64 * side * side)
    assert backbone.out_dim((1, 28, 28)) == 64 * side * side
    # Fewer pools change no parameter: a pools=2 model loads a default model's weights.
    assert backbone.state_dict().keys() == Conv4(in_channels=1).state_dict().keys()


def test_conv4_pools_is_checked():
    with pytest.raises(ValueError, match="pools must be an integer from 0 to 4, got 5"):
        Conv4(pools=5)
    with pytest.raises(ValueError, match="pools=2 needs images of at least 4x4, got 3x3"):
        Conv4(pools=2).out_dim((1, 3, 3))


@pytest.mark.parametrize(("name", "arguments", "message"), [
    ("conv4", {"hidden": 0}, "Conv4 hidden must be a positive whole number of channels, got 0"),
    ("conv4", {"out_channels": -3}, "Conv4 out_channels must be a positive whole number of channels, got -3"),
    ("conv4", {"hidden": 2.5}, "Conv4 hidden must be a positive whole number of channels, got 2.5"),
    ("resnet12", {"channels": (64, 0, 320, 640)}, r"ResNet12 channels\[1\] must be a positive whole number"),
])
def test_backbones_refuse_widths_that_are_not_positive_whole_numbers(name, arguments, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(name, in_channels=1, **arguments)
    with pytest.raises(ValueError, match=message):
        check_backbone(name, 1, 28, **arguments)


def test_check_backbone_builds_on_the_meta_device_without_drawing_random_numbers():
    state = torch.get_rng_state()
    assert check_backbone("conv4", 1, 28) == 64 and check_backbone("resnet12", 3, 84) == 640
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="at least 16x16"):
        check_backbone("conv4", 1, 8)


def test_check_backbone_names_the_arguments_a_backbone_without_checks_fails_on():
    @BACKBONES.register("test-unchecked")
    class Unchecked(nn.Module):
        def __init__(self, in_channels: int = 1, width: int = 8, normalize: bool = False) -> None:
            super().__init__()
            self.layer = nn.Conv2d(in_channels, width, 3)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.layer(images).flatten(1)

    try:
        with pytest.raises(ValueError, match=r"the test-unchecked backbone with width=-1 cannot take 1-channel 28x28"):
            check_backbone("test-unchecked", 1, 28, width=-1)
    finally:
        BACKBONES.unregister("test-unchecked")
