"""Episode sizes left to the data: Omniglot's defaults as they always were, a small folder's lowered to
what its splits hold (and printed), given values never changed; the README's and docs/data.md's own-data
lines run as written on a 26-class folder of 5 to 6 images per class."""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import MISSING, fields, replace
from pathlib import Path

import numpy as np
import pytest
from tests.support.synthetic import write_image_folder

from fewshot.cli.runners.train import config_from_args
from fewshot.cli.train import build_parser
from fewshot.cli.train import main as train_main
from fewshot.data import DATASETS, from_arrays, from_folder, load_splits
from fewshot.data.datasets import register_dataset
from fewshot.model.checkpoint import load_checkpoint
from fewshot.training import TrainConfig, train
from fewshot.training.config import data_defaults, describe_data_defaults
from fewshot.training.settings import DATA_DEFAULTS, SECTIONS

REPOSITORY = Path(__file__).resolve().parents[2]
#: Small counts appended the way a user shortens a run (the lines' own values are checked as written).
SHORT = ["--episodes", "2", "--val-every", "2", "--val-episodes", "2", "--test-episodes", "2", "--threads", "1",
         "--no-progress"]


def small_folder(root: Path) -> Path:
    """26 classes of coloured shapes, 6 images in even classes and 5 in odd ones."""
    write_image_folder(root, classes=26, per_class=6, size=24)
    for index, folder in enumerate(sorted(root.iterdir())):
        if index % 2:
            (folder / "005.png").unlink()
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_folder(tmp_path_factory.mktemp("own") / "my_images")


