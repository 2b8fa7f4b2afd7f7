"""The open framework: a loss defined here (no package edit) trains through `train()`; components built
in Python rebuild from checkpoints; registry-driven arguments and errors; the default stream is unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from episodes.sampler import EpisodeSampler
from fewshot.model.checkpoint import load_checkpoint, model_from_checkpoint, spec_from_state
from fewshot.data import load_splits
from fewshot.distances import LowRankMahalanobis
from fewshot.learners import LEARNERS, EpisodeEmbeddings, Learner, register_learner
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.training import TrainConfig, train
from fewshot.cli.train import main

# sha256 over the support and query item indices of episodes 0..999 of the default training stream
# (Omniglot Vinyals train, 60-way 1-shot 5-query, seed 0), computed on the code before the registry refactor.
DEFAULT_STREAM_SHA256 = "d8d23f917fbbccb06c77d91c900b1e2c48b32235da0d5d05b470b97520e60341"


class CentreLoss(Learner):
    """Prototypical loss plus a pull of each embedding towards a learned centre of its global class:
    it uses the global class ids, its own `weight` argument and a per-class parameter."""

    def __init__(self, distance: torch.nn.Module | None = None, num_classes: int = 1, dim: int = 1,
                 weight: float = 0.1) -> None:
        super().__init__(distance)
        self.weight = weight
        self.centres = torch.nn.Parameter(torch.zeros(num_classes, dim))
        self.seen: list[torch.Tensor] = []

    def loss(self, batch: EpisodeEmbeddings, generator: torch.Generator | None) -> torch.Tensor:
        self.seen.append(batch.classes.clone())
        pull = (batch.embeddings - self.centres[batch.global_labels]).pow(2).sum(1).mean()
        return F.cross_entropy(batch.logits, batch.query_labels) + self.weight * pull


@pytest.fixture(scope="module", autouse=True)
def registered_centre_loss():
    """The loss is registered by this module's tests only (registering at import would show it to every test)."""
    register_learner("test-centre-loss", CentreLoss)
    yield
    LEARNERS.unregister("test-centre-loss")


TINY = dict(ways=5, shots=1, train_ways=5, queries=2, eval_queries=5, episodes=6, val_every=3, val_episodes=2,
            test_episodes=2, checkpoint_every=3, seed=3, threads=1)


