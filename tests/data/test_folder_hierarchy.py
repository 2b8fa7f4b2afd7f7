"""Two-level image folders (`hierarchy=true`): `root/[<split>/]<parent>/<class>/<image>`, classes named
"parent/class", so that episodes can be drawn within one parent (issue 27, item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from episodes.hierarchy import parents_from_names
from fewshot.cli.evaluate import main as evaluate_main
from fewshot.cli.train import main as train_main
from fewshot.data import from_folder
from fewshot.data.datasets import dataset_options, load_splits
from fewshot.evaluation.episodes import within_parent_evaluation
from tests.support.synthetic import write_image_folder


def write_tree(root: Path, parents: dict[str, int], per_class: int = 6, seed: int = 0) -> Path:
    """`root/<parent>/<class>/<i>.png` with `parents[parent]` classes each; every parent drawn with its own
    seed (from `seed` on), so that no two images are the same file."""
    for offset, (parent, classes) in enumerate(parents.items()):
        write_image_folder(root / parent, classes=classes, per_class=per_class, size=16, seed=seed + offset)
    return root


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree") / "alphabets", {"Greek": 6, "Latin": 5, "Runic": 5})


@pytest.fixture(scope="module")
def split_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("split-tree") / "alphabets"
    write_tree(root / "train", {"Greek": 5, "Latin": 5})
    write_tree(root / "val", {"Cyrillic": 4}, seed=10)
    write_tree(root / "test", {"Hebrew": 4, "Runic": 4}, seed=20)
    return root


def test_a_two_level_tree_names_classes_parent_slash_class(flat_tree: Path) -> None:
    splits = from_folder(flat_tree, image_size=16, hierarchy=True, progress=False)
    assert splits.scheme == "random" and splits.options["hierarchy"] is True
    names = [*splits.train.class_names, *splits.val.class_names, *splits.test.class_names]
    assert len(names) == 16 and all(name.count("/") == 1 for name in names)
    expected = {f"{parent.name}/{folder.name}" for parent in flat_tree.iterdir() for folder in parent.iterdir()}
    assert set(names) == expected
    parents, parent_names = parents_from_names(names)
    assert sorted(parent_names) == ["Greek", "Latin", "Runic"] and len(parents) == 16
    # Item ids keep the full relative path.
    assert all(item.count("/") == 2 for item in splits.train.item_ids)


def test_split_folders_over_parents_keep_their_classes_and_give_within_parent_episodes(split_tree: Path) -> None:
    splits = from_folder(split_tree, image_size=16, hierarchy=True, progress=False)
    assert splits.scheme == "folders"
    assert {name.split("/")[0] for name in splits.train.class_names} == {"Greek", "Latin"}
    assert {name.split("/")[0] for name in splits.test.class_names} == {"Hebrew", "Runic"}
    episodes, record = within_parent_evaluation(splits.test, 3, 1, 2, 20, seed=0)
    assert sorted(record["included_parents"]) == ["Hebrew", "Runic"]
    for episode in episodes:
        assert len({splits.test.class_names[c].split("/")[0] for c in episode.classes}) == 1
        assert set(splits.test.labels[episode.support]) == set(episode.classes.tolist())


def test_the_registered_loader_takes_hierarchy_as_a_dataset_argument(split_tree: Path) -> None:
    options = dataset_options("folder").parse_arguments("folder", ["hierarchy=true"], "--dataset-arg")
    assert options == {"hierarchy": True}
    splits = load_splits("folder", root=split_tree, image_size=16, **options)
    assert splits.val.class_names == [f"Cyrillic/{p.name}" for p in sorted((split_tree / "val" / "Cyrillic").iterdir())]


def test_default_layouts_are_unchanged_and_nested_folders_suggest_hierarchy(flat_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class folder .* holds the folder .*pass hierarchy=true"):
        from_folder(flat_tree, image_size=16, progress=False)
    plain = write_image_folder(tmp_path / "plain", classes=10, per_class=4, size=16)
    splits = from_folder(plain, image_size=16, progress=False)
    assert "hierarchy" not in splits.options and all("/" not in name for name in splits.train.class_names)
    with pytest.raises(ValueError, match="parent folder .* holds images directly; hierarchy=true expects"):
        from_folder(plain, image_size=16, hierarchy=True, progress=False)
    with pytest.raises(ValueError, match="hierarchy must be true or false"):
        from_folder(plain, image_size=16, hierarchy="yes", progress=False)  # type: ignore[arg-type]


def test_train_and_evaluate_within_parent_on_a_users_folder(split_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train_main(["--dataset", "folder", "--data-root", str(split_tree), "--dataset-arg", "hierarchy=true",
                       "--output", str(run), "--episodes", "2", "--ways", "3", "--shots", "1", "--train-ways", "5",
                       "--queries", "2", "--eval-queries", "2", "--val-every", "2", "--val-episodes", "2",
                       "--test-episodes", "2", "--image-size", "16", "--threads", "1", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["dataset_args"] == {"hierarchy": True}
    report_path = tmp_path / "within.json"
    assert evaluate_main([str(run / "best.pt"), "--within-alphabet", "--ways", "3", "--queries", "2",
                          "--episodes", "4", "--report", str(report_path), "--no-progress"]) == 0
    report = json.loads(report_path.read_text())
    assert report["episode_source"]["kind"] == "within-parent"
    row, = report["results"]
    assert sorted(row["parents"]["included_parents"]) == ["Hebrew", "Runic"] and len(row["per_episode"]) == 4
    assert np.isfinite(row["accuracy"])
