"""miniImageNet (Vinyals et al. 2016) under the Ravi & Larochelle split, decoded once into uint8 tensors and cached.

Everything lives under `<data root>/miniimagenet/`:
  - `splits/ravi/{train,val,test}.csv`: columns `filename,label` (64/16/20 classes, 600 images each), downloaded
    from the Ravi & Larochelle repository when absent.
  - The images, which are never downloaded (there is no official public URL), in one of two formats:
    (a) `images/<filename>`: the 84x84 JPEGs, named as in the CSVs;
    (b) `mini-imagenet-cache-{train,val,test}.pkl`: the widely used pickle caches (learn2learn's `MiniImagenet`
        names the validation one `mini-imagenet-cache-validation.pkl`; both names are accepted).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm import tqdm

from fewshot.data.datasets import DatasetInfo, DatasetSplits, preprocess_generic, register_dataset
from fewshot.data.splits import ClassSplit
from fewshot.data.storage import (
    cache_dir,
    describe_data_root,
    fetch_split_list,
    load_cache,
    resolve_data_root,
    write_cache,
)
from fewshot.files import check_memory

SPLITS = ("train", "val", "test")
RAVI_SPLITS_URL = "https://raw.githubusercontent.com/twitter-research/meta-learning-lstm/master/data/miniImagenet"
CSV_HEADER = ["filename", "label"]
# learn2learn saves the validation pickle as "-validation"; other tools use "-val".
PICKLE_NAMES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}

# Bump when the decoded pixels or the cache's contents change, so old caches are rebuilt.
_CACHE_VERSION = 1


def preprocess_image(image: Image.Image | str | Path, image_size: int = 84) -> torch.Tensor:
    """Turn one image into the uint8 [3,H,W] tensor the cache holds: RGB, then resized to `image_size` square.

    The resize is torchvision's antialiased bilinear resize on PIL images; an image already `image_size` square
    is left untouched (the 84x84 miniImageNet files at the default size).
    """
    return preprocess_generic(image, image_size, 3)

def read_split_csv(path: str | Path) -> list[tuple[str, str]]:
    """Return the (filename, wnid) rows of a Ravi split CSV, checking the header and that filenames are unique."""
    path = Path(path)
    with path.open(newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header != CSV_HEADER:
            raise ValueError(f"{path}: header {header!r}; expected the columns 'filename,label'")
        rows: list[tuple[str, str]] = []
        seen: set[str] = set()
        for row in reader:
            if not row:  # blank line, e.g. a trailing newline
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(
                    f"{where}: malformed row {row!r}; expected 'filename,label' (e.g. n0153282900000005.jpg,n01532829)"
                )
            filename, wnid = row[0].strip(), row[1].strip()
            if filename in seen:
                raise ValueError(f"{where}: duplicate filename {filename!r}")
            seen.add(filename)
            rows.append((filename, wnid))
    if not rows:
        raise ValueError(f"{path} lists no images")
    return rows


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so that a pickle from the internet cannot run code.

    Accepted: dicts, lists, tuples, str, int, numpy ndarrays, dtypes and scalars (as pickled by numpy 1.x and 2.x at
    any protocol). Any other class or function named in the pickle is refused.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol 2 stores bytes
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}; only numpy arrays and plain containers")
        return super().find_class(module, name)


def read_pickle_cache(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a mini-imagenet-cache pickle: `image_data` uint8 [N,H,W,3] and `class_dict` {wnid: row indices}.

    Checks that every row belongs to exactly one class.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            payload = _SafeUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as error:
        raise ValueError(f"cannot read {path}: {error}; expected a pickled dict of numpy arrays") from error
    expected = "a dict with 'image_data' (uint8 [N,H,W,3]) and 'class_dict' ({wnid: list of row indices})"
    if not isinstance(payload, dict) or {"image_data", "class_dict"} - payload.keys():
        keys = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} holds {keys}; expected {expected}")
    images, class_dict = payload["image_data"], payload["class_dict"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"{path}: image_data is {got}; expected uint8 [N,H,W,3]")
    if not isinstance(class_dict, dict) or not class_dict:
        raise ValueError(f"{path}: class_dict is {type(class_dict).__name__} {class_dict!r:.60}; expected {expected}")
    owner = np.full(len(images), -1, dtype=np.int64)
    rows_of: dict[str, np.ndarray] = {}
    for number, (wnid, rows) in enumerate(class_dict.items()):
        rows = np.asarray(rows)
        if rows.size == 0:  # an empty list reads as float64
            rows = rows.astype(np.int64)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"{path}: class_dict[{wnid!r}] is not a list of row indices")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
            raise ValueError(
                f"{path}: class_dict[{wnid!r}] has rows {rows.min()}..{rows.max()}; "
                f"expected indices into the {len(images)} rows of image_data"
            )
        values, counts = np.unique(rows, return_counts=True)
        repeated = np.concatenate([values[counts > 1], rows[owner[rows] >= 0]])
        if len(repeated):
            raise ValueError(f"{path}: class_dict[{wnid!r}] lists row {repeated[0]}, which is listed more than once")
        owner[rows] = number
        rows_of[str(wnid)] = rows.astype(np.int64)
    orphans = np.flatnonzero(owner < 0)
    if len(orphans):
        raise ValueError(
            f"{path}: {len(orphans)} rows of image_data are in no class of class_dict, e.g. row {orphans[0]}"
        )
    return images, rows_of


def _locate_images(folder: Path, root: str | Path | None) -> tuple[str, dict[str, Path]]:
    """Return ("jpeg", {split: images folder}) or ("pickle", {split: pickle file}); the folder wins when both exist."""
    if (folder / "images").is_dir():
        return "jpeg", {split: folder / "images" for split in SPLITS}
    pickles: dict[str, Path] = {}
    for split in SPLITS:
        present = [folder / name for name in PICKLE_NAMES[split] if (folder / name).is_file()]
        if len(present) > 1:
            raise ValueError(f"found both {present[0]} and {present[1]}; keep one of them")
        if present:
            pickles[split] = present[0]
    if len(pickles) == len(SPLITS):
        return "pickle", pickles
    missing = [" or ".join(PICKLE_NAMES[split]) for split in SPLITS if split not in pickles]
    found = ", ".join(path.name for path in pickles.values())
    pickle_note = f" (found {found}; missing {'; '.join(missing)})" if pickles else ""
    raise FileNotFoundError(
        f"miniImageNet images not found in the data root {describe_data_root(root)}. Looked for either\n"
        f"  (a) {folder / 'images'}/<filename>: the 84x84 JPEGs named as in {folder / 'splits' / 'ravi'}/*.csv, or\n"
        f"  (b) {folder}/mini-imagenet-cache-{{train,val,test}}.pkl: the pickle caches (dicts with 'image_data' "
        f"uint8 [N,84,84,3] and 'class_dict' {{wnid: row indices}}){pickle_note}.\n"
        f"The images cannot be downloaded automatically; put them there in one of these formats, "
        f"or point $FEWSHOT_DATA or root= at a folder holding miniimagenet/."
    )


def _jpeg_paths(csv_path: Path, rows: list[tuple[str, str]], images: Path) -> tuple[list[str], list[tuple]]:
    """The image path of each CSV row and its (name, size, mtime), failing on the first missing file."""
    paths, stats = [], []
    folder = str(images)  # plain strings: pathlib would double the time of a warm load's 60k stat calls
    for filename, _ in rows:
        path = os.path.join(folder, filename)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            missing = sum(not (images / name).is_file() for name, _ in rows)
            raise FileNotFoundError(
                f"{csv_path} lists {filename}, but {path} does not exist "
                f"({missing} of the {len(rows)} images listed in {csv_path.name} are missing from {images})"
            ) from None
        paths.append(path)
        stats.append((filename, stat.st_size, stat.st_mtime_ns))
    return paths, stats


def _cache_key(fmt: str, source: Path, csv_path: Path, image_size: int, file_stats: list[tuple]) -> str:
    description = {
        "version": _CACHE_VERSION,
        "image_size": image_size,
        "pillow": PIL.__version__,
        "format": fmt,
        "source": str(source.resolve()),
        "csv": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
        "files": hashlib.sha256(json.dumps(file_stats).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


_Built = tuple[torch.Tensor, list[str], list[str]]  # images, item ids, wnid of each image


def _check_memory(count: int, image_size: int, desc: str) -> None:
    check_memory(count * 3 * image_size * image_size, f"{desc} ({count:,} RGB images at {image_size}x{image_size} px)",
                 "choose a smaller --image-size (miniImageNet's default is 84)")


def _build_from_jpegs(paths: list[str], rows: list[tuple[str, str]], image_size: int, desc: str) -> _Built:
    """Images in CSV order, their ids (the CSV file names) and their wnids."""
    _check_memory(len(paths), image_size, desc)
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    for row, path in enumerate(tqdm(paths, desc=desc, unit="img", disable=None)):
        images[row] = preprocess_image(path, image_size)  # names the file when it is corrupt
    return images, [filename for filename, _ in rows], [wnid for _, wnid in rows]


def _build_from_pickle(path: Path, csv_path: Path, rows: list[tuple[str, str]], image_size: int, desc: str) -> _Built:
    """Images grouped by class in CSV class order (each class's rows as class_dict lists them), ids, wnids.

    The pickles carry no file names, so an image's id is "<pickle file name>[<row in image_data>]".
    """
    data, rows_of = read_pickle_cache(path)
    expected = Counter(wnid for _, wnid in rows)  # keeps first-appearance order
    unexpected = sorted(rows_of.keys() - expected.keys())
    absent = sorted(expected.keys() - rows_of.keys())
    if unexpected or absent:
        raise ValueError(
            f"{path} does not hold the classes of {csv_path}: classes not in the CSV {unexpected[:5]}, "
            f"CSV classes missing from the pickle {absent[:5]}"
        )
    for wnid, count in expected.items():
        if len(rows_of[wnid]) != count:
            raise ValueError(f"{path}: class {wnid} has {len(rows_of[wnid])} images; {csv_path} lists {count}")
    order = np.concatenate([rows_of[wnid] for wnid in expected])
    _check_memory(len(order), image_size, desc)
    images = torch.empty((len(order), 3, image_size, image_size), dtype=torch.uint8)
    for out_row, data_row in enumerate(tqdm(order, desc=desc, unit="img", disable=None)):
        images[out_row] = preprocess_image(Image.fromarray(data[data_row]), image_size)
    wnids = [wnid for wnid, count in expected.items() for _ in range(count)]
    return images, [f"{path.name}[{row}]" for row in order], wnids



def _check_disjoint(rows_by_split: dict[str, list[tuple[str, str]]], csv_paths: dict[str, Path]) -> None:
    split_of: dict[str, str] = {}
    for split, rows in rows_by_split.items():
        for wnid in dict.fromkeys(wnid for _, wnid in rows):
            if wnid in split_of:
                raise ValueError(
                    f"class {wnid} is listed in both {csv_paths[split_of[wnid]]} and {csv_paths[split]}; "
                    "expected splits with disjoint classes"
                )
            split_of[wnid] = split


def _load_split(
    split: str, fmt: str, source: Path, csv_path: Path, rows: list[tuple[str, str]], image_size: int
) -> ClassSplit:
    if fmt == "jpeg":
        paths, file_stats = _jpeg_paths(csv_path, rows, source)
    else:
        stat = source.stat()
        file_stats = [(source.name, stat.st_size, stat.st_mtime_ns)]
    key = _cache_key(fmt, source, csv_path, image_size, file_stats)
    cache_file = cache_dir() / "miniimagenet" / f"miniimagenet-{split}-{image_size}px-{key[:16]}.pt"
    payload = load_cache(cache_file, key, "miniImageNet")
    if payload is None:
        desc = f"Decoding miniImageNet {split}"
        if fmt == "jpeg":
            images, item_ids, wnids = _build_from_jpegs(paths, rows, image_size, desc)
        else:
            images, item_ids, wnids = _build_from_pickle(source, csv_path, rows, image_size, desc)
        class_names = list(dict.fromkeys(wnids))
        index = {wnid: i for i, wnid in enumerate(class_names)}
        payload = {
            "key": key,
            "images": images,
            # Names as one newline-joined string each: unpickling 38k separate strings would dominate a warm load.
            "class_names": "\n".join(class_names),
            "labels": torch.tensor([index[wnid] for wnid in wnids], dtype=torch.int64),
            "item_ids": "\n".join(item_ids),
        }
        write_cache(cache_file, payload, "miniImageNet")  # the cache only saves time: a failure warns and loading goes on
    return ClassSplit(
        payload["images"],
        labels=payload["labels"].numpy(),
        class_names=payload["class_names"].split("\n"),
        item_ids=np.array(payload["item_ids"].split("\n"), dtype=np.str_),
    )


def load_miniimagenet(
    root: str | Path | None = None, image_size: int = 84, download: bool = True
) -> dict[str, ClassSplit]:
    """Load the Ravi & Larochelle train / val / test splits as ClassSplits over uint8 [N,3,image_size,image_size].

    Looks under `<data root>/miniimagenet/` (see `resolve_data_root`) for the images, as a JPEG folder or as the
    pickle caches (see the module docstring), and for the split CSVs, downloading the CSVs when absent and
    `download` is true. Class names are WordNet ids in CSV order; item ids are the CSV file names (JPEG folder)
    or "<pickle file>[<row>]" (pickle caches, which carry no file names). Each split's decoded tensor is cached
    under `cache_dir()`, keyed by the source files (paths, sizes, modification times), the CSV and `image_size`.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    folder = resolve_data_root(root) / "miniimagenet"
    fmt, sources = _locate_images(folder, root)
    csv_paths = {split: folder / "splits" / "ravi" / f"{split}.csv" for split in SPLITS}
    for path in csv_paths.values():
        if not path.is_file():
            fetch_split_list(path, f"{RAVI_SPLITS_URL}/{path.name}", download,
                             "Ravi & Larochelle split list")
    rows = {split: read_split_csv(csv_paths[split]) for split in SPLITS}
    _check_disjoint(rows, csv_paths)
    return {
        split: _load_split(split, fmt, sources[split], csv_paths[split], rows[split], image_size) for split in SPLITS
    }


def load_splits_miniimagenet(root: str | Path | None, scheme: str, image_size: int,
                             download: bool = True) -> DatasetSplits:
    """miniImageNet's Ravi & Larochelle class splits (the only scheme, "ravi")."""
    splits = load_miniimagenet(root, image_size=image_size, download=download)
    return DatasetSplits("miniimagenet", scheme, splits["train"], splits["val"], splits["test"], in_channels=3,
                         image_size=image_size)


MINIIMAGENET = register_dataset(DatasetInfo(
    name="miniimagenet",
    load=load_splits_miniimagenet,
    preprocess=lambda image, image_size, channels: preprocess_image(image, image_size),
    channels=3,
    default_image_size=84,
    schemes=("ravi",),
))