def test_the_default_training_stream_is_unchanged(omniglot_root: Path) -> None:
    train_split = load_splits("omniglot", None, omniglot_root).train
    sampler = EpisodeSampler(train_split.labels, 60, 1, 5, seed=0, num_episodes=6000)
    digest = hashlib.sha256()
    for i in range(1000):
        episode = sampler.episode(i)
        digest.update(np.ascontiguousarray(episode.support, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(episode.query, dtype=np.int64).tobytes())
    assert digest.hexdigest() == DEFAULT_STREAM_SHA256


def test_a_loss_defined_in_a_test_file_trains_through_train(data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(learner="test-centre-loss", learner_args={"weight": 0.5}, data_root=str(data_root),
                         output=str(tmp_path / "run"), **TINY)
    report = train(config, progress=False)
    assert 0 <= report["results"][0]["accuracy"] <= 1
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    splits = load_splits("omniglot", None, data_root)
    assert state["spec"]["learner"] == "test-centre-loss" and state["spec"]["learner_args"] == {"weight": 0.5}
    assert state["spec"]["num_classes"] == splits.train.num_classes
    centres = state["model"]["learner.centres"]
    assert centres.shape == (splits.train.num_classes, 64) and centres.abs().sum() > 0  # trained
    # The checkpoint rebuilds the loss by name, with its argument and its per-class parameter.
    model, _ = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert isinstance(model.learner, CentreLoss) and model.learner.weight == 0.5
    # Episode i's global class ids are the sampler's classes of episode i.
    sampler = EpisodeSampler(splits.train.labels, 5, 1, 2, seed=3, num_episodes=6)
    fresh = FewShotModel(model.spec)
    torch.manual_seed(0)
    episode = sampler.episode(4)
    support_x, support_y, query_x, query_y = splits.train.episode_tensors(episode)
    fresh(support_x, support_y, query_x, query_y, classes=torch.from_numpy(episode.classes))
    assert fresh.learner.seen[-1].tolist() == episode.classes.tolist()


def test_a_loss_argument_from_the_cli_is_typed_by_its_signature(data_root: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--learner", "test-centre-loss", "--loss-arg", "weight=0.25", "--data-root", str(data_root),
            "--output", str(tmp_path / "run"), "--no-progress",
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]]
    assert main(args) == 0, capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["spec"]["learner_args"] == {"weight": 0.25}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["learner_args"] == {"weight": 0.25} and Path(config["data_root"]).is_absolute()


@pytest.mark.parametrize(("extra", "message"), [
    (["--loss-arg", "wieght=1"], "unknown --loss-arg 'wieght' for learner 'test-centre-loss'; valid: weight (float, default 0.1)"),
    (["--loss-arg", "weight=heavy"], "--loss-arg weight='heavy' for learner 'test-centre-loss': expected a number"),
    (["--loss-arg", "weight"], "--loss-arg 'weight' is not of the form name=value"),
    (["--learner", "triplet", "--metric", "cosine"], "--metric 'cosine' does not suit the triplet learner; it accepts: euclidean"),
    (["--learner", "triplet", "--loss-arg", "miner=hardest"], "unknown miner 'hardest'"),
    (["--metric", "mahalanobis-lowrank", "--metric-arg", "rank=many"], "rank='many' for distance 'mahalanobis-lowrank': expected an integer"),
    (["--backbone-arg", "depth=3"], "unknown --backbone-arg 'depth' for backbone 'conv4'; valid: hidden (int, default 64)"),
    (["--dataset-arg", "rotations=45"], "rotations must be distinct degrees from (0, 90, 180, 270)"),
])
def test_bad_component_arguments_are_refused_with_the_valid_ones(extra: list[str], message: str, data_root: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    learner = [] if "--learner" in extra else ["--learner", "test-centre-loss"]
    code = main([*learner, *extra, "--data-root", str(data_root), "--output", str(tmp_path / "run"), "--no-progress",
                 *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_low_rank_mahalanobis_built_in_python_rebuilds_from_its_checkpoint(data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(metric="mahalanobis-lowrank", metric_args={"rank": 3}, data_root=str(data_root),
                         output=str(tmp_path / "run"), **TINY)
    train(config, progress=False)
    model, state = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert isinstance(model.learner.distance, LowRankMahalanobis) and model.learner.distance.L.shape == (3, 64)
    assert torch.equal(model.learner.distance.L, state["model"]["learner.distance.L"])
    assert state["spec"]["metric_args"] == {"rank": 3}


def test_checkpoints_of_the_previous_spec_format_still_load() -> None:
    # The spec dict that checkpoints held before learners took arguments (margin and miner as fields).
    old = {"backbone": "conv4", "learner": "triplet", "metric": "euclidean", "normalize": True, "in_channels": 1,
           "image_size": 28, "margin": 0.3, "miner": "batch-hard"}
    spec = spec_from_state({"spec": old}, "old.pt")  # where checkpoints are read, old fields become learner arguments
    assert spec.learner_args == {"margin": 0.3, "miner": "batch-hard"}
    model = FewShotModel(spec)
    assert model.learner.margin == 0.3 and type(model.learner.miner).__name__ == "BatchHardMiner"
    assert set(LEARNERS) >= {"protonet", "siamese", "triplet"}


def test_an_unregistered_learner_in_a_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    model = FewShotModel(ModelSpec())
    state = {"spec": {**model.spec.to_dict(), "learner": "never-registered"}, "model": model.state_dict()}
    torch.save(state, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="unknown learner 'never-registered'.*must be registered"):
        model_from_checkpoint(tmp_path / "foreign.pt")
