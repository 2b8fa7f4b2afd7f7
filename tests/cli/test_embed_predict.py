"""Inference from the command line, end to end on a tiny trained checkpoint and folders of PNGs:
`python -m fewshot embed` (a .npy and its file list) against `TrainedModel.embed`, and `python -m fewshot predict`
(a CSV) against `TrainedModel.classify` / `predict_proba`, which take folders as well as lists."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.cli import main as fewshot_main
from fewshot.cli.runners.embed import files_path
from fewshot.inference.classifier import TrainedModel, load
from fewshot.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
SHOTS = 3
CLASSES = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """best.pt of a tiny protonet run on the generated Omniglot."""
    output = tmp_path_factory.mktemp("embed-predict") / "run"
    train(TrainConfig(train_ways=5, queries=2, eval_queries=5, episodes=20, val_every=20, val_episodes=2,
                      test_episodes=2, data_root=str(synthetic_root), output=str(output), threads=1), progress=False)
    return output / "best.pt"


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> TrainedModel:
    return load(checkpoint)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> dict[str, Path]:
    """PNGs of the generated evaluation alphabets: `gallery` (<alphabet>/<character>/<id>.png), and from its first
    CLASSES characters a `support` folder of class folders (SHOTS images each), a `query` folder of class folders
    (the rest) and a `flat` folder of the same queries without class folders."""
    base = tmp_path_factory.mktemp("images")
    with zipfile.ZipFile(synthetic_root / "omniglot" / "images_evaluation.zip") as archive:
        archive.extractall(base, members=[n for n in archive.namelist() if n.endswith(".png")])
    gallery = base / "images_evaluation"
    characters = sorted(c for a in sorted(gallery.iterdir()) for c in sorted(a.iterdir()))[:CLASSES]
    for character in characters:
        name = f"{character.parent.name}-{character.name}"
        for i, png in enumerate(sorted(character.glob("*.png"))):
            if i < SHOTS:
                target = base / "support" / name / png.name
            else:
                target = base / "query" / name / png.name
                (base / "flat").mkdir(exist_ok=True)
                shutil.copy(png, base / "flat" / f"{name}-{png.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, target)
    return {"gallery": gallery, "support": base / "support", "query": base / "query", "flat": base / "flat"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_embed_writes_the_embeddings_of_embed_with_files_and_labels(model: TrainedModel, checkpoint: Path,
                                                                      folders: dict[str, Path], tmp_path: Path, capsys):
    out = tmp_path / "out" / "emb.npy"  # a folder still to make
    assert fewshot_main(["embed", str(checkpoint), str(folders["gallery"]), "--out", str(out), "--no-progress"]) == 0
    assert "embedded" in capsys.readouterr().out
    embeddings = np.load(out)
    rows = read_csv(files_path(out))
    assert files_path(out) == tmp_path / "out" / "emb.files.csv"
    assert embeddings.dtype == np.float32 and embeddings.shape[0] == len(rows)
    # The folder through the API: the same rows, files and class-folder labels.
    expected, items, labels = model.embed_items(folders["gallery"])
    torch.testing.assert_close(torch.from_numpy(embeddings), model.embed(folders["gallery"]), rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(embeddings), expected, rtol=0, atol=0)
    assert [row["file"] for row in rows] == [Path(item).relative_to(folders["gallery"].resolve()).as_posix()
                                             for item in items]
    assert [row["label"] for row in rows] == labels and labels[0].count("/") == 1  # <alphabet>/<character>
    # And the same embeddings as `embed` of the image files listed.
    listed = model.embed([folders["gallery"] / row["file"] for row in rows])
    torch.testing.assert_close(torch.from_numpy(embeddings), listed, rtol=1e-5, atol=1e-5)


def test_embed_of_a_flat_folder_leaves_the_labels_empty(checkpoint: Path, folders: dict[str, Path], tmp_path: Path):
    out = tmp_path / "flat.npy"
    assert fewshot_main(["embed", str(checkpoint), str(folders["flat"]), "--out", str(out), "--no-progress"]) == 0
    rows = read_csv(files_path(out))
    assert len(rows) == CLASSES * (20 - SHOTS) == len(np.load(out))
    assert all(row["label"] == "" and "/" not in row["file"] for row in rows)


def test_python_m_fewshot_embed_runs_as_written(checkpoint: Path, folders: dict[str, Path], tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "fewshot", "embed", str(checkpoint), str(folders["support"]),
                             "--out", "emb.npy"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "emb.npy").shape[0] == CLASSES * SHOTS
    assert len(read_csv(tmp_path / "emb.files.csv")) == CLASSES * SHOTS


@pytest.mark.parametrize("query", ["query", "flat"])
def test_predict_writes_the_predictions_of_classify(model: TrainedModel, checkpoint: Path, folders: dict[str, Path],
                                                    tmp_path: Path, query: str, capsys):
    out = tmp_path / "predictions.csv"
    assert fewshot_main(["predict", str(checkpoint), "--support", str(folders["support"]), "--query",
                         str(folders[query]), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"classified {CLASSES * (20 - SHOTS)} query images among {CLASSES} classes" in printed
    assert ("accuracy on the" in printed) == (query == "query")
    rows = read_csv(out)
    classes = sorted(path.name for path in folders["support"].iterdir())
    assert list(rows[0]) == ["file", "label", "prediction", *(f"p_{name}" for name in classes)]
    # The API on the same folders, and on the same images as lists with labels.
    assert [row["prediction"] for row in rows] == model.classify(folders["support"], None, folders[query])
    support_files = sorted(folders["support"].glob("*/*.png"))
    query_files = [folders[query] / row["file"] for row in rows]
    assert [row["prediction"] for row in rows] == model.classify(support_files, [p.parent.name for p in support_files],
                                                                 query_files)
    probabilities, order = model.predict_proba(folders["support"], None, folders[query])
    assert order == classes
    written = torch.tensor([[float(row[f"p_{name}"]) for name in classes] for row in rows])
    torch.testing.assert_close(written, probabilities, rtol=0, atol=1e-6)
    if query == "query":
        assert [row["label"] for row in rows] == [Path(row["file"]).parent.name for row in rows]
        assert np.mean([row["label"] == row["prediction"] for row in rows]) > 1 / CLASSES
    else:
        assert all(row["label"] == "" for row in rows)


def test_the_api_takes_folders_for_embed_classify_and_predict_proba(model: TrainedModel, folders: dict[str, Path]):
    files = sorted(folders["flat"].glob("*.png"))
    torch.testing.assert_close(model.embed(folders["flat"]), model.embed(files), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.embed(str(folders["flat"])), model.embed(folders["flat"]), rtol=0, atol=0)
    support_files = sorted(folders["support"].glob("*/*.png"))
    support_labels = [p.parent.name for p in support_files]
    # A folder on one side only: the support folder with a query list, a support list with the query folder.
    assert model.classify(folders["support"], None, files) == model.classify(support_files, support_labels, files)
    assert model.classify(support_files, support_labels, folders["flat"]) == \
        model.classify(support_files, support_labels, files)
    with pytest.raises(ValueError, match="labels come from the class folders"):
        model.classify(folders["support"], support_labels, files)
    with pytest.raises(ValueError, match="the support needs labels"):
        model.predict_proba(folders["flat"], None, files)
    with pytest.raises(ValueError, match="the support needs labels"):
        model.predict_proba(support_files, None, files)


def test_outputs_are_checked_before_any_work(folders: dict[str, Path], tmp_path: Path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    missing_checkpoint = str(tmp_path / "missing.pt")  # reached only after the output checks
    assert fewshot_main(["embed", missing_checkpoint, str(folders["flat"]), "--out", str(blocker / "emb.npy")]) == 2
    assert f"cannot write --out {blocker / 'emb.npy'}: {blocker} is a file, not a folder" in capsys.readouterr().err
    assert fewshot_main(["embed", missing_checkpoint, str(folders["flat"]), "--out", str(tmp_path / "emb.txt")]) == 2
    assert "must name a .npy file" in capsys.readouterr().err
    assert fewshot_main(["embed", missing_checkpoint, str(folders["flat"]), "--out", str(tmp_path)]) == 2
    assert "must name a .npy file" in capsys.readouterr().err
    assert fewshot_main(["predict", missing_checkpoint, "--support", str(folders["support"]), "--query",
                         str(folders["flat"]), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob("*.csv"))


def test_predict_refuses_a_support_without_class_folders(checkpoint: Path, folders: dict[str, Path], tmp_path: Path,
                                                         capsys):
    out = tmp_path / "predictions.csv"
    assert fewshot_main(["predict", str(checkpoint), "--support", str(folders["flat"]), "--query",
                         str(folders["flat"]), "--out", str(out), "--no-progress"]) == 2
    assert "holds no class folders" in capsys.readouterr().err and not out.exists()
