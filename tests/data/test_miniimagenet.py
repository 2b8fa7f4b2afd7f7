"""miniImageNet data layer: the real Ravi split CSVs, and miniature copies in both image formats (JPEG folder, pickles).

No miniImageNet images are available offline, so each test writes a few classes x a few images, chosen from the real
CSVs, as small JPEGs named as in the CSVs and as mini-imagenet-cache pickles holding the same pixels.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data.miniimagenet import load_miniimagenet, preprocess_image, read_pickle_cache, read_split_csv
from fewshot.data.splits import ClassSplit

SPLITS = ("train", "val", "test")
CLASSES_PER_SPLIT = {"train": 3, "val": 2, "test": 2}
IMAGES_PER_CLASS = 4
# learn2learn's name for the validation pickle; the loader also accepts mini-imagenet-cache-val.pkl.
PICKLE_NAME = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": "mini-imagenet-cache-validation.pkl",
    "test": "mini-imagenet-cache-test.pkl",
}


@pytest.fixture(scope="module")
def ravi_dir() -> Path:
    """The real Ravi & Larochelle split CSVs; skips when FEWSHOT_DATA is unset."""
    data = os.environ.get("FEWSHOT_DATA")
    if not data:
        pytest.skip("FEWSHOT_DATA is unset: these tests need the real miniImageNet split CSVs (see README)")
    return Path(data) / "miniimagenet" / "splits" / "ravi"


@pytest.fixture(scope="module")
def mini_rows(ravi_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """The first few classes x the first few images of each real split, as (filename, wnid) rows."""
    chosen = {}
    for split in SPLITS:
        rows = read_split_csv(ravi_dir / f"{split}.csv")
        wnids = list(dict.fromkeys(wnid for _, wnid in rows))[: CLASSES_PER_SPLIT[split]]
        chosen[split] = [row for wnid in wnids for row in [r for r in rows if r[1] == wnid][:IMAGES_PER_CLASS]]
    return chosen


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cold, private cache dir, so that every test builds from its own miniature data."""
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_csvs(root: Path, rows: dict[str, list[tuple[str, str]]]) -> None:
    folder = root / "miniimagenet" / "splits" / "ravi"
    folder.mkdir(parents=True)
    for split, split_rows in rows.items():
        lines = ["filename,label"] + [f"{filename},{wnid}" for filename, wnid in split_rows]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


