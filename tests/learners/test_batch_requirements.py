"""What each learner declares a training batch must hold (`min_class_images`, `min_batch_classes`) matches
its loss: below the declaration the loss gives no gradient (or, for the contrastive loss, a gradient of one
pair type only, which learns no class), at it every loss has one."""

from __future__ import annotations

import pytest
import torch

from fewshot.distances import build_distance
from fewshot.learners import LEARNERS
from fewshot.registry import call_with_injected

DIM, CLASSES = 16, 8
#: Learners whose loss below their declaration is not 0 but learns no class: the contrastive loss with one
#: image per class only pushes images apart, and with one class only pulls them all together.
ONE_SIDED = ("siamese",)


def gradient(name: str, classes: int, images: int) -> torch.Tensor:
    """The gradient of learner `name`'s default loss with respect to a batch of `classes` x `images` embeddings."""
    torch.manual_seed(0)
    factory = LEARNERS[name]
    learner = call_with_injected(factory, {}, distance=build_distance(factory.default_distance, DIM),
                                 num_classes=CLASSES, dim=DIM)
    embeddings = torch.nn.functional.normalize(torch.randn(classes * images, DIM), dim=1).requires_grad_()
    labels = torch.arange(classes).repeat_interleave(images)
    empty = torch.empty(0, DIM)
    output = learner(embeddings, labels, empty, torch.empty(0, dtype=torch.long), generator=torch.Generator().manual_seed(0),
                     classes=torch.arange(classes))
    output.loss.backward()
    return embeddings.grad


BATCH_LEARNERS = [name for name in LEARNERS if not LEARNERS[name].needs_queries]


@pytest.mark.parametrize("name", BATCH_LEARNERS)
def test_a_batch_below_the_declared_images_per_class_gives_no_gradient(name: str) -> None:
    declared = LEARNERS[name].min_class_images
    assert declared in (1, 2)
    one_image = gradient(name, 4, 1)
    if name in ONE_SIDED:
        assert declared == 2
    else:
        assert bool(one_image.abs().sum() > 0) == (declared == 1), f"{name} declares min_class_images={declared}"
    assert gradient(name, 4, declared).abs().sum() > 0


@pytest.mark.parametrize("name", BATCH_LEARNERS)
def test_a_batch_below_the_declared_classes_gives_no_gradient(name: str) -> None:
    declared = LEARNERS[name].min_batch_classes
    assert declared in (1, 2)
    one_class = gradient(name, 1, 4)
    if name in ONE_SIDED:
        assert declared == 2
    else:
        assert bool(one_class.abs().sum() > 0) == (declared == 1), f"{name} declares min_batch_classes={declared}"
    assert gradient(name, 2, 4).abs().sum() > 0


def test_every_pair_loss_needs_a_positive_pair() -> None:
    pair_losses = {"siamese", "triplet", "multi-similarity", "lifted-structure", "n-pair", "circle"}
    assert {name for name in LEARNERS if LEARNERS[name].min_class_images == 2} == pair_losses
    assert all(LEARNERS[name].min_batch_classes == 2 for name in pair_losses)
