"""Attribute encoders: map a class descriptor (attribute vector, word or sentence embedding) into the
embedding space of the image features, so that an unseen class gets a prototype from its description.

Encoders register by name in `ENCODERS` like the project's other plug-ins; the framework injects
`attribute_dim` and `embedding_dim`, every other constructor parameter is a user argument
(`--encoder-arg name=value`).
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot.registry import Registry

ENCODERS: Registry[type[nn.Module]] = Registry("attribute encoder", injected=("attribute_dim", "embedding_dim"))


class AttributeEncoder(nn.Module):
    """Base class: checks the attributes it is given, then `encode`s them [C, A] -> [C, D]."""

    def __init__(self, attribute_dim: int, embedding_dim: int) -> None:
        super().__init__()
        for name, value in (("attribute_dim", attribute_dim), ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.attribute_dim = attribute_dim
        self.embedding_dim = embedding_dim

    def forward(self, attributes: torch.Tensor) -> torch.Tensor:
        """Prototypes [C, embedding_dim] of class attributes [C, attribute_dim]."""
        if attributes.dim() != 2 or attributes.shape[1] != self.attribute_dim:
            raise ValueError(f"attributes have shape {tuple(attributes.shape)}, but this encoder maps "
                             f"{self.attribute_dim}-dimensional attribute vectors (expected [classes, "
                             f"{self.attribute_dim}])")
        if not torch.isfinite(attributes).all():
            bad = torch.nonzero(~torch.isfinite(attributes).all(dim=1)).flatten()[:10].tolist()
            raise ValueError(f"attributes of classes (rows) {bad} contain NaN or infinite values")
        return self.encode(attributes)

    def encode(self, attributes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@ENCODERS.register("linear")
class LinearEncoder(AttributeEncoder):
    """A linear map W a (+ b): with a dot-product score, the bilinear compatibility x^T W a of ALE,
    DeViSE, SJE and ESZSL."""

    def __init__(self, attribute_dim: int, embedding_dim: int, bias: bool = False) -> None:
        super().__init__(attribute_dim, embedding_dim)
        self.linear = nn.Linear(attribute_dim, embedding_dim, bias=bias)

    def encode(self, attributes: torch.Tensor) -> torch.Tensor:
        return self.linear(attributes)


@ENCODERS.register("mlp")
class MLPEncoder(AttributeEncoder):
    """A small MLP: Linear(A, hidden), ReLU, dropout, Linear(hidden, D)."""

    def __init__(self, attribute_dim: int, embedding_dim: int, hidden: int = 512, dropout: float = 0.0) -> None:
        super().__init__(attribute_dim, embedding_dim)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.net = nn.Sequential(nn.Linear(attribute_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, embedding_dim))

    def encode(self, attributes: torch.Tensor) -> torch.Tensor:
        return self.net(attributes)


def build_encoder(name: str, attribute_dim: int, embedding_dim: int, **arguments) -> AttributeEncoder:
    """The encoder registered as `name`, with its user arguments checked against its signature."""
    ENCODERS.check_arguments(name, arguments, "--encoder-arg")
    return ENCODERS.build(name, attribute_dim=attribute_dim, embedding_dim=embedding_dim, **arguments)
