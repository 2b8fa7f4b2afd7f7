"""The raw-pixel baseline (`pixels` backbone): the flattened image as the embedding, so a protonet over it is
nearest class mean on raw pixels, scored by the evaluator like any trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewshot.backbones.pixels  # noqa: F401  registers "pixels"
from fewshot.backbones import BACKBONES, build_backbone, check_backbone
from fewshot.data.splits import ClassSplit, to_float
from fewshot.evaluation import evaluate_model
from fewshot.evaluation.episodes import evaluation_episodes
from fewshot.model.network import FewShotModel, ModelSpec


def test_pixels_embeds_the_flattened_image_without_parameters() -> None:
    images = torch.rand(4, 3, 8, 8)
    backbone = build_backbone("pixels", in_channels=3)
    assert list(backbone.parameters()) == []
    assert torch.equal(backbone(images), images.reshape(4, -1))
    assert check_backbone("pixels", in_channels=3, image_size=8) == 3 * 8 * 8
    assert torch.allclose(build_backbone("pixels", 3, normalize=True)(images).norm(dim=1), torch.ones(4))
    assert "pixels" in BACKBONES


def test_pixels_refuses_images_of_the_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match=r"pixels expects images \[n, 3, H, W\], got \(2, 1, 8, 8\)"):
        build_backbone("pixels", in_channels=3)(torch.rand(2, 1, 8, 8))


def test_a_protonet_on_pixels_is_nearest_class_mean_on_raw_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    classes, per_class = 6, 5
    images = torch.randint(0, 256, (classes * per_class, 3, 8, 8), generator=generator, dtype=torch.uint8)
    split = ClassSplit(images, np.repeat(np.arange(classes), per_class), [f"c{i}" for i in range(classes)])
    model = FewShotModel(ModelSpec(backbone="pixels", in_channels=3, image_size=8)).eval()

    accuracies = evaluate_model(model, split, ways=3, shots=2, queries=3, episodes=20, seed=0, progress=False)

    pixels = to_float(images).reshape(len(images), -1)
    expected = []
    for episode in evaluation_episodes(split, 3, 2, 3, 20, seed=0):
        support, query = pixels[episode.support], pixels[episode.query]
        means = torch.stack([support[episode.support_labels == c].mean(0) for c in range(3)])
        nearest = torch.cdist(query.double(), means.double()).argmin(1).numpy()
        expected.append((nearest == episode.query_labels).mean())
    np.testing.assert_allclose(accuracies, expected)
