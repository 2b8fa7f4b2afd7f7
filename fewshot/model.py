"""A few-shot model: a backbone that embeds images and a learner that scores an episode's embeddings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fewshot.backbones import build_backbone, embedding_dim
from fewshot.distances import build_distance
from fewshot.learners import build_learner
from fewshot.learners.base import LearnerOutput, episode_ways, prototype_logits


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture (stored in every checkpoint)."""

    backbone: str = "conv4"
    learner: str = "protonet"
    metric: str = "euclidean"
    normalize: bool = False
    in_channels: int = 1
    image_size: int = 28
    margin: float | None = None  # siamese / triplet
    miner: str | None = None  # triplet

    def to_dict(self) -> dict:
        return asdict(self)


class FewShotModel(nn.Module):
    """Backbone embeddings -> learner loss; at test time, nearest prototype under the learner's distance."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = build_backbone(spec.backbone, spec.in_channels, normalize=spec.normalize)
        # oneDNN (CPU) and cuDNN convolutions run faster in NHWC: 1.6x per Conv-4 training step here.
        self.backbone.to(memory_format=torch.channels_last)
        dim = embedding_dim(self.backbone, (spec.in_channels, spec.image_size, spec.image_size))
        if spec.margin is not None and spec.learner not in ("siamese", "triplet"):
            raise ValueError(f"--margin applies to the siamese and triplet learners, not {spec.learner!r}")
        if spec.miner is not None and spec.learner != "triplet":
            raise ValueError(f"--miner applies to the triplet learner, not {spec.learner!r}")
        learner_kwargs = {}
        if spec.margin is not None:
            learner_kwargs["margin"] = spec.margin
        if spec.miner is not None:
            learner_kwargs["miner"] = spec.miner
        if spec.learner == "protonet":
            distance = build_distance(spec.metric, dim)
        elif spec.metric != "euclidean":
            raise ValueError(
                f"--metric {spec.metric!r} applies to the protonet learner only; "
                f"{spec.learner!r} trains the Euclidean distance (use --metric euclidean)"
            )
        else:
            distance = None
        self.learner = build_learner(spec.learner, distance, **learner_kwargs)

    #: Autocast dtype for the backbone (None: float32). A training setting, not part of the architecture:
    #: the weights stay float32 and the distances and losses are computed in float32 whatever it is.
    compute_dtype: torch.dtype | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings [n, d] of float images [n, C, H, W]."""
        images = images.contiguous(memory_format=torch.channels_last)
        if self.compute_dtype is None:
            return self.backbone(images)
        with torch.autocast(images.device.type, dtype=self.compute_dtype):
            embeddings = self.backbone(images)
        return embeddings.float()

    def forward(
        self,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> LearnerOutput:
        """The learner's loss and logits on one episode (support and query embedded in one pass)."""
        embeddings = self.embed(torch.cat([support_x, query_x]))
        support, query = embeddings[: len(support_x)], embeddings[len(support_x) :]
        return self.learner(support, support_y, query, query_y, generator=generator)

    @torch.no_grad()
    def logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Nearest-prototype logits [n_query, ways]; the same rule for every learner."""
        embeddings = self.embed(torch.cat([support_x, query_x]))
        support, query = embeddings[: len(support_x)], embeddings[len(support_x) :]
        return prototype_logits(self.learner.distance, support, support_y, query, episode_ways(support_y))
