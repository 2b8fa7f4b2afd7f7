"""The image path: a backbone of this project trained (few-shot loss) on seen attribute combinations, frozen from
its checkpoint; attribute prototypes in its embedding space recognise held-out combinations zero-shot.

The images are drawn here: each class is a combination of shape, colour, size and fill, and eight combinations
are never seen in training (neither by the backbone nor by the attribute encoder)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fewshot.data import from_arrays
from fewshot.training import TrainConfig, train
from fewshot.zeroshot import ZeroShotConfig, ZeroShotData, embed_images, episode_accuracies, fit, per_class_accuracy

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230)}
SIZES = {"small": 0.28, "large": 0.42}  # radius as a fraction of the side
FILLS = ("filled", "outline")
COMBINATIONS = list(itertools.product(SHAPES, COLOURS, SIZES, FILLS))  # 36 classes
SIDE, PER_CLASS, UNSEEN = 28, 20, 8


def draw(shape: str, colour: str, size: str, fill: str, rng: np.random.Generator) -> np.ndarray:
    """One RGB image [SIDE, SIDE, 3] of the combination, jittered in position, radius, colour and pixel noise."""
    image = Image.new("RGB", (SIDE, SIDE))
    pen = ImageDraw.Draw(image)
    radius = SIZES[size] * SIDE / 2 * (1 + 0.1 * rng.uniform(-1, 1))
    cx, cy = SIDE / 2 + rng.uniform(-3, 3), SIDE / 2 + rng.uniform(-3, 3)
    rgb = tuple(int(np.clip(v + rng.normal(0, 20), 0, 255)) for v in COLOURS[colour])
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    corners = [(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)]
    style = {"fill": rgb} if fill == "filled" else {"outline": rgb, "width": 2}
    if shape == "circle":
        pen.ellipse(box, **style)
    elif shape == "square":
        pen.rectangle(box, **style)
    elif fill == "filled":
        pen.polygon(corners, fill=rgb)
    else:
        pen.line(corners + corners[:1], fill=rgb, width=2)
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-15, 16, (SIDE, SIDE, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def attribute_vector(combination: tuple[str, ...]) -> np.ndarray:
    """One-hot per attribute (shape, colour, size, fill): 10 dimensions."""
    groups = (SHAPES, tuple(COLOURS), tuple(SIZES), FILLS)
    return np.concatenate([[float(value == option) for option in options] for value, options in zip(combination, groups)])


@pytest.fixture(scope="module")
def shapes():
    """(images [N, 28, 28, 3] uint8, labels [N], attributes [36, 10], unseen class ids)."""
    rng = np.random.default_rng(0)
    images = np.stack([draw(*combination, rng) for combination in COMBINATIONS for _ in range(PER_CLASS)])
    labels = np.repeat(np.arange(len(COMBINATIONS)), PER_CLASS)
    attributes = np.stack([attribute_vector(c) for c in COMBINATIONS])
    unseen = np.sort(rng.choice(len(COMBINATIONS), UNSEEN, replace=False))
    # Zero-shot needs every attribute value among the seen classes: only the combinations are new.
    assert (attributes[np.setdiff1d(np.arange(len(COMBINATIONS)), unseen)].sum(0) > 0).all()
    return images, labels, attributes, unseen


@pytest.fixture(scope="module")
def checkpoint(shapes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a Conv-4 prototypical network trained for 50 episodes on the seen combinations only."""
    images, labels, _, unseen = shapes
    seen = ~np.isin(labels, unseen)
    output = tmp_path_factory.mktemp("zeroshot-images") / "run"
    train(TrainConfig(ways=5, shots=1, queries=5, train_ways=10, eval_queries=5, episodes=50, val_every=50,
                      val_episodes=2, test_episodes=2, lr_step=1000, output=str(output), threads=1),
          progress=False, splits=from_arrays(images[seen], labels[seen]))
    return output / "best.pt"


def test_unseen_combinations_recognised_zero_shot(shapes, checkpoint: Path):
    images, labels, attributes, unseen = shapes
    features = embed_images(checkpoint, images)
    assert features.shape == (len(images), 64)
    data = ZeroShotData.from_arrays(features, labels, attributes, unseen, seed=0)
    chance = 1 / UNSEEN
    for config in (ZeroShotConfig(method="softmax", epochs=100, lr=1e-2),
                   ZeroShotConfig(method="eszsl", eszsl_gamma=1.0, eszsl_lambda=0.1)):
        model = fit(data.features[data.trainval], data.labels[data.trainval], attributes, data.seen_classes, config)
        predicted = model.predict(data.features[data.test_unseen], attributes[unseen], unseen)
        accuracy = per_class_accuracy(predicted, data.labels[data.test_unseen])
        assert accuracy > max(0.6, 4 * chance), (config.method, accuracy)
    # Zero- and one-shot episodes on the unseen combinations, in the backbone's space (95% intervals).
    zero = episode_accuracies(model, data.features[data.test_unseen], data.labels[data.test_unseen], attributes,
                              unseen, ways=4, shots=0, queries=5, episodes=100, seed=0)
    one = episode_accuracies(model, data.features[data.test_unseen], data.labels[data.test_unseen], attributes,
                             unseen, ways=4, shots=1, queries=5, episodes=100, seed=0, fusion_weight=[0.5, 0.0])
    assert zero.mean() > 0.6 and one[0].mean() > 0.6  # 4-way: chance 25%
    assert one[1].mean() > 0.3  # the support mean alone, from one image


def test_image_input_checks(shapes, checkpoint: Path):
    images = shapes[0]
    channels_first = np.ascontiguousarray(images[:4].transpose(0, 3, 1, 2))
    assert np.allclose(embed_images(checkpoint, channels_first), embed_images(checkpoint, images[:4]), atol=1e-5)
    with pytest.raises(ValueError, match=r"images have shape \(4, 3, 20, 20\), but the backbone takes \[N, 3, 28, 28\]"):
        embed_images(checkpoint, np.zeros((4, 3, 20, 20), np.uint8))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        embed_images(checkpoint, images[:2].astype(np.float32))
