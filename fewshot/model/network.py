"""A few-shot model: a backbone that embeds images and a learner that scores an episode's embeddings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from fewshot.backbones import BACKBONES, build_backbone, embedding_dim, feature_shape, recorded_arguments
from fewshot.distances import DISTANCES, build_distance
from fewshot.learners import LEARNERS, LearnerOutput
from fewshot.learners.base import episode_ways
from fewshot.registry import call_with_injected


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture (stored in every checkpoint): registered
    names with their arguments, so a model built in Python rebuilds from its checkpoint.

    ``metric`` and ``normalize`` default to the learner's own choice (filled in on construction).
    (Specs of checkpoints written before learner arguments existed name ``margin`` and ``miner`` as
    fields: `fewshot.model.checkpoint.spec_from_state` turns them into ``learner_args``.)
    A pretrained backbone's ``backbone_args`` are completed with its weights and input preprocessing
    (`fewshot.backbones.recorded_arguments`); other backbones' stay as given.
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

    def __post_init__(self) -> None:
        learner = LEARNERS.get_or_raise(self.learner)
        BACKBONES.get_or_raise(self.backbone)
        object.__setattr__(self, "learner_args", dict(self.learner_args))
        object.__setattr__(self, "backbone_args", recorded_arguments(self.backbone, self.backbone_args))
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

    def __init__(self, spec: ModelSpec, load_weights: bool = True) -> None:
        """The model `spec` describes; a pretrained backbone loads its weights unless `load_weights` is False
        (a model about to receive a checkpoint's weights, which must not need the original weights file)."""
        super().__init__()
        self.spec = spec
        self.backbone = build_backbone(spec.backbone, spec.in_channels, normalize=spec.normalize,
                                       load_weights=load_weights, **spec.backbone_args)
        # oneDNN (CPU) and cuDNN convolutions run faster in NHWC: 1.6x per Conv-4 training step here.
        self.backbone.to(memory_format=torch.channels_last)
        input_shape = (spec.in_channels, spec.image_size, spec.image_size)
        dim = embedding_dim(self.backbone, input_shape)
        distance = build_distance(spec.metric, dim, **spec.metric_args)
        self.learner = call_with_injected(LEARNERS[spec.learner], spec.learner_args, distance=distance,
                                          num_classes=spec.num_classes, dim=dim,
                                          feature_shape=feature_shape(self.backbone, input_shape))

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
        classes: torch.Tensor | None = None,
    ) -> LearnerOutput:
        """The learner's loss and logits on one episode (support and query embedded in one pass);
        `classes` are the episode's global class ids, for losses that need them."""
        embeddings = self.embed(torch.cat([support_x, query_x]))
        support, query = embeddings[: len(support_x)], embeddings[len(support_x) :]
        return self.learner(support, support_y, query, query_y, generator=generator, classes=classes)

    @torch.no_grad()
    def logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """The learner's test-time scores [n_query, ways] (`Learner.episode_logits`: nearest prototype unless the
        learner has its own rule)."""
        embeddings = self.embed(torch.cat([support_x, query_x]))
        support, query = embeddings[: len(support_x)], embeddings[len(support_x) :]
        return self.learner.episode_logits(support, support_y, query, episode_ways(support_y))


@torch.no_grad()
def embed_in_batches(model: FewShotModel, images: torch.Tensor | Sequence[Any], batch_size: int,
                     device: torch.device | str, *, load: Callable[[Any], torch.Tensor] | None = None,
                     embed: Callable[[FewShotModel, torch.Tensor], torch.Tensor] | None = None,
                     progress: bool = False, desc: str = "embedding") -> torch.Tensor:
    """Float32 embeddings [len(images), d] on `device`, `batch_size` images at a time, in eval mode and without
    gradients (the model's training mode is restored).

    `images` is a tensor of float images [n, C, H, W], or any sliceable sequence whose slices `load` turns
    into float images (e.g. item ids of a split, loaded a batch at a time). `embed(model, x)` replaces
    `model.embed(x)` (e.g. test-time views)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not len(images):
        raise ValueError("no images to embed")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
            batch = images[start:start + batch_size]
            x = (batch if load is None else load(batch)).to(device, non_blocking=True)
            chunks.append((model.embed(x) if embed is None else embed(model, x)).float())
    finally:
        model.train(was_training)
    return torch.cat(chunks)