def write_jpegs(root: Path, rows: dict[str, list[tuple[str, str]]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random 84x84 JPEGs under miniimagenet/images/; returns {filename: pixels as PIL decodes them, [84,84,3]}."""
    rng = np.random.default_rng(seed)
    folder = root / "miniimagenet" / "images"
    folder.mkdir(parents=True)
    decoded = {}
    for split_rows in rows.values():
        for filename, _ in split_rows:
            # Blocky noise: survives JPEG compression as distinct images, unlike per-pixel noise.
            blocks = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
            Image.fromarray(np.kron(blocks, np.ones((7, 7, 1), dtype=np.uint8))).save(folder / filename, quality=90)
            with Image.open(folder / filename) as image:
                decoded[filename] = np.array(image.convert("RGB"))
    return decoded


def write_pickles(root: Path, rows: dict[str, list[tuple[str, str]]], pixels: dict[str, np.ndarray]) -> None:
    """mini-imagenet-cache pickles holding `pixels`, rows stored in reverse so that class_dict is not simply 0..N-1."""
    folder = root / "miniimagenet"
    folder.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        filenames = [filename for filename, _ in split_rows][::-1]
        class_dict: dict[str, list[int]] = {}
        for filename, wnid in split_rows:
            class_dict.setdefault(wnid, []).append(filenames.index(filename))
        payload = {"image_data": np.stack([pixels[name] for name in filenames]), "class_dict": class_dict}
        (folder / PICKLE_NAME[split]).write_bytes(pickle.dumps(payload, protocol=4))


@pytest.fixture
def jpeg_root(tmp_path: Path, mini_rows) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "jpeg"
    write_csvs(root, mini_rows)
    return root, write_jpegs(root, mini_rows)


@pytest.fixture
def pickle_root(tmp_path: Path, mini_rows, jpeg_root) -> Path:
    """Pickles holding exactly the pixels of jpeg_root's JPEGs, and no images/ folder."""
    root = tmp_path / "pickle"
    write_csvs(root, mini_rows)
    write_pickles(root, mini_rows, jpeg_root[1])
    return root


def test_real_csvs_have_the_ravi_split(ravi_dir: Path) -> None:
    rows = {split: read_split_csv(ravi_dir / f"{split}.csv") for split in SPLITS}
    classes = {split: list(dict.fromkeys(wnid for _, wnid in split_rows)) for split, split_rows in rows.items()}
    assert {split: len(names) for split, names in classes.items()} == {"train": 64, "val": 16, "test": 20}
    for split, split_rows in rows.items():
        counts = np.unique([wnid for _, wnid in split_rows], return_counts=True)[1]
        assert counts.tolist() == [600] * len(classes[split])
        assert all(filename.startswith(wnid) and filename.endswith(".jpg") for filename, wnid in split_rows)
    assert len(set(classes["train"]) | set(classes["val"]) | set(classes["test"])) == 100
    assert classes["train"][0] == "n01532829"


def test_jpeg_folder_loads_as_class_splits(jpeg_root, mini_rows) -> None:
    root, pixels = jpeg_root
    splits = load_miniimagenet(root, download=False)
    assert set(splits) == set(SPLITS)
    for split in SPLITS:
        view, rows = splits[split], mini_rows[split]
        assert isinstance(view, ClassSplit)
        assert view.images.dtype == torch.uint8
        assert tuple(view.images.shape) == (len(rows), 3, 84, 84)
        assert view.num_classes == CLASSES_PER_SPLIT[split]
        assert view.class_names == list(dict.fromkeys(wnid for _, wnid in rows))
        assert view.item_ids.tolist() == [filename for filename, _ in rows]
        assert [view.class_names[label] for label in view.labels] == [wnid for _, wnid in rows]
        assert np.bincount(view.labels).tolist() == [IMAGES_PER_CLASS] * view.num_classes
        assert not view.rotation.any()
        expected = np.stack([pixels[filename] for filename, _ in rows]).transpose(0, 3, 1, 2)
        assert torch.equal(view.gather(np.arange(len(view))), torch.from_numpy(expected))
    image, label = splits["val"][5]
    assert image.shape == (3, 84, 84) and image.dtype == torch.float32 and label == 1


@pytest.mark.parametrize("image_size", [84, 40])
def test_pickle_cache_agrees_with_jpeg_folder(jpeg_root, pickle_root, image_size: int) -> None:
    from_jpegs = load_miniimagenet(jpeg_root[0], image_size=image_size, download=False)
    from_pickles = load_miniimagenet(pickle_root, image_size=image_size, download=False)
    for split in SPLITS:
        a, b = from_jpegs[split], from_pickles[split]
        assert tuple(b.images.shape) == (len(a), 3, image_size, image_size)
        assert b.class_names == a.class_names
        assert np.array_equal(b.labels, a.labels)
        assert torch.equal(b.images, a.images)
        assert len(set(b.item_ids.tolist())) == len(b)
        assert b.item_ids[0] == f"{PICKLE_NAME[split]}[{len(b) - 1}]"  # first CSV image is the last pickle row


def test_preprocess_image_is_the_cache_transform(jpeg_root, mini_rows) -> None:
    root, pixels = jpeg_root
    splits = load_miniimagenet(root, image_size=32, download=False)
    filename = mini_rows["test"][2][0]
    from_path = preprocess_image(root / "miniimagenet" / "images" / filename, 32)
    assert from_path.shape == (3, 32, 32) and from_path.dtype == torch.uint8
    assert torch.equal(splits["test"].images[2], from_path)
    # Grayscale and RGBA inputs become 3-channel RGB; the default size is 84 and 84x84 input is not resampled.
    gray = Image.fromarray(pixels[filename][:, :, 0])
    assert torch.equal(preprocess_image(gray)[1], torch.from_numpy(pixels[filename][:, :, 0]))
    rgba = Image.fromarray(pixels[filename]).convert("RGBA")
    assert torch.equal(preprocess_image(rgba), torch.from_numpy(pixels[filename]).permute(2, 0, 1))
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        preprocess_image(gray, 0)


def test_warm_load_equals_cold_build_and_reads_the_cache(pickle_root: Path, tmp_cache: Path) -> None:
    cold = load_miniimagenet(pickle_root, download=False)
    assert len(list((tmp_cache / "miniimagenet").glob("miniimagenet-*-84px-*.pt"))) == 3
    # Overwrite the train pickle with other pixels, keeping its size and modification time: a warm load must
    # come from the cache (the old pixels), which is keyed by size and mtime.
    path = pickle_root / "miniimagenet" / PICKLE_NAME["train"]
    stat = path.stat()
    images, rows_of = read_pickle_cache(path)
    payload = {"image_data": 255 - images, "class_dict": {wnid: rows.tolist() for wnid, rows in rows_of.items()}}
    path.write_bytes(pickle.dumps(payload, protocol=4))
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    warm = load_miniimagenet(pickle_root, download=False)
    for split in SPLITS:
        assert torch.equal(warm[split].images, cold[split].images)
        assert warm[split].class_names == cold[split].class_names
        assert np.array_equal(warm[split].labels, cold[split].labels)
        assert np.array_equal(warm[split].item_ids, cold[split].item_ids)
    # A new modification time invalidates the train cache only.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rebuilt = load_miniimagenet(pickle_root, download=False)
    assert torch.equal(rebuilt["train"].images, 255 - cold["train"].images)
    assert torch.equal(rebuilt["val"].images, cold["val"].images)


def test_changed_jpeg_is_noticed(jpeg_root, mini_rows) -> None:
    root, _ = jpeg_root
    before = load_miniimagenet(root, download=False)
    filename = mini_rows["val"][0][0]
    Image.new("RGB", (84, 84), (10, 200, 30)).save(root / "miniimagenet" / "images" / filename, format="PNG")
    after = load_miniimagenet(root, download=False)
    green = torch.tensor([10, 200, 30], dtype=torch.uint8)[:, None, None].expand(3, 84, 84)
    assert torch.equal(after["val"].images[0], green)
    assert torch.equal(after["val"].images[1:], before["val"].images[1:])


def test_missing_images_error_names_both_formats(tmp_path: Path, mini_rows) -> None:
    write_csvs(tmp_path, mini_rows)
    folder = tmp_path / "miniimagenet"
    with pytest.raises(FileNotFoundError) as error:
        load_miniimagenet(tmp_path, download=False)
    message = str(error.value)
    assert f"{folder / 'images'}/<filename>" in message
    assert f"{folder}/mini-imagenet-cache-{{train,val,test}}.pkl" in message
    # With some pickles present, the message says which are missing.
    (folder / "mini-imagenet-cache-train.pkl").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing mini-imagenet-cache-val.pkl or .*-validation.pkl"):
        load_miniimagenet(tmp_path, download=False)


def test_missing_csv_without_download(tmp_path: Path, jpeg_root) -> None:
    root, _ = jpeg_root
    csv_path = root / "miniimagenet" / "splits" / "ravi" / "val.csv"
    csv_path.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"looked for {csv_path}")):
        load_miniimagenet(root, download=False)


