"""Issue 16's training paths: class-balanced batches (the `episodes` sampler and `--sampling balanced`),
pretrain then fine-tune (`--init`, `--freeze-backbone`, Meta-Baseline as two commands), and the clustering
and R-precision embedding metrics, with hand-computed values."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from episodes import ClassBalancedSampler, ClassBatch, EpisodeSampler
from episodes.torch import EpisodeBatchSampler, EpisodeDataset, TensorStore
from fewshot.model.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from fewshot.data import load_splits
from fewshot.evaluation import embedding_metrics, evaluate_checkpoint
from fewshot.evaluation.report import format_table, report_json
from fewshot.learners import LEARNERS, build_learner
from fewshot.metrics.clustering import clustering_scores, kmeans_clusters
from fewshot.metrics.retrieval import map_at_r, r_precision
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.training import TrainConfig, train
from tests.training.test_loop import run_main

# ----------------------------------------------------------------------------------- class-balanced batches


def uneven_labels() -> np.ndarray:
    """12 classes of 3 to 8 items, shuffled, so that class-major layouts are not the dataset's order."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), [3, 4, 5, 6, 7, 8, 3, 4, 5, 6, 7, 8])
    return labels[rng.permutation(len(labels))]


def test_a_balanced_batch_holds_m_distinct_images_of_each_of_p_distinct_classes() -> None:
    labels = uneven_labels()
    sampler = ClassBalancedSampler(labels, classes_per_batch=4, images_per_class=3, seed=5, num_batches=50)
    assert (sampler.classes_per_batch, sampler.images_per_class, sampler.batch_size, len(sampler)) == (4, 3, 12, 50)
    for index in range(50):
        batch = sampler.batch(index)
        assert isinstance(batch, ClassBatch) and batch.index == index
        assert len(set(batch.classes.tolist())) == 4 and len(set(batch.indices.tolist())) == 12
        assert batch.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # class-major
        assert np.array_equal(labels[batch.indices], batch.class_labels)
    assert "classes_per_batch=4, images_per_class=3" in repr(sampler)


def test_batch_i_is_a_pure_function_of_seed_and_i() -> None:
    labels = uneven_labels()
    first = ClassBalancedSampler(labels, 4, 3, seed=7)
    again = ClassBalancedSampler(labels, 4, 3, seed=7)
    alone = first.batch(9)
    together = again.batches([30, 9, 2])[1]
    streamed = next(itertools.islice(first.iterate_batches(), 9, None))
    for batch in (together, streamed):
        assert np.array_equal(batch.classes, alone.classes) and np.array_equal(batch.indices, alone.indices)
    other_seed = ClassBalancedSampler(labels, 4, 3, seed=8)
    assert any(not np.array_equal(other_seed.batch(i).indices, first.batch(i).indices) for i in range(5))


def test_a_balanced_batch_has_the_items_of_the_episode_of_the_same_size() -> None:
    # P classes x M images is a P-way draw of M items per class: the same classes and items as episode i of a
    # P-way (M - 1)-shot 1-query sampler, laid out as one block per class instead of support then query.
    labels = uneven_labels()
    balanced = ClassBalancedSampler(labels, 4, 3, seed=2)
    episodes = EpisodeSampler(labels, 4, 2, 1, seed=2)
    for index in range(20):
        batch, episode = balanced.batch(index), episodes.episode(index)
        assert np.array_equal(batch.classes, episode.classes)
        per_class = np.concatenate([episode.support.reshape(4, 2), episode.query.reshape(4, 1)], axis=1)
        assert np.array_equal(batch.indices, per_class.reshape(-1))


