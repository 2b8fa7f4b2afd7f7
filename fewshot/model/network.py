"""A few-shot model: a backbone that embeds images and a learner that scores an episode's embeddings."""

from __future__ import annotations

from dataclasses import InitVar, asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fewshot.backbones import BACKBONES, build_backbone, embedding_dim
from fewshot.distances import DISTANCES, build_distance
from fewshot.learners import LEARNERS, LearnerOutput
from fewshot.learners.base import episode_ways, prototype_logits
from fewshot.registry import call_with_injected


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture (stored in every checkpoint): registered
    names with their arguments, so a model built in Python rebuilds from its checkpoint.

    ``metric`` and ``normalize`` default to the learner's own choice (filled in on construction).
    ``margin`` and ``miner`` are accepted for checkpoints written before learner arguments existed;
    they go into ``learner_args``.
    """

    backbone: str = "conv4"
    learner: str = "protonet"
    metric: str | None = None
    normalize: bool | None = None
    in_channels: int = 1
    image_size: int = 28
    backbone_args: dict[str, Any] = field(default_factory=dict)
    learner_args: dict[str, Any] = field(default_factory=dict)
    metric_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None  # training classes, for learners with one parameter per class
    margin: InitVar[float | None] = None
    miner: InitVar[str | None] = None

    def __post_init__(self, margin: float | None, miner: str | None) -> None:
        learner = LEARNERS.get_or_raise(self.learner)
        BACKBONES.get_or_raise(self.backbone)
        legacy = {k: v for k, v in (("margin", margin), ("miner", miner)) if v is not None}
        for key in legacy:
            if key not in LEARNERS.parameters(self.learner):
                flag = f"--{key}"
                raise ValueError(f"{flag} does not apply to the {self.learner} learner "
                                 f"(its arguments: {LEARNERS.describe_parameters(self.learner)})")
        object.__setattr__(self, "learner_args", {**dict(self.learner_args), **legacy})
        object.__setattr__(self, "backbone_args", dict(self.backbone_args))
        object.__setattr__(self, "metric_args", dict(self.metric_args))
        if self.metric is None:
            object.__setattr__(self, "metric", learner.default_distance)
        if self.normalize is None:
            object.__setattr__(self, "normalize", bool(learner.normalize))
        learner.check_distance(self.metric, self.learner)
        LEARNERS.check_arguments(self.learner, self.learner_args, "--loss-arg")
        BACKBONES.check_arguments(self.backbone, self.backbone_args, "--backbone-arg")
        DISTANCES.check_arguments(self.metric, self.metric_args, "--metric-arg")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        if self.in_channels not in (1, 3) and not (isinstance(self.in_channels, int) and self.in_channels > 0):
            raise ValueError(f"in_channels must be a positive int, got {self.in_channels!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FewShotModel(nn.Module):
    """Backbone embeddings -> learner loss; at test time, nearest prototype under the learner's distance."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = build_backbone(spec.backbone, spec.in_channels, normalize=spec.normalize, **spec.backbone_args)
        # oneDNN (CPU) and cuDNN convolutions run faster in NHWC: 1.6x per Conv-4 training step here.
        self.backbone.to(memory_format=torch.channels_last)
        dim = embedding_dim(self.backbone, (spec.in_channels, spec.image_size, spec.image_size))
        distance = build_distance(spec.metric, dim, **spec.metric_args)
        self.learner = call_with_injected(LEARNERS[spec.learner], spec.learner_args, distance=distance,
                                          num_classes=spec.num_classes, dim=dim)

    #: Autocast dtype for the backbone (None: float32). A training setting, not part of the architecture:
    #: the weights stay float32 and the distances and losses are computed in float32 whatever it is.
    compute_dtype: torch.dtype | None = None

    #: Whether an image's embedding depends only on the image in eval mode (so evaluation may embed
    #: each image once and reuse it across episodes). A transductive model sets this False.
    embeds_independently: bool = True

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
        classes: torch.Tensor | None = None,
    ) -> LearnerOutput:
        """The learner's loss and logits on one episode (support and query embedded in one pass);
        `classes` are the episode's global class ids, for losses that need them."""
        embeddings = self.embed(torch.cat([support_x, query_x]))
        support, query = embeddings[: len(support_x)], embeddings[len(support_x) :]
        return self.learner(support, support_y, query, query_y, generator=generator, classes=classes)

    @torch.no_grad()
    def logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Nearest-prototype logits [n_query, ways]; the same rule for every learner."""
        embeddings = self.embed(torch.cat([support_x, query_x]))
        support, query = embeddings[: len(support_x)], embeddings[len(support_x) :]
        return prototype_logits(self.learner.scoring_distance, support, support_y, query, episode_ways(support_y))