def test_bad_csv_header(jpeg_root) -> None:
    root, _ = jpeg_root
    csv_path = root / "miniimagenet" / "splits" / "ravi" / "train.csv"
    csv_path.write_text(csv_path.read_text().replace("filename,label", "file,class", 1))
    expected = f"{csv_path}: header ['file', 'class']; expected the columns 'filename,label'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_miniimagenet(root, download=False)


def test_malformed_and_overlapping_csv_rows(jpeg_root, mini_rows) -> None:
    root, _ = jpeg_root
    csv_path = root / "miniimagenet" / "splits" / "ravi" / "test.csv"
    original = csv_path.read_text()
    csv_path.write_text(original + "n0000000000000001.jpg\n")
    with pytest.raises(ValueError, match=re.escape(f"{csv_path}:{IMAGES_PER_CLASS * 2 + 2}: malformed row")):
        load_miniimagenet(root, download=False)
    csv_path.write_text(original + f"{mini_rows['test'][0][0]},n01930112\n")
    with pytest.raises(ValueError, match="duplicate filename"):
        load_miniimagenet(root, download=False)
    train_file, train_wnid = mini_rows["train"][0]
    csv_path.write_text(original + f"{train_file},{train_wnid}\n")
    with pytest.raises(ValueError, match=f"class {train_wnid} is listed in both .*train.csv and .*test.csv"):
        load_miniimagenet(root, download=False)


def test_missing_and_corrupt_jpegs_are_named(jpeg_root, mini_rows) -> None:
    root, _ = jpeg_root
    images = root / "miniimagenet" / "images"
    missing = mini_rows["val"][3][0]
    (images / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"val.csv lists {missing}, but {images / missing} does not")):
        load_miniimagenet(root, download=False)
    write_jpegs(root / "other", {"val": [(missing, "")]})
    (images / missing).write_bytes((root / "other" / "miniimagenet" / "images" / missing).read_bytes()[:300])
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {images / missing}")):
        load_miniimagenet(root, download=False)