def test_balanced_shards_are_disjoint_and_resume_where_they_stopped() -> None:
    sampler = ClassBalancedSampler(uneven_labels(), 3, 2, seed=1, num_batches=10)
    whole = [b.index for b in sampler.iterate_batches()]
    shards = [[b.index for b in sampler.iterate_batches(shard=s, num_shards=3)] for s in range(3)]
    assert whole == list(range(10)) and sorted(sum(shards, [])) == whole
    assert not set(shards[0]) & set(shards[1])
    resumed = [b.indices.tolist() for b in sampler.iterate_batches(start=6)]
    assert resumed == [sampler.batch(i).indices.tolist() for i in range(6, 10)]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(classes_per_batch=13, images_per_class=2), r"classes_per_batch=13 needs 13 classes but only 12"),
    (dict(classes_per_batch=2, images_per_class=4), r"2 classes have fewer than images_per_class = 4 items \(class 0: 3"),
    (dict(classes_per_batch=0, images_per_class=2), r"classes_per_batch must be a positive int, got 0"),
    (dict(classes_per_batch=2, images_per_class=(1, 2)), r"images_per_class must be a positive int, got \(1, 2\)"),
    (dict(classes_per_batch=2, images_per_class=True), r"images_per_class must be a positive int, got True"),
    (dict(classes_per_batch=2, images_per_class=2, num_batches=0), r"num_batches must be a positive int or None, got 0"),
])
def test_bad_balanced_batch_settings_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClassBalancedSampler(uneven_labels(), **kwargs)


def test_classes_too_small_for_a_balanced_batch_can_be_excluded() -> None:
    with pytest.warns(UserWarning, match="excluded"):
        sampler = ClassBalancedSampler(uneven_labels(), 3, 5, too_small="exclude")
    assert sampler.excluded == {0: 3, 1: 4, 6: 3, 7: 4}
    assert not set(sampler.batch(0).classes.tolist()) & set(sampler.excluded)


def test_episode_samplers_still_refuse_zero_queries() -> None:
    with pytest.raises(ValueError, match=r"queries must be >= 1.*got 0"):
        EpisodeSampler(uneven_labels(), 3, 2, 0)


def test_balanced_batches_through_the_torch_adapters() -> None:
    labels = uneven_labels()
    sampler = ClassBalancedSampler(labels, 4, 3, seed=0, num_batches=6)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)  # pixel = item id
    stream = list(EpisodeDataset(sampler, TensorStore(images), rank=0, world_size=1, with_classes=True))
    assert len(stream) == 6
    for index, (x, y, query_x, query_y, classes) in enumerate(stream):
        batch = sampler.batch(index)
        assert x.shape == (12, 1, 2, 2) and query_x.shape == (0, 1, 2, 2) and query_y.shape == (0,)
        assert torch.equal(y, torch.from_numpy(batch.labels)) and torch.equal(classes, torch.from_numpy(batch.classes))
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), torch.from_numpy(batch.indices))
    # As a DataLoader batch_sampler: each batch's dataset indices (for the default collate: images, dataset labels).
    batch_sampler = EpisodeBatchSampler(sampler, rank=0, world_size=1)
    assert list(batch_sampler) == [sampler.batch(i).indices.tolist() for i in range(6)]
    dataset = [(torch.tensor(float(i)), int(label)) for i, label in enumerate(labels)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler)
    first_x, first_y = next(iter(loader))
    assert torch.equal(first_y, torch.from_numpy(labels[sampler.batch(0).indices]))


