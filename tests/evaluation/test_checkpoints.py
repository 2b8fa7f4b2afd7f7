"""Evaluator on Omniglot (real, or the miniature in the real formats without FEWSHOT_DATA): per-episode accuracies and intervals, paired comparison, the novel-class guard,
seeded episodes, chance level, bad input and the CLI's report, plot and table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch import nn

from fewshot.model.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint, save_checkpoint
from fewshot.data.datasets import DatasetSplits, load_splits
from fewshot.evaluation import EvaluationSettings, evaluate_checkpoint, evaluate_model, evaluation_episodes
from fewshot.cli.evaluate import main
from fewshot.cli.train import main as train_main
from fewshot.data import from_folder
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.training import TrainConfig, train
from tests.support.synthetic import write_image_folder


@pytest.fixture(scope="module")
def splits(data_root: Path) -> DatasetSplits:
    return load_splits("omniglot", "vinyals", data_root)


@pytest.fixture(scope="module")
def best_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """best.pt of a tiny real training run (20 episodes of 5-way protonet)."""
    output = tmp_path_factory.mktemp("evaluate") / "run"
    train(TrainConfig(train_ways=5, queries=2, eval_queries=5, episodes=20, val_every=20, val_episodes=2,
                      test_episodes=2, data_root=str(data_root), output=str(output), threads=1), progress=False)
    return output / "best.pt"


def evaluate(checkpoint: Path, **kwargs) -> dict:
    options = {"ways_shots": [(5, 1)], "queries": 5, "episodes": 20, "seed": 0, "progress": False, **kwargs}
    return evaluate_checkpoint(checkpoint, **options)


def test_report_holds_per_episode_accuracies_and_their_intervals(best_checkpoint: Path, splits: DatasetSplits) -> None:
    report = evaluate(best_checkpoint, ways_shots=[(5, 1), (5, 5)], splits=splits)
    assert report["checkpoint_sha256"] == file_sha256(best_checkpoint)
    assert report["episode_source"] == {"kind": "seed", "seed": 0, "sampler": "episodes.EpisodeSampler"}
    assert (report["eval_split"], report["split"], report["classes"]) == ("test", "vinyals", splits.test.num_classes)
    assert [(r["ways"], r["shots"]) for r in report["results"]] == [(5, 1), (5, 5)]
    model, _ = model_from_checkpoint(best_checkpoint)
    for row in report["results"]:
        per_episode = np.array(row["per_episode"])
        assert per_episode.shape == (20,)
        assert np.allclose(per_episode * 25, np.round(per_episode * 25))  # 25 queries: multiples of 1/25
        # The same numbers as evaluating the model directly on the same seeded episodes.
        direct = evaluate_model(model, splits.test, 5, row["shots"], 5, episodes=20, seed=0)
        assert per_episode.tolist() == direct.tolist()
        standard_error = per_episode.std(ddof=1) / np.sqrt(20)
        assert row["accuracy"] == pytest.approx(per_episode.mean())
        assert row["ci95"] == pytest.approx(stats.norm.ppf(0.975) * standard_error)
        assert row["t"]["half_width"] == pytest.approx(stats.t.ppf(0.975, df=19) * standard_error)
        assert row["normal"]["low"] == pytest.approx(row["accuracy"] - row["ci95"])
        assert row["accuracy"] > 0.4  # trained: well above 1/5


def test_evaluate_model_restores_the_training_mode(splits: DatasetSplits, best_checkpoint: Path) -> None:
    model, _ = model_from_checkpoint(best_checkpoint)
    model.train()
    evaluate_model(model, splits.test, 5, 1, 5, episodes=2)
    assert model.training


def test_comparing_a_checkpoint_with_itself_gives_zero_difference_and_p_one(best_checkpoint: Path,
                                                                             splits: DatasetSplits) -> None:
    report = evaluate(best_checkpoint, compare=best_checkpoint, splits=splits)
    compared = report["compare"]["results"][0]
    assert compared["accuracy"] == report["results"][0]["accuracy"]
    assert compared["difference"]["mean"] == 0.0 and compared["difference"]["half_width"] == 0.0
    assert compared["p_value"] == 1.0 and compared["wilcoxon_p_value"] == 1.0


def test_novel_class_guard_trips_on_training_classes_and_yields_to_the_flag(best_checkpoint: Path,
                                                                             splits: DatasetSplits) -> None:
    with pytest.raises(ValueError, match=rf"{splits.train.num_classes} of the {splits.train.num_classes} classes .* 'train' split were seen") as error:
        evaluate(best_checkpoint, eval_split="train", splits=splits)
    assert "--allow-seen-classes" in str(error.value)
    assert splits.train.class_names[0] in str(error.value)  # names the overlapping classes
    report = evaluate(best_checkpoint, eval_split="train", allow_seen=True, splits=splits)
    assert report["eval_split"] == "train" and report["classes"] == splits.train.num_classes
    assert evaluate(best_checkpoint, eval_split="val", splits=splits)["classes"] == splits.val.num_classes  # novel: no flag needed


def test_the_cli_refuses_seen_classes_without_the_flag(best_checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(best_checkpoint), "--eval-split", "train", "--episodes", "2", "--queries", "5",
            "--report", str(tmp_path / "train.json"), "--no-progress"]
    assert main(argv) == 2
    assert "--allow-seen-classes" in capsys.readouterr().err and not (tmp_path / "train.json").exists()
    assert main([*argv, "--allow-seen-classes"]) == 0
    assert json.loads((tmp_path / "train.json").read_text())["eval_split"] == "train"


def test_seed_fixes_the_episodes(best_checkpoint: Path, splits: DatasetSplits) -> None:
    first = evaluate(best_checkpoint, splits=splits)["results"][0]["per_episode"]
    again = evaluate(best_checkpoint, splits=splits)["results"][0]["per_episode"]
    other = evaluate(best_checkpoint, seed=1, splits=splits)["results"][0]["per_episode"]
    assert first == again
    assert first != other
    episodes_0 = evaluation_episodes(splits.test, 5, 1, 5, 20, seed=0)
    episodes_1 = evaluation_episodes(splits.test, 5, 1, 5, 20, seed=1)
    episodes_0_again = evaluation_episodes(splits.test, 5, 1, 5, 20, seed=0)
    assert all(np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
               for a, b in zip(episodes_0, episodes_0_again))
    assert not any(np.array_equal(a.support, b.support) for a, b in zip(episodes_0, episodes_1))


class RandomEmbedding(nn.Module):
    """A backbone whose embeddings ignore the images entirely: seeded Gaussian noise."""

    def __init__(self, dim: int, seed: int) -> None:
        super().__init__()
        self.dim = dim
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(images), self.dim, generator=self.generator)


@pytest.mark.parametrize("ways", [5, 20])
def test_embeddings_that_carry_no_signal_score_chance(ways: int, splits: DatasetSplits) -> None:
    # Not an untrained Conv-4: random conv features already separate Omniglot characters well above chance.
    model = FewShotModel(ModelSpec())
    model.backbone = RandomEmbedding(64, seed=ways)
    # Fresh noise on every call: an embedding that is not a function of the image, so it is embedded per episode
    # (embedded once, an image's noise would be shared by every episode it is in, and episodes would correlate).
    accuracies = evaluate_model(model, splits.test, ways, shots=1, queries=5, episodes=200, seed=0, per_episode=True)
    # 99%: the expected accuracy is exactly 1/ways, so a 95% interval would miss it one seed in twenty.
    low, high = stats.t.interval(0.99, df=len(accuracies) - 1, loc=accuracies.mean(), scale=stats.sem(accuracies))
    assert low < 1 / ways < high
    assert high - low < 0.05  # tight enough that a real signal would fall outside


def test_more_ways_than_the_split_has_classes_is_refused(best_checkpoint: Path, splits: DatasetSplits,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=f"--ways 1700 exceeds the {splits.test.num_classes} classes of the omniglot test split"):
        evaluate(best_checkpoint, ways_shots=[(1700, 1)], splits=splits)
    assert main([str(best_checkpoint), "--eval-split", "val", "--ways", "700", "--no-progress"]) == 2
    assert f"--ways 700 exceeds the {splits.val.num_classes} classes of the omniglot val split" in capsys.readouterr().err


def test_more_shots_and_queries_than_a_class_holds_is_refused_before_evaluating(best_checkpoint: Path,
                                                                                splits: DatasetSplits) -> None:
    with pytest.raises(ValueError, match=r"--shots 10 \+ --queries 15 needs 25 images per class, but classes of the "
                                         r"omniglot test split have as few as 20"):
        evaluate(best_checkpoint, ways_shots=[(5, 1), (5, 10)], queries=15, splits=splits)


def test_unknown_split_names_are_refused(best_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown evaluation split 'holdout'; expected one of test, val, train"):
        evaluate(best_checkpoint, eval_split="holdout")
    with pytest.raises(SystemExit) as exit_info:
        main([str(best_checkpoint), "--eval-split", "holdout"])
    assert exit_info.value.code == 2 and "invalid choice: 'holdout'" in capsys.readouterr().err
    assert main([str(best_checkpoint), "--split", "bogus", "--no-progress"]) == 2
    assert "unknown split scheme 'bogus' for omniglot; valid schemes: vinyals, lake" in capsys.readouterr().err


def test_missing_checkpoint_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nothing.pt"), "--no-progress"]) == 2
    assert f"checkpoint {tmp_path / 'nothing.pt'} does not exist" in capsys.readouterr().err


def test_cli_writes_the_json_report_the_plot_and_prints_the_table(best_checkpoint: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "best.pt"
    shutil.copy(best_checkpoint, checkpoint)
    argv = [str(checkpoint), "--ways", "5", "10", "--shots", "1", "5", "--episodes", "4", "--queries", "5", "--no-progress"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    report_path, plot_path = tmp_path / "eval_best_test.json", tmp_path / "eval_best_test.png"  # defaults: beside it
    report = json.loads(report_path.read_text())
    assert [(r["ways"], r["shots"]) for r in report["results"]] == [(5, 1), (5, 5), (10, 1), (10, 5)]
    assert all(len(r["per_episode"]) == 4 for r in report["results"])
    with Image.open(plot_path) as plot:
        assert plot.format == "PNG"
        plot.load()
    assert "ways shots episodes  accuracy" in stdout
    for row in report["results"]:
        assert f"{row['ways']:>5} {row['shots']:>5} {4:>8} {100 * row['accuracy']:>8.2f}%" in stdout
    assert f"report: {report_path}" in stdout and f"plot: {plot_path}" in stdout

    custom = tmp_path / "out" / "report.json"
    assert main([*argv, "--report", str(custom), "--compare", str(checkpoint)]) == 0
    assert custom.is_file() and custom.with_suffix(".png").is_file()
    assert "difference (95% CI)" in capsys.readouterr().out


def test_embedding_metrics_separate_a_trained_model_from_noise(best_checkpoint: Path, splits: DatasetSplits) -> None:
    from fewshot.evaluation import embedding_metrics

    # 30 and 40 classes of the real splits (all of them in the miniature one, which has fewer).
    val = splits.val.subset(np.arange(min(30, splits.val.num_classes)))
    test = splits.test.subset(np.arange(min(40, splits.test.num_classes)))
    trained, _ = model_from_checkpoint(best_checkpoint)
    noise = FewShotModel(ModelSpec())
    noise.backbone = RandomEmbedding(64, seed=0)
    scores = {name: embedding_metrics(model, val, test, torch.device("cpu"), pairs=4000, seed=0)
              for name, model in (("trained", trained), ("noise", noise))}
    for result in scores.values():
        v, r = result["verification"], result["retrieval"]
        assert v["pairs"] > 3000 and r["items"] == len(test)
        assert 0 <= v["eer"] <= 1 and 0 <= v["accuracy_at_val_threshold"] <= 1
        assert list(v["tar_at_far"]) == ["0.001", "0.01", "0.1"]
    # Noise sits at chance: AUC 1/2, Recall@1 about (20 - 1) / (800 - 1); training moves both well above.
    assert abs(scores["noise"]["verification"]["roc_auc"] - 0.5) < 0.05
    assert scores["noise"]["retrieval"]["recall_at_1"] < 0.06
    assert scores["trained"]["verification"]["roc_auc"] > 0.75
    assert scores["trained"]["retrieval"]["recall_at_1"] > 0.2


def test_saved_episode_lists_reproduce_the_seeded_evaluation(best_checkpoint: Path, splits: DatasetSplits,
                                                             tmp_path: Path) -> None:
    seeded = evaluate(best_checkpoint, ways_shots=[(5, 1), (5, 5)], splits=splits,
                      save_episode_lists=tmp_path / "test.json")
    saved = [Path(p) for p in seeded["saved_episode_lists"]]
    assert [p.name for p in saved] == ["test_5way1shot.json", "test_5way5shot.json"]
    for path, row in zip(saved, seeded["results"]):
        replay = evaluate(best_checkpoint, splits=splits, episode_list=path, seed=123)  # the list wins over the seed
        assert replay["episode_source"]["kind"] == "list"
        assert (replay["results"][0]["ways"], replay["results"][0]["shots"]) == (row["ways"], row["shots"])
        assert replay["results"][0]["per_episode"] == row["per_episode"]


def test_an_episode_list_naming_unknown_classes_is_refused(best_checkpoint: Path, splits: DatasetSplits,
                                                           tmp_path: Path) -> None:
    seeded = evaluate(best_checkpoint, splits=splits, save_episode_lists=tmp_path / "test.json")
    path = Path(seeded["saved_episode_lists"][0])
    document = json.loads(path.read_text())
    document["episodes"][0]["classes"][0] = "Atlantean/character99/rot000"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="Atlantean/character99/rot000"):
        evaluate(best_checkpoint, splits=splits, episode_list=path)


def test_evaluation_settings_are_checked_when_made() -> None:
    assert EvaluationSettings(ways_shots=[[5, 1], (20, 5)]).ways_shots == ((5, 1), (20, 5))
    with pytest.raises(ValueError, match="ways must be a positive whole number, got 0"):
        EvaluationSettings(ways_shots=[(0, 1)])
    with pytest.raises(ValueError, match=r"ways_shots must be \(ways, shots\) pairs, got \[5\]"):
        EvaluationSettings(ways_shots=[5])
    with pytest.raises(TypeError, match="unknown evaluation setting\\(s\\) sedd"):
        EvaluationSettings.of(None, {"sedd": 1})
    with pytest.raises(TypeError, match=r"\(ways, shots\) pairs go in ways_shots"):
        evaluate_checkpoint("unused.pt", [(5, 1)])


def test_a_checkpoint_that_records_no_dataset_needs_one_named(best_checkpoint: Path, data_root: Path,
                                                              tmp_path: Path) -> None:
    state = load_checkpoint(best_checkpoint)
    del state["dataset"]
    anonymous = save_checkpoint(tmp_path / "anonymous.pt", state)
    with pytest.raises(ValueError, match=r"records no dataset; name the evaluation data \(--dataset NAME\)"):
        evaluate(anonymous)
    named = evaluate(anonymous, dataset="omniglot", data_root=data_root)
    assert named["results"][0]["per_episode"] == evaluate(best_checkpoint)["results"][0]["per_episode"]


# ----------------------------------------------------------------------------------------------------------------
# A user's folder changed after the run (issue 25, items 1 and 2): classes are identified by content, and the
# checkpoint's recorded class split is the split.

FOLDER_RUN = ["--dataset", "folder", "--ways", "2", "--shots", "1", "--train-ways", "3", "--queries", "2",
              "--eval-queries", "2", "--val-every", "5", "--val-episodes", "2", "--test-episodes", "4",
              "--episodes", "5", "--threads", "1", "--no-progress", "--image-size", "16"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder of 12 classes, best.pt of a 5-episode run on its seeded random split)."""
    base = tmp_path_factory.mktemp("folder-evaluate")
    data = write_image_folder(base / "data", classes=12, per_class=7, size=16)
    assert train_main([*FOLDER_RUN, "--data-root", str(data), "--output", str(base / "run")]) == 0
    return data, base / "run" / "best.pt"