def test_pickle_class_count_must_match_csv(pickle_root: Path, mini_rows) -> None:
    path = pickle_root / "miniimagenet" / PICKLE_NAME["train"]
    images, rows_of = read_pickle_cache(path)
    wnid = mini_rows["train"][0][1]
    dropped = rows_of[wnid][-1]
    keep = np.delete(np.arange(len(images)), dropped)
    renumber = np.cumsum(np.isin(np.arange(len(images)), keep)) - 1
    class_dict = {name: renumber[rows[rows != dropped]].tolist() for name, rows in rows_of.items()}
    path.write_bytes(pickle.dumps({"image_data": images[keep], "class_dict": class_dict}))
    expected = f"{path}: class {wnid} has {IMAGES_PER_CLASS - 1} images; "
    with pytest.raises(ValueError, match=re.escape(expected) + f".*train.csv lists {IMAGES_PER_CLASS}"):
        load_miniimagenet(pickle_root, download=False)


def test_malformed_pickles_are_named(pickle_root: Path) -> None:
    path = pickle_root / "miniimagenet" / PICKLE_NAME["test"]
    images, rows_of = read_pickle_cache(path)
    class_dict = {wnid: rows.tolist() for wnid, rows in rows_of.items()}
    cases = {
        "missing key": ({"image_data": images}, "holds \\['image_data'\\]; expected a dict with 'image_data'"),
        "float pixels": ({"image_data": images.astype(np.float32), "class_dict": class_dict}, "image_data is float32"),
        "orphan rows": ({"image_data": np.concatenate([images, images[:1]]), "class_dict": class_dict},
                        f"1 rows of image_data are in no class of class_dict, e.g. row {len(images)}"),
        "row out of range": ({"image_data": images[:-1], "class_dict": class_dict}, "expected indices into the"),
        "code": ({"image_data": images, "class_dict": class_dict, "path": Path("x")}, "refusing to load pathlib"),
    }
    for name, (payload, message) in cases.items():
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(ValueError, match=message):
            load_miniimagenet(pickle_root, download=False)
    val_path = pickle_root / "miniimagenet" / PICKLE_NAME["val"]
    val_path.with_name("mini-imagenet-cache-val.pkl").write_bytes(val_path.read_bytes())
    with pytest.raises(ValueError, match="found both .*mini-imagenet-cache-val.pkl and .*validation.pkl"):
        load_miniimagenet(pickle_root, download=False)


def test_registry_loads_miniimagenet(pickle_root: Path) -> None:
    from fewshot.data.datasets import load_splits

    splits = load_splits("miniimagenet", None, pickle_root, 84)
    assert (splits.dataset, splits.scheme, splits.in_channels, splits.image_size) == ("miniimagenet", "ravi", 3, 84)
    assert [splits.get(name).num_classes for name in SPLITS] == [3, 2, 2]
    assert tuple(splits.train.images.shape[1:]) == (3, 84, 84)


def test_trains_evaluates_and_classifies_end_to_end_with_resnet12(jpeg_root, mini_rows, tmp_path: Path) -> None:
    from fewshot.inference.classifier import load
    from fewshot.training import TrainConfig, train

    root, _ = jpeg_root
    output = tmp_path / "run"
    report = train(TrainConfig(dataset="miniimagenet", backbone="resnet12", ways=2, shots=1, queries=1, train_ways=3,
                               eval_queries=2, episodes=3, val_every=3, val_episodes=2, test_episodes=2,
                               data_root=str(root), output=str(output), threads=1), progress=False)
    assert (report["dataset"], report["split"], report["classes"]) == ("miniimagenet", "ravi", 2)
    assert report["spec"]["backbone"] == "resnet12" and report["spec"]["in_channels"] == 3
    assert 0.0 <= report["results"][0]["accuracy"] <= 1.0
    # The API embeds the user's JPEGs with the cache's preprocessing and classifies against a support set.
    model = load(output / "best.pt")
    test_files = [root / "miniimagenet" / "images" / name for name, _ in mini_rows["test"]]
    wnids = [wnid for _, wnid in mini_rows["test"]]
    assert model.embed(test_files[:2]).shape == (2, 640)
    predictions = model.classify(test_files[0::2], wnids[0::2], test_files[1::2])
    assert set(predictions) <= set(wnids)