@pytest.mark.parametrize("name", [name for name in LEARNERS if not LEARNERS[name].needs_queries])
def test_batch_losses_train_on_a_batch_without_queries(name: str) -> None:
    torch.manual_seed(0)
    proxies = {"num_classes": 10, "dim": 8} if "num_classes" in LEARNERS.signature(name) else {}
    learner = LEARNERS[name](**proxies)
    embeddings = torch.randn(12, 8, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(3)
    empty = torch.empty(0, 8)
    output = learner(embeddings, labels, empty, torch.empty(0, dtype=torch.long), generator=torch.Generator().manual_seed(0),
                     classes=torch.tensor([1, 5, 7, 9]))
    output.loss.backward()
    assert torch.isfinite(output.loss) and torch.isfinite(embeddings.grad).all() and output.logits.shape == (0, 4)


def test_episodic_losses_refuse_a_batch_without_queries() -> None:
    learner = build_learner("protonet")
    with pytest.raises(ValueError, match="PrototypicalLearner loss needs query embeddings"):
        learner(torch.randn(6, 4), torch.arange(3).repeat_interleave(2), torch.empty(0, 4), torch.empty(0, dtype=torch.long))


# ----------------------------------------------------------------------------------- training runs

# Tiny runs: 16-channel Conv-4, 5-way validation, one thread (so that separate runs compute identical numbers).
TINY = ["--ways", "5", "--shots", "1", "--train-ways", "5", "--queries", "2", "--eval-queries", "2", "--val-every", "3",
        "--val-episodes", "2", "--test-episodes", "2", "--checkpoint-every", "3", "--seed", "1", "--threads", "1",
        "--backbone-arg", "hidden=16", "--no-progress"]
BALANCED = ["--sampling", "balanced", "--batch-classes", "8", "--batch-images", "3"]


def command(data_root: Path, output: Path, *extra: str, episodes: int = 6) -> list[str]:
    return [*TINY, "--episodes", str(episodes), "--data-root", str(data_root), "--output", str(output), *extra]


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def backbone_of(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(autouse=True)
def no_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    # The learning curve (matplotlib) is most of a tiny run's time and is not under test here.
    monkeypatch.setattr("fewshot.training.runfiles.plot_curve", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """Meta-Baseline's first command: CosFace on class-balanced batches of the training classes."""
    output = tmp_path_factory.mktemp("pretrain") / "pre"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fewshot.training.runfiles.plot_curve", lambda *args, **kwargs: None)
        code, _, stderr = run_main(command(data_root, output, "--learner", "cosface", *BALANCED))
    assert code == 0, stderr
    return output


def test_balanced_training_logs_batches_without_query_accuracy(pretrained: Path) -> None:
    config = json.loads((pretrained / "config.json").read_text())
    assert (config["sampling"], config["batch_classes"], config["batch_images"]) == ("balanced", 8, 3)
    train_records = [r for r in read_log(pretrained) if r["kind"] == "train"]
    assert [r["episode"] for r in train_records] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and r["accuracy"] is None for r in train_records)
    assert [r["episode"] for r in read_log(pretrained) if r["kind"] == "val"] == [3, 6]  # validation is episodic
    state = load_checkpoint(pretrained / "last.pt")
    assert state["model"]["learner.proxies"].shape[0] == len(state["train_classes"])  # one proxy per training class


def test_balanced_training_resumes_exactly(pretrained: Path, data_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    argv = ["--learner", "cosface", *BALANCED]
    assert run_main(command(data_root, output, *argv, episodes=3))[0] == 0
    # --episodes 6 on a step schedule; --queries is not used by balanced batches, so it may change.
    code, _, stderr = run_main(command(data_root, output, *argv, "--queries", "3", "--resume"))
    assert code == 0, stderr
    state, reference = load_checkpoint(output / "last.pt"), load_checkpoint(pretrained / "last.pt")
    assert_same_tensors(state["model"], reference["model"])
    assert [r for r in read_log(output) if r["kind"] == "train"] == [r for r in read_log(pretrained) if r["kind"] == "train"]


def test_meta_baseline_is_two_commands_and_fine_tuning_starts_from_the_pretrained_backbone(
        pretrained: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    initial: list[dict[str, torch.Tensor]] = []
    forward = FewShotModel.forward

    def recording_forward(self: FewShotModel, *args: Any, **kwargs: Any) -> Any:
        if not initial:  # the first training step's weights, before any update (batch-norm statistics included)
            initial.append({k: v.detach().clone() for k, v in self.backbone.state_dict().items()})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FewShotModel, "forward", recording_forward)
    init = pretrained / "last.pt"
    code, stdout, stderr = run_main(command(data_root, tmp_path / "fine", "--learner", "protonet", "--init", str(init)))
    assert code == 0, stderr
    assert "5-way 1-shot accuracy" in stdout
    assert_same_tensors(initial[0], backbone_of(load_checkpoint(init)))
    config = json.loads((tmp_path / "fine" / "config.json").read_text())
    assert config["init"] == str(init.resolve()) and config["init_sha256"] == file_sha256(init)
    fine = load_checkpoint(tmp_path / "fine" / "last.pt")
    assert not [k for k in fine["model"] if k.startswith("learner.")]  # the proxies were dropped
    assert fine["config"]["init_sha256"] == file_sha256(init)
    # Training moved the backbone away from its initial weights.
    assert any(not torch.equal(v, initial[0][k]) for k, v in backbone_of(fine).items())


def test_a_fine_tuning_run_resumes_exactly_without_reading_its_init_again(pretrained: Path, data_root: Path,
                                                                          tmp_path: Path) -> None:
    init = tmp_path / "pre.pt"
    shutil.copy(pretrained / "last.pt", init)
    argv = ["--learner", "protonet", "--init", str(init)]
    assert run_main(command(data_root, tmp_path / "straight", *argv))[0] == 0
    assert run_main(command(data_root, tmp_path / "stopped", *argv, episodes=3))[0] == 0
    init.rename(tmp_path / "moved.pt")  # resuming needs only last.pt
    code, _, stderr = run_main(command(data_root, tmp_path / "stopped", *argv, "--resume"))
    assert code == 0, stderr
    assert_same_tensors(load_checkpoint(tmp_path / "stopped" / "last.pt")["model"],
                        load_checkpoint(tmp_path / "straight" / "last.pt")["model"])
    # The run records what it started from: resuming with another --init is refused.
    code, _, stderr = run_main(command(data_root, tmp_path / "stopped", "--learner", "protonet", "--init",
                                       str(pretrained / "best.pt"), "--resume", episodes=9))
    assert code == 2 and "init: run has" in stderr


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics(
        pretrained: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    initial: list[torch.Tensor] = []
    forward = FewShotModel.forward

    def recording_forward(self: FewShotModel, *args: Any, **kwargs: Any) -> Any:
        if not initial:
            initial.append(self.learner.proxies.detach().clone())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FewShotModel, "forward", recording_forward)
    init = pretrained / "last.pt"
    code, _, stderr = run_main(command(data_root, tmp_path / "probe", "--learner", "cosface", "--init", str(init),
                                       "--freeze-backbone", *BALANCED))
    assert code == 0, stderr
    state = load_checkpoint(tmp_path / "probe" / "last.pt")
    assert_same_tensors(backbone_of(state), backbone_of(load_checkpoint(init)))  # running means and variances too
    # Only the learner's parameters (the proxies, the distance's scale) were optimised; the proxies started
    # afresh (the pretrained ones dropped) and moved.
    learner_parameters = len(list(model_from_checkpoint(tmp_path / "probe" / "last.pt")[0].learner.parameters()))
    assert [len(group["params"]) for group in state["optimizer"]["param_groups"]] == [learner_parameters]
    torch.manual_seed(1)  # the run's --seed: a new run's seeded initialisation
    fresh = FewShotModel(ModelSpec(**state["spec"])).learner.proxies.detach()
    assert torch.equal(initial[0], fresh) and not torch.equal(initial[0], load_checkpoint(init)["model"]["learner.proxies"])
    assert not torch.equal(state["model"]["learner.proxies"], initial[0])


@pytest.mark.parametrize(("extra", "message"), [
    (["--learner", "protonet", "--sampling", "balanced"],
     r"--sampling balanced gives batches without queries, and the protonet loss needs queries.*cosface"),
    (["--learner", "cosface", "--sampling", "balanced", "--batch-images", "21"],
     r"--batch-images 21 exceeds the images of some classes .* as few as 20"),
    (["--learner", "cosface", "--sampling", "balanced", "--batch-classes", "100000"],
     r"--batch-classes 100000 exceeds the \d+ classes"),
    (["--learner", "protonet", "--freeze-backbone", "--init", "{pretrained}/last.pt"],
     r"--freeze-backbone leaves nothing to train: the protonet learner with the euclidean distance"),
    (["--learner", "cosface", "--freeze-backbone", *BALANCED],
     r"--freeze-backbone needs --init CHECKPOINT: without it the frozen backbone keeps its random initialisation"),
    (["--init", "no-such.pt"], r"--init: checkpoint .*no-such.pt does not exist"),
])
def test_bad_pretraining_settings_are_refused_before_anything_is_written(
        extra: list[str], message: str, data_root: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if any("{pretrained}" in arg for arg in extra):
        pretrained = request.getfixturevalue("pretrained")
        extra = [arg.format(pretrained=pretrained) for arg in extra]
    code, _, stderr = run_main(command(data_root, tmp_path / "run", *extra))
    assert code == 2 and re.search(message, stderr), stderr
    assert not (tmp_path / "run").exists()


def test_an_init_checkpoint_of_another_backbone_is_refused_with_the_difference(pretrained: Path, data_root: Path,
                                                                               tmp_path: Path) -> None:
    argv = [arg for arg in command(data_root, tmp_path / "run", "--init", str(pretrained / "last.pt"))
            if arg not in ("--backbone-arg", "hidden=16")]  # the default 64 channels
    code, _, stderr = run_main(argv)
    assert code == 2 and "holds another backbone architecture" in stderr
    assert "backbone_args: checkpoint {'hidden': 16" in stderr and "vs this run {'hidden': 64" in stderr
    assert not (tmp_path / "run").exists()


def test_an_init_file_that_changed_since_its_config_is_refused(pretrained: Path, data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(**{**json.loads((pretrained / "config.json").read_text()), "output": str(tmp_path / "run"),
                            "init": str(pretrained / "last.pt"), "init_sha256": "0" * 64, "learner": "protonet",
                            "sampling": "episodes"})
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, but the config records 0{64}"):
        train(config, progress=False)


# ----------------------------------------------------------------------------------- R-precision, NMI, AMI

# 1-D hand example with uneven classes (A has R = 2 other items, B has R = 1):
#   x:     0   1   2.5  4.2  10
#   class: A   A   B    A    B
# R nearest other items per query and the fraction of them in the query's class:
#   0   (R=2) -> 1(A), 2.5(B)      1/2
#   1   (R=2) -> 0(A), 2.5(B)      1/2
#   2.5 (R=1) -> 1(A)              0
#   4.2 (R=2) -> 2.5(B), 1(A)      1/2
#   10  (R=1) -> 4.2(A)            0
#   R-precision = 1.5 / 5 = 0.3.   (MAP@R: AP of the A queries 1/2, 1/2, (1/2)(1/2) -> 1.25 / 5.)
R_POSITIONS = torch.tensor([[0.0], [1.0], [2.5], [4.2], [10.0]])
R_LABELS = torch.tensor([0, 0, 1, 0, 1])


def test_r_precision_hand_example() -> None:
    assert r_precision(R_POSITIONS, R_LABELS) == pytest.approx(0.3)
    assert r_precision(R_POSITIONS, R_LABELS, chunk_size=2) == pytest.approx(0.3)
    assert map_at_r(R_POSITIONS, R_LABELS) == pytest.approx(1.25 / 5)
    # A registered distance name: the squared Euclidean distance ranks neighbours the same way.
    assert r_precision(R_POSITIONS, R_LABELS, distance="euclidean") == pytest.approx(0.3)


def test_r_precision_matches_the_definition_on_uneven_random_classes() -> None:
    generator = torch.Generator().manual_seed(3)
    labels = torch.repeat_interleave(torch.arange(6), torch.tensor([2, 3, 4, 5, 6, 7]))
    embeddings = torch.randn(len(labels), 4, generator=generator) + labels[:, None] * 0.5
    distances = torch.cdist(embeddings, embeddings)
    expected = []
    for query in range(len(labels)):
        others = sorted((i for i in range(len(labels)) if i != query), key=lambda i: float(distances[query, i]))
        r = int((labels == labels[query]).sum()) - 1
        expected.append(sum(int(labels[i] == labels[query]) for i in others[:r]) / r)
    assert r_precision(embeddings, labels) == pytest.approx(np.mean(expected))
    with pytest.raises(ValueError, match="at least 2 items per class"):
        r_precision(embeddings[:3], torch.tensor([0, 0, 1]))


def mutual_information(a: list[int], b: list[int]) -> float:
    """I(A; B) in nats from the joint counts, straight from the definition."""
    n = len(a)
    total = 0.0
    for x in set(a):
        for y in set(b):
            joint = sum(1 for i in range(n) if a[i] == x and b[i] == y) / n
            if joint:
                total += joint * math.log(joint / ((a.count(x) / n) * (b.count(y) / n)))
    return total


def entropy(a: list[int]) -> float:
    return -sum(a.count(x) / len(a) * math.log(a.count(x) / len(a)) for x in set(a))


def test_nmi_and_ami_hand_example() -> None:
    # Classes 000111, clusters 001122. Joint counts: (0,0) 2, (0,1) 1, (1,1) 1, (1,2) 2 of 6 items.
    # I = 2 * (2/6) ln((2/6) / (1/2 * 1/3)) + 2 * (1/6) ln((1/6) / (1/2 * 1/3)) = (2/3) ln 2.
    # H(classes) = ln 2, H(clusters) = ln 3, so NMI = (2/3) ln 2 / ((ln 2 + ln 3) / 2) = (4/3) ln 2 / ln 6.
    labels, clusters = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    assert mutual_information(labels, clusters) == pytest.approx(2 / 3 * math.log(2))
    scores = clustering_scores(labels, clusters)
    assert scores.nmi == pytest.approx(4 / 3 * math.log(2) / math.log(6)) and scores.clusters == 3
    # AMI = (I - E[I]) / (mean entropy - E[I]), E[I] over the random clusterings with the same cluster
    # sizes: every one of the 6! orderings of the cluster ids, equally likely.
    expected_mi = np.mean([mutual_information(labels, list(order)) for order in itertools.permutations(clusters)])
    mean_entropy = (entropy(labels) + entropy(clusters)) / 2
    assert scores.ami == pytest.approx((2 / 3 * math.log(2) - expected_mi) / (mean_entropy - expected_mi))
    # The classes themselves (renamed) score 1; a clustering independent of them, NMI 0 and AMI below 0.
    assert clustering_scores(labels, [5, 5, 5, 2, 2, 2]).nmi == pytest.approx(1.0)
    assert clustering_scores(labels, [5, 5, 5, 2, 2, 2]).ami == pytest.approx(1.0)
    independent = clustering_scores([0, 0, 1, 1], [0, 1, 0, 1])
    assert independent.nmi == pytest.approx(0.0, abs=1e-12) and independent.ami < 0


def test_clustering_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="one entry per item, got 3 labels and 2 clusters"):
        clustering_scores([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="labels must hold integer ids"):
        clustering_scores([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 4\] for 4 embeddings, got 5"):
        kmeans_clusters(torch.zeros(4, 2), 5)
    with pytest.raises(ValueError, match="non-finite"):
        kmeans_clusters(torch.tensor([[0.0], [math.nan]]), 1)


def test_kmeans_finds_separated_classes_and_is_seeded() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 8, generator=generator) * 10
    labels = torch.arange(5).repeat_interleave(12)
    embeddings = centres[labels] + 0.1 * torch.randn(60, 8, generator=generator)
    clusters = kmeans_clusters(embeddings, 5, seed=3)
    assert np.array_equal(clusters, kmeans_clusters(embeddings, 5, seed=3))
    scores = clustering_scores(labels, clusters)
    assert scores.nmi == pytest.approx(1.0) and scores.ami == pytest.approx(1.0)
    # Normalised rows: only directions count, so scaling each row changes nothing.
    scaled = embeddings * torch.rand(60, 1, generator=generator).add(0.5)
    assert np.array_equal(kmeans_clusters(scaled, 5, seed=3, normalize=True),
                          kmeans_clusters(embeddings, 5, seed=3, normalize=True))


def test_embedding_metrics_report_r_precision_and_clustering(pretrained: Path, data_root: Path) -> None:
    splits = load_splits("omniglot", "vinyals", data_root)
    val, test = splits.val.subset(np.arange(10)), splits.test.subset(np.arange(12))
    model, _ = model_from_checkpoint(pretrained / "best.pt")
    metrics = embedding_metrics(model, val, test, torch.device("cpu"), pairs=2000, seed=4)
    retrieval, clustering = metrics["retrieval"], metrics["clustering"]
    assert 0 <= retrieval["r_precision"] <= 1 and 0 <= retrieval["map_at_r"] <= retrieval["r_precision"] + 1e-9
    assert (clustering["method"], clustering["k"], clustering["seed"], clustering["items"]) == ("k-means", 12, 4, len(test))
    assert clustering["normalized"] is True  # CosFace compares embeddings by cosine
    assert 0 <= clustering["nmi"] <= 1 and -1 <= clustering["ami"] <= 1
    assert metrics == embedding_metrics(model, val, test, torch.device("cpu"), pairs=2000, seed=4)  # seeded
    # In the evaluator's table and its strict JSON.
    report = evaluate_checkpoint(pretrained / "best.pt", ways_shots=[(5, 1)], queries=2, episodes=2, splits=splits,
                                 progress=False)
    report["embedding_metrics"] = metrics
    table = format_table(report)
    assert f"R-precision {100 * retrieval['r_precision']:.2f}%" in table
    assert f"clustering: k-means (k=12, seed 4, L2-normalised) NMI {clustering['nmi']:.4f}, AMI {clustering['ami']:.4f}" in table
    assert json.loads(report_json(report))["embedding_metrics"]["clustering"]["nmi"] == clustering["nmi"]