def evaluate_folder(checkpoint: Path, tmp_path: Path, *extra: str) -> int:
    return main([str(checkpoint), "--ways", "2", "--shots", "1", "--queries", "2", "--episodes", "4",
                 "--report", str(tmp_path / "report.json"), "--no-progress", *extra])


def test_a_training_class_renamed_into_the_test_split_is_recognised_by_its_content(
        folder_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, checkpoint = folder_run
    copy = Path(shutil.copytree(data, tmp_path / "copy"))
    trained = load_checkpoint(checkpoint)["train_classes"]
    # A training class renamed so that the seeded split of the copied folder puts it among the test classes.
    for renamed in (f"{prefix}_renamed" for prefix in ("zz", "aa", "mm", "05", "08", "10", "11")):
        (copy / trained[0]).rename(copy / renamed)
        if renamed in from_folder(copy, image_size=16, progress=False).test.class_names:
            break
        (copy / renamed).rename(copy / trained[0])
    else:
        pytest.fail("no rename puts the training class among the test classes")
    capsys.readouterr()
    assert evaluate_folder(checkpoint, tmp_path, "--data-root", str(copy)) == 2
    err = capsys.readouterr().err
    assert f"{renamed} (trained on as {trained[0]})" in err and "--allow-seen-classes" in err
    assert evaluate_folder(checkpoint, tmp_path, "--data-root", str(copy), "--allow-seen-classes") == 0


def test_a_class_folder_renamed_at_the_runs_data_is_named_and_refused(
        folder_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, checkpoint = folder_run
    trained = load_checkpoint(checkpoint)["train_classes"]
    (data / trained[0]).rename(data / "zz_renamed")
    try:
        capsys.readouterr()
        assert evaluate_folder(checkpoint, tmp_path) == 2
        err = capsys.readouterr().err
        assert f"no longer in the data: {trained[0]!r}" in err and "now named 'zz_renamed'" in err
    finally:
        (data / "zz_renamed").rename(data / trained[0])
    assert evaluate_folder(checkpoint, tmp_path) == 0  # restored: evaluated on the recorded split


def test_a_class_folder_added_at_the_runs_data_is_named_and_refused(
        folder_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, checkpoint = folder_run
    extra = write_image_folder(tmp_path / "extra", classes=1, per_class=7, size=16, seed=7)
    (extra / next(iter(extra.iterdir())).name).rename(data / "00_new_class")
    try:
        capsys.readouterr()
        assert evaluate_folder(checkpoint, tmp_path) == 2
        assert "appeared in the data: '00_new_class'" in capsys.readouterr().err
    finally:
        shutil.rmtree(data / "00_new_class")