def command_line(path: Path, marker: str) -> list[str]:
    """The arguments of the `python -m fewshot.train` line of `path` holding `marker` (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if marker in line and "fewshot.train" in line)
    words = shlex.split(line, comments=True)
    return words[words.index("fewshot.train") + 1:]


def test_the_generic_defaults_are_omniglots() -> None:
    assert DATA_DEFAULTS == {"train_ways": 60, "queries": 5, "eval_queries": 15}
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(120), 20)  # 72 / 24 / 24 classes of 20 images: room for every default
    splits = from_arrays(rng.integers(0, 255, (len(labels), 16, 16), dtype=np.uint8), labels)
    run = TrainConfig().resolve(splits)
    assert (run.train_ways, run.queries, run.eval_queries) == (60, 5, 15)
    assert describe_data_defaults(TrainConfig(), splits) == []  # nothing lowered, nothing to say


def test_a_small_folder_lowers_the_sizes_left_to_it_and_says_so(folder: Path) -> None:
    splits = from_folder(folder, progress=False)
    assert (splits.train.num_classes, splits.val.num_classes, splits.test.num_classes) == (16, 5, 5)
    run = TrainConfig().resolve(splits)
    assert (run.train_ways, run.queries, run.eval_queries) == (16, 4, 4)
    lines = describe_data_defaults(TrainConfig(), splits)
    assert lines[0] == "train ways: 16 (the folder random train split has 16 classes; default 60)"
    assert lines[1].startswith("queries: 4 (the folder random train split has classes of 5 images, 1 of them support")
    assert lines[2].startswith("eval queries: 4 (the folder random val / test splits have classes of 5 images")
    assert set(data_defaults(TrainConfig(shots=2), splits)) == {"train_ways", "queries", "eval_queries"}
    assert TrainConfig(shots=2).resolve(splits).queries == 3


def test_given_sizes_are_never_changed(folder: Path) -> None:
    splits = from_folder(folder, progress=False)
    with pytest.raises(ValueError, match="--train-ways 60 exceeds the 16 classes of the folder random train split"):
        TrainConfig(train_ways=60).resolve(splits)
    with pytest.raises(ValueError, match="--shots 1 \\+ --eval-queries 15 needs 16 images per class"):
        TrainConfig(eval_queries=15).resolve(splits)
    assert TrainConfig(train_ways=8, queries=2).resolve(splits).train_ways == 8


def test_the_readme_line_runs_as_written(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = command_line(REPOSITORY / "README.md", "--dataset folder --data-root my_images")
    assert argv == ["--dataset", "folder", "--data-root", "my_images", "--augment", "crop-flip-jitter",
                    "--output", "runs/mine"]
    monkeypatch.chdir(folder.parent)
    config = config_from_args(build_parser().parse_args(argv))
    run = config.resolve(from_folder("my_images", progress=False))  # the line's own settings: nothing refused
    assert (run.train_ways, run.episodes) == (16, 6000)
    assert train_main([*argv, *SHORT]) == 0
    err = capsys.readouterr().err
    assert "train ways: 16 (the folder random train split has 16 classes; default 60)" in err
    assert (folder.parent / "runs" / "mine" / "best.pt").is_file()


def test_the_data_page_resnet12_line_runs_as_written(folder: Path, tmp_path: Path) -> None:
    argv = command_line(REPOSITORY / "docs" / "data.md", "--backbone resnet12")
    assert "PATH" in argv and "--backbone" in argv
    argv = [str(folder) if word == "PATH" else word for word in argv]
    argv[argv.index("--output") + 1] = str(tmp_path / "mine")
    config = config_from_args(build_parser().parse_args(argv))
    assert config.resolve(from_folder(folder, image_size=84, progress=False)).train_ways == 16
    assert train_main([*argv, *SHORT]) == 0


def test_the_api_page_lists_every_setting_with_its_default() -> None:
    page = (REPOSITORY / "docs" / "api.md").read_text()
    for name, kind in SECTIONS.items():
        listed = ", ".join(f"`{f.name}` ({f.default if f.default is not MISSING else f.default_factory()!r})"
                           for f in fields(kind))
        assert f"| `{name}` (`{kind.__name__}`) | {listed} |" in page


def test_the_header_says_what_the_run_trains_on_continues_from_and_starts_from(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = TrainConfig(ways=5, shots=1, train_ways=5, queries=2, eval_queries=5, episodes=4, val_every=2,
                       val_episodes=2, test_episodes=2, checkpoint_every=2, threads=1, data_root=str(data_root),
                       train_split="trainval", output=str(tmp_path / "final"))
    train(base, progress=True)
    err = capsys.readouterr().err
    trainval = load_splits("omniglot", None, data_root).trainval
    assert f"training on trainval: {trainval.num_classes} classes (train + val), {len(trainval)} images" in err
    records = [json.loads(line) for line in (tmp_path / "final" / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["kind"] == "val"]  # no accuracy on classes it trained on
    assert "val " not in err.replace("val)", "")  # nor a validation line
    assert load_checkpoint(tmp_path / "final" / "best.pt")["episode"] == 4  # the final model is kept
    train(replace(base, episodes=6), resume=True, progress=False)
    assert f"resuming from episode 4 of 6 ({tmp_path / 'final' / 'last.pt'})" in capsys.readouterr().err
    train(replace(base, train_split="train", init=str(tmp_path / "final" / "last.pt"), output=str(tmp_path / "fine")),
          progress=False)
    assert f"backbone initialised from {tmp_path / 'final' / 'last.pt'} (sha256 " in capsys.readouterr().err


def test_a_dataset_declares_its_own_defaults(folder: Path) -> None:
    splits = dataclasses.replace(from_folder(folder, progress=False), dataset="small-folder")
    register_dataset(dataclasses.replace(DATASETS.get_or_raise("folder"), name="small-folder",
                                         training_defaults={"train_ways": 10, "eval_queries": 3}))
    try:
        run = TrainConfig().resolve(splits)
        assert (run.train_ways, run.queries, run.eval_queries) == (10, 4, 3)  # declared, lowered, declared
        assert TrainConfig(train_ways=12).resolve(splits).train_ways == 12  # given: never changed
    finally:
        DATASETS.unregister("small-folder")
    with pytest.raises(ValueError, match="declares training defaults episodes; a dataset may declare train_ways"):
        dataclasses.replace(DATASETS.get_or_raise("folder"), training_defaults={"episodes": 100})
