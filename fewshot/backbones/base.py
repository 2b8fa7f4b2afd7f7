"""The backbone registry and what every backbone shares: building one by name, checking it on the meta
device, its embedding size, and the checks of widths and input shapes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fewshot.registry import Registry, call_with_injected

#: Backbones by name: ``nn.Module`` classes mapping images ``[n, C, H, W]`` to ``[n, dim]``. The model
#: injects ``in_channels``, ``normalize`` and ``load_weights`` (False when the model is rebuilt from a checkpoint,
#: whose own weights replace any pretrained ones); other constructor arguments are user settings.
BACKBONES: Registry = Registry("backbone", injected=("in_channels", "normalize", "load_weights"))


def check_widths(backbone: str, **widths: int) -> None:
    """Raise a ValueError naming each layer width (channel count) that is not a positive whole number."""
    for name, value in widths.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{backbone} {name} must be a positive whole number of channels, got {value!r}")


def check_input_shape(input_shape: tuple[int, ...], in_channels: int) -> tuple[int, int, int]:
    """`(channels, height, width)` of `input_shape`, or a ValueError unless it has `in_channels` channels."""
    if len(input_shape) != 3 or input_shape[0] != in_channels:
        raise ValueError(
            f"input_shape must be (channels={in_channels}, height, width), got {tuple(input_shape)}"
        )
    return int(input_shape[0]), int(input_shape[1]), int(input_shape[2])


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


def feature_shape(backbone: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The shape of one image's embedding before the backbone flattens it: ``backbone.out_shape(input_shape)``
    for a backbone that declares its feature map (Conv-4: ``(channels, height, width)``), else
    ``(embedding_dim,)`` (a vector, e.g. after global pooling)."""
    if hasattr(backbone, "out_shape"):
        return tuple(int(size) for size in backbone.out_shape(tuple(input_shape)))
    return (embedding_dim(backbone, input_shape),)


def check_backbone(name: str, in_channels: int, image_size: int, normalize: bool = False, **kwargs: Any) -> int:
    """The embedding size of the backbone `name` built with `kwargs` for `image_size` square images, found by
    building it on the meta device (no memory, no random numbers drawn): bad constructor arguments, images
    it cannot take and pretrained weights that cannot be found fail here, before a run writes anything, with
    the backbone's own message."""
    factory = BACKBONES.get_or_raise(name)
    try:
        with torch.device("meta"):
            backbone = build_backbone(name, in_channels, normalize, load_weights=False, **kwargs)
            dim = embedding_dim(backbone, (in_channels, image_size, image_size))
    except (RuntimeError, TypeError) as error:  # raised by torch inside a backbone that checks nothing itself
        arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items()) or "no arguments"
        raise ValueError(f"the {name} backbone with {arguments} cannot take {in_channels}-channel "
                         f"{image_size}x{image_size} images: {error}") from None
    if hasattr(factory, "check_weights"):  # a pretrained backbone: its weights file or cache entry must exist
        factory.check_weights(kwargs)
    return dim


def build_backbone(name: str, in_channels: int, normalize: bool = False, load_weights: bool = True,
                   **kwargs: Any) -> nn.Module:
    """Build the backbone called ``name`` (one of ``BACKBONES``); ``kwargs`` go to its constructor.

    A pretrained backbone loads its weights unless `load_weights` is False (a model rebuilt from a checkpoint,
    which holds the weights itself; a backbone built on the meta device)."""
    factory = BACKBONES.get_or_raise(name)
    BACKBONES.check_arguments(name, kwargs, "backbone argument")
    return call_with_injected(factory, kwargs, in_channels=in_channels, normalize=normalize, load_weights=load_weights)


def recorded_arguments(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments a checkpoint records for backbone `name`: `arguments` as given, completed by a backbone
    that defines ``recorded_arguments`` (a pretrained backbone records its resolved weights and its input
    preprocessing, so that a checkpoint keeps them whatever later defaults say)."""
    factory = BACKBONES.get_or_raise(name)
    arguments = dict(arguments)
    return factory.recorded_arguments(arguments) if hasattr(factory, "recorded_arguments") else arguments


def starts_pretrained(name: str, arguments: Mapping[str, Any]) -> bool:
    """Whether backbone `name` with `arguments` starts from pretrained weights (so freezing it makes sense
    without --init)."""
    factory = BACKBONES.get_or_raise(name)
    return bool(hasattr(factory, "weights_source") and factory.weights_source(dict(arguments)) is not None)


def initialisation_arguments(name: str) -> tuple[str, ...]:
    """Arguments of backbone `name` that choose its starting weights only, not its architecture (left out when
    a checkpoint's backbone is compared with a run's for --init)."""
    return tuple(getattr(BACKBONES.get_or_raise(name), "INITIALISATION_ARGUMENTS", ()))
