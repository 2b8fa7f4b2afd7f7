"""Public API on Omniglot (real, or the miniature in the real formats without FEWSHOT_DATA): load a trained checkpoint, embed raw PNGs exactly as in training, classify."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.api import FewShotClassifier, TrainedModel, load
from fewshot.data.splits import to_float
from fewshot.training import TrainConfig, train

IMAGES_PER_CHARACTER = 20
SHOTS = 3


@pytest.fixture(scope="module")
def best_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """best.pt of a tiny real training run (30 episodes of 5-way protonet)."""
    output = tmp_path_factory.mktemp("api") / "run"
    train(TrainConfig(train_ways=5, queries=2, eval_queries=5, episodes=30, val_every=30, val_episodes=2,
                      test_episodes=2, data_root=str(data_root), output=str(output), threads=1), progress=False)
    return output / "best.pt"


@pytest.fixture(scope="module")
def data_store(data_root: Path):
    """The Omniglot store of `data_root` at 28x28."""
    from fewshot.data import load_omniglot

    return load_omniglot(data_root, image_size=28, download=False)


@pytest.fixture(scope="module")
def characters(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, list[Path]]:
    """All 20 PNGs of two test-split characters from different alphabets, extracted from the real zip."""
    lines = (data_root / "omniglot" / "splits" / "vinyals" / "test.txt").read_text().split()
    unrotated = [line.rsplit("/", 1)[0] for line in lines if line.endswith("/rot000")]
    other_alphabets = [c for c in unrotated if c.split("/")[0] != unrotated[0].split("/")[0]]
    # Two alphabets where the test split has them (the real one); else two characters of its one alphabet.
    chosen = [unrotated[0], (other_alphabets or unrotated[1:])[0]]
    folder = tmp_path_factory.mktemp("pngs")
    extracted: dict[str, list[Path]] = {}
    with zipfile.ZipFile(data_root / "omniglot" / "images_evaluation.zip") as archive:
        for character in chosen:
            prefix = f"images_evaluation/{character}/"
            names = sorted(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".png"))
            assert len(names) == IMAGES_PER_CHARACTER, f"{character}: expected 20 drawings, found {len(names)}"
            archive.extractall(folder, members=names)
            extracted[character] = [folder / name for name in names]
    return extracted


def store_rows(store, character: str, paths: list[Path]) -> np.ndarray:
    """Rows of the Omniglot store tensor holding these PNGs (by character and file stem)."""
    c = store.characters.index(character)
    rows = np.flatnonzero(store.character_of == c)
    by_id = {image_id: row for row, image_id in zip(rows, store.image_ids[rows])}
    return np.array([by_id[path.stem] for path in paths])


def test_load_gives_a_classifier_in_eval_mode(best_checkpoint: Path) -> None:
    classifier = load(best_checkpoint)
    assert isinstance(classifier, TrainedModel) and FewShotClassifier is TrainedModel  # the old name, kept
    assert classifier.dataset == "omniglot" and not classifier.model.training
    assert classifier.model.spec.image_size == 28


def test_embedding_files_equals_embedding_the_training_tensor(best_checkpoint: Path, characters: dict[str, list[Path]],
                                                               data_store) -> None:
    classifier = load(best_checkpoint)
    character, paths = next(iter(characters.items()))
    training_input = to_float(data_store.images[torch.from_numpy(store_rows(data_store, character, paths))])
    # Same preprocessing, pixel for pixel, as the cached training data.
    assert torch.equal(classifier.images_to_tensor(paths), training_input)
    with torch.no_grad():
        expected = classifier.model.embed(training_input)
    embeddings = classifier.embed(paths)
    assert embeddings.shape == (IMAGES_PER_CHARACTER, expected.shape[1])
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-6)
    pil_images = [Image.open(path) for path in paths]
    torch.testing.assert_close(classifier.embed(pil_images), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(classifier.embed([str(path) for path in paths]), expected, rtol=0, atol=1e-6)


def test_classify_returns_support_labels_and_is_mostly_right_on_an_easy_task(best_checkpoint: Path,
                                                                            characters: dict[str, list[Path]]) -> None:
    classifier = load(best_checkpoint)
    (first, first_paths), (second, second_paths) = characters.items()
    # Any hashables: a tuple and an int; interleaved so that class order is the first appearance.
    labels_of = {first: ("alpha", 1), second: 42}
    support = [p for pair in zip(first_paths[:SHOTS], second_paths[:SHOTS]) for p in pair]
    support_labels = [labels_of[first], labels_of[second]] * SHOTS
    query = first_paths[SHOTS:] + second_paths[SHOTS:]
    truth = [labels_of[first]] * (IMAGES_PER_CHARACTER - SHOTS) + [labels_of[second]] * (IMAGES_PER_CHARACTER - SHOTS)

    predicted = classifier.classify(support, support_labels, query)
    assert len(predicted) == len(query) and set(predicted) <= {("alpha", 1), 42}
    accuracy = np.mean([p == t for p, t in zip(predicted, truth)])
    assert accuracy >= 0.85, f"2-way {SHOTS}-shot accuracy {accuracy:.2f} on two distinct alphabets"

    probabilities, classes = classifier.predict_proba(support, support_labels, query)
    assert classes == [("alpha", 1), 42]
    assert probabilities.shape == (len(query), 2)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(len(query)))
    assert [classes[i] for i in probabilities.argmax(1).tolist()] == predicted

    # The same decision as the evaluator's nearest-prototype logits on the preprocessed tensors.
    support_y = torch.tensor([0, 1] * SHOTS)
    logits = classifier.model.logits(classifier.images_to_tensor(support), support_y, classifier.images_to_tensor(query))
    assert logits.argmax(1).tolist() == probabilities.argmax(1).tolist()


def test_preprocessed_uint8_tensors_are_accepted(best_checkpoint: Path, characters: dict[str, list[Path]],
                                                data_store) -> None:
    classifier = load(best_checkpoint)
    character, paths = next(iter(characters.items()))
    raw = data_store.images[torch.from_numpy(store_rows(data_store, character, paths))]
    torch.testing.assert_close(classifier.embed(raw), classifier.embed(paths), rtol=0, atol=1e-6)


def test_bad_input_is_refused_clearly(best_checkpoint: Path, characters: dict[str, list[Path]], tmp_path: Path) -> None:
    classifier = load(best_checkpoint)
    paths = next(iter(characters.values()))
    with pytest.raises(ValueError, match="got 4 support images but 3 support labels"):
        classifier.classify(paths[:4], ["a", "a", "b"], paths[4:6])
    with pytest.raises(ValueError, match="no images given"):
        classifier.classify(paths[:2], ["a", "b"], [])
    with pytest.raises(TypeError, match="pass a list of images, not a single image"):
        classifier.embed(paths[0])
    with pytest.raises(TypeError, match="pass a list of images, not a single image"):
        classifier.classify(str(paths[0]), ["a"] * len(str(paths[0])), paths[4:6])
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a PNG")
    with pytest.raises(ValueError, match="cannot read image .*notes.png"):
        classifier.embed([not_an_image])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best_checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        load(truncated)
