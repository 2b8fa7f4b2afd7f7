"""Pretrained backbones (torchvision's ResNet / ViT / ConvNeXt, timm when installed): headless embeddings, their own
preprocessing recorded in the spec, weights from a local state-dict file or the torch hub cache (never downloaded:
the tests save a randomly initialised model's weights themselves), frozen or fine-tuned, and the round trip of a
tiny resnet18 run through training, evaluation and search without the original weights file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import torchvision

from fewshot.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputPreprocessing,
    build_backbone,
    check_backbone,
    recorded_arguments,
    timm_available,
)
from fewshot.evaluation import evaluate_checkpoint
from fewshot.inference.classifier import load
from fewshot.model.checkpoint import load_checkpoint, model_from_checkpoint
from fewshot.model.network import ModelSpec
from fewshot.training import TrainConfig, train


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised torchvision resnet18's state dict (with its classification head), saved locally."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_the_torchvision_families_are_registered_with_the_penultimate_feature_size() -> None:
    assert {"tv-resnet18", "tv-resnet34", "tv-resnet50", "tv-vit_b_16", "tv-convnext_tiny", "timm"} <= set(BACKBONES)
    # Built on the meta device: no memory, no weights needed.
    assert check_backbone("tv-resnet18", 1, 32, weights="none") == 512
    assert check_backbone("tv-resnet50", 3, 64, weights="none") == 2048
    assert check_backbone("tv-vit_b_16", 3, 84, weights="none") == 768
    assert check_backbone("tv-convnext_tiny", 3, 64, weights="none") == 768


def test_grayscale_is_repeated_to_three_channels_resized_and_normalised() -> None:
    preprocess = InputPreprocessing(IMAGENET_MEAN, IMAGENET_STD, input_size=16)
    images = torch.rand(2, 1, 28, 28)
    expected = torch.nn.functional.interpolate(images.repeat(1, 3, 1, 1), size=(16, 16), mode="bilinear",
                                               align_corners=False, antialias=True)
    expected = (expected - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(preprocess(images), expected)
    assert not preprocess.state_dict()  # mean and std come from the recorded arguments, not the weights


def test_weights_load_from_a_state_dict_file_with_the_head_dropped(resnet18_weights: Path) -> None:
    backbone = build_backbone("tv-resnet18", in_channels=1, weights=str(resnet18_weights))
    saved = torch.load(resnet18_weights, weights_only=True)
    own = backbone.network.state_dict()
    assert set(saved) - set(own) == {"fc.weight", "fc.bias"}
    assert all(torch.equal(own[key], saved[key]) for key in own)
    images = torch.rand(3, 1, 28, 28)
    backbone.eval()
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(saved)
    reference.fc = torch.nn.Identity()
    reference.eval()
    normalised = (images.repeat(1, 3, 1, 1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone(images), reference(normalised))


def test_the_spec_records_the_weights_and_the_preprocessing(resnet18_weights: Path) -> None:
    spec = ModelSpec(backbone="tv-resnet18", in_channels=1, image_size=28, backbone_args={"weights": str(resnet18_weights)})
    assert spec.backbone_args == {"weights": str(resnet18_weights.absolute()), "mean": IMAGENET_MEAN,
                                  "std": IMAGENET_STD, "input_size": None}
    assert ModelSpec(**spec.to_dict()) == spec  # recorded arguments rebuild the same spec
    assert recorded_arguments("tv-vit_b_16", {"weights": "none"})["input_size"] == 224  # position embeddings
    assert recorded_arguments("tv-resnet18", {})["weights"] == "ResNet18_Weights.IMAGENET1K_V1"  # DEFAULT resolved
    assert ModelSpec().backbone_args == {} and ModelSpec(backbone="resnet12").backbone_args == {}  # unchanged


def test_named_weights_come_from_the_torch_hub_cache_and_are_never_downloaded(
        resnet18_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match=r"ResNet18_Weights.IMAGENET1K_V1 weights of torchvision resnet18 are not in "
                                         r"the torch hub cache .*nothing is downloaded"):
        check_backbone("tv-resnet18", 3, 32)
    with pytest.raises(ValueError, match="not in the torch hub cache"):
        build_backbone("tv-resnet18", in_channels=3)
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(resnet18_weights.read_bytes())
    assert check_backbone("tv-resnet18", 3, 32, weights="DEFAULT") == 512
    backbone = build_backbone("tv-resnet18", in_channels=3, weights="IMAGENET1K_V1")
    saved = torch.load(resnet18_weights, weights_only=True)
    assert torch.equal(backbone.network.conv1.weight, saved["conv1.weight"])


def test_a_missing_weights_file_is_refused_before_a_run() -> None:
    with pytest.raises(ValueError, match=r"weights file .*missing.pth does not exist"):
        check_backbone("tv-resnet18", 1, 28, weights="missing.pth")


def test_a_foreign_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "conv.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"does not fit the torchvision resnet18 network"):
        build_backbone("tv-resnet18", in_channels=3, weights=str(path))
    path.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="cannot be read as a state dict"):
        build_backbone("tv-resnet18", in_channels=3, weights=str(path))


def test_bad_preprocessing_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"std must be three positive numbers .*got \(0, 1, 1\)"):
        check_backbone("tv-resnet18", 3, 32, weights="none", std=(0, 1, 1))
    with pytest.raises(ValueError, match="takes 1-channel .* or 3-channel images, got in_channels=4"):
        check_backbone("tv-resnet18", 4, 32, weights="none")


@pytest.mark.skipif(not timm_available(), reason="timm is not installed")
def test_a_timm_model_is_a_headless_backbone() -> None:
    backbone = build_backbone("timm", in_channels=1, model="resnet18", weights="none")
    assert backbone(torch.rand(2, 1, 32, 32)).shape == (2, backbone.embedding_dim)


def test_without_timm_the_timm_backbone_says_how_to_get_it() -> None:
    if timm_available():
        pytest.skip("timm is installed")
    with pytest.raises(ValueError, match="pip install timm"):
        ModelSpec(backbone="timm", backbone_args={"model": "resnet18"})


TINY = dict(ways=5, shots=1, train_ways=5, queries=2, eval_queries=3, episodes=4, val_every=4, val_episodes=2,
            test_episodes=2, checkpoint_every=4, threads=1, seed=3)


def test_a_pretrained_run_trains_evaluates_and_searches_without_its_weights_file(
        resnet18_weights: Path, synthetic_root: Path, tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(resnet18_weights.read_bytes())
    output = tmp_path / "run"
    train(TrainConfig(backbone="tv-resnet18", backbone_args={"weights": str(weights)}, data_root=str(synthetic_root),
                      output=str(output), **TINY), progress=False)
    state = load_checkpoint(output / "best.pt")
    assert state["spec"]["backbone_args"]["weights"] == str(weights)  # where the weights came from, recorded
    assert state["spec"]["backbone_args"]["mean"] == IMAGENET_MEAN
    weights.unlink()  # the checkpoint holds every weight itself

    model, _ = model_from_checkpoint(output / "best.pt")
    images = torch.rand(4, 1, 28, 28)
    again, _ = model_from_checkpoint(output / "best.pt")
    torch.testing.assert_close(model.embed(images), again.embed(images))

    report = evaluate_checkpoint(output / "best.pt", ways_shots=[(5, 1)], queries=3, episodes=4, progress=False)
    assert 0.0 <= report["results"][0]["accuracy"] <= 1.0

    gallery = tmp_path / "gallery"
    with zipfile.ZipFile(synthetic_root / "omniglot" / "images_evaluation.zip") as archive:
        archive.extractall(gallery, members=[n for n in archive.namelist() if n.endswith(".png")][:40])
    trained = load(output / "best.pt")
    index = trained.index(gallery, progress=False)
    query = [Path(index.items[5])]
    result = index.search(query, k=3)
    assert result.items[0][0] == index.items[5]  # an image is its own nearest neighbour
    torch.testing.assert_close(index.embeddings[5:6], trained.embed(query), rtol=0, atol=1e-5)


def test_freeze_backbone_composes_with_a_pretrained_backbone_without_init(
        resnet18_weights: Path, synthetic_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "frozen"
    train(TrainConfig(backbone="tv-resnet18", backbone_args={"weights": str(resnet18_weights)}, learner="cosface",
                      freeze_backbone=True, data_root=str(synthetic_root), output=str(output), **TINY), progress=False)
    saved = torch.load(resnet18_weights, weights_only=True)
    trained = load_checkpoint(output / "last.pt")["model"]
    # No gradient and eval-mode batch norm: every backbone tensor, running statistics included, is the file's.
    for key, value in saved.items():
        if not key.startswith("fc."):
            assert torch.equal(trained[f"backbone.network.{key}"], value), key
