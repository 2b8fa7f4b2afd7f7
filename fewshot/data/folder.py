"""A user's image folder as few-shot class splits: `from_folder`, registered as the "folder" dataset.

Two layouts, told apart by the folder's top level:

- ImageFolder: `root/<class>/<image>`; the classes get a seeded random train / val / test split ("random");
- explicit class splits: `root/{train,val,test}/<class>/<image>` ("folders"); a class may appear in one
  split only, so that novel classes stay novel.

With `hierarchy=True` (`--dataset-arg hierarchy=true`) either layout has one more level, a parent folder
over its classes: `root/<parent>/<class>/<image>` or `root/{train,val,test}/<parent>/<class>/<image>` (an
alphabet over its characters, an ImageNet subtree over its synsets). Classes are then named
"<parent>/<class>", so `episodes.hierarchy.parents_from_names` and `fewshot evaluate --within-alphabet`
(which group classes by the first part of their names) draw episodes within one parent. The random split
divides classes, not parents, so a parent's classes may fall in several splits.

Images are files with the extensions in `IMAGE_EXTENSIONS` (any case). OS artifacts (names starting with
'.', `__MACOSX`, `Thumbs.db`, `desktop.ini`) are skipped; any other file is an error, as a stray file usually
means the folder is not what the user thinks it is. Classes and the images in each class are sorted by name.

`min_images=N` (`--min-images-per-class N`) leaves out the classes of fewer than N images in every split, after
the class split; `DatasetSplits.dropped_classes` lists them and a training run writes them to
dropped_classes.json.

Every image is decoded once with `preprocess_generic` (grayscale or RGB, antialiased square resize; CMYK,
16-bit, palette transparency, animated, tiny and huge images as `fewshot.data.images` says) into
one uint8 tensor, cached under `cache_dir()/folder/` and keyed by content (each image's relative path and
bytes, the image size and the channels asked for), so a copied or moved folder reuses its cache and an
edited image rebuilds it. A warm load reads and hashes every file but decodes none.

The same hashes identify the classes (`fewshot.data.identity`): each class gets a content fingerprint
(`DatasetSplits.fingerprints`), and splits that share an image (a test class copied from, or linked to, a
training class) are refused. Class names that differ only in case in two split folders are refused too (on a
case-insensitive file system they are one folder). `new_classes` ("refuse" or "ignore") is what a run's
recorded split does with classes that appeared since it was recorded (see `apply_split_record`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import ImageFile
from tqdm import tqdm

from fewshot.data.arrays import check_split_sizes, random_class_ids, random_class_splits
from fewshot.data.datasets import DatasetInfo, DatasetSplits, preprocess_generic, register_dataset
from fewshot.data.identity import (NEW_CLASSES_OPTION, check_disjoint_images, check_new_classes_policy,
                                   class_fingerprint)
from fewshot.data.images import IMAGE_EXTENSIONS, is_grayscale, is_image_name, is_os_artifact, open_image
from fewshot.data.splits import ClassSplit
from fewshot.data.storage import cache_dir, load_cache, write_cache
from fewshot.files import check_memory

SPLIT_FOLDERS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 84
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
# Bump when the decoded pixels or the cache's contents change, so old caches are rebuilt (2: transparency
# composited on white; 3: 16-bit grayscale scaled to 8 bits instead of clipped, first frames).
_CACHE_VERSION = 3
_EXAMPLES = 3  # example files named per kind in the mixed-modes error


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """(sub-folders, files) of `folder` sorted by name, OS artifacts left out."""
    dirs, files = [], []
    try:
        # scandir: the entry types come with the listing, no stat per file (a warm load lists every image)
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda entry: entry.name):
                if not is_os_artifact(entry.name):
                    (dirs if entry.is_dir() else files).append(folder / entry.name)
    except OSError as error:
        raise ValueError(f"cannot list {folder}: {error}") from error
    return dirs, files


def _class_folders(folder: Path, root: Path, suggest_hierarchy: bool = True) -> list[tuple[str, list[Path]]]:
    """[(class name, sorted image paths)] of the class folders in `folder`, checking that each holds only images
    (a nested folder's error suggests hierarchy=true when `suggest_hierarchy`)."""
    dirs, files = _entries(folder)
    for path in files:
        if is_image_name(path):
            raise ValueError(f"image {path} sits directly in {folder}; images must be inside class folders "
                             f"({folder}/<class>/<image>)")
        raise ValueError(f"unexpected file {path}: {folder} must hold only class folders; remove or move it")
    if not dirs:
        raise ValueError(f"{folder} holds no class folders; expected {folder}/<class>/<image> with images of "
                         f"type {', '.join(IMAGE_EXTENSIONS)}")
    classes = []
    for class_dir in dirs:
        nested, images = _entries(class_dir)
        if nested:
            higher = f" (is the data root one level too high? try {class_dir})" if folder == root and len(dirs) == 1 else ""
            two_level = ("; for parent folders over class folders (<parent>/<class>/<image>), pass hierarchy=true "
                         "(CLI: --dataset-arg hierarchy=true)") if suggest_hierarchy else ""
            raise ValueError(f"class folder {class_dir} holds the folder {nested[0].name}/; class folders must "
                             f"hold image files directly{higher}{two_level}")
        for path in images:
            if not is_image_name(path):
                raise ValueError(f"unexpected file {path}: not an image (expected extensions "
                                 f"{', '.join(IMAGE_EXTENSIONS)}, any case); remove or move it")
        if not images:
            raise ValueError(f"class folder {class_dir} holds no images")
        classes.append((class_dir.name, images))
    return classes


def _parent_folders(folder: Path, root: Path) -> list[tuple[str, list[Path]]]:
    """[("parent/class", sorted image paths)] of the two-level tree `folder/<parent>/<class>/<image>`."""
    dirs, files = _entries(folder)
    for path in files:
        raise ValueError(f"unexpected file {path}: with hierarchy=true, {folder} must hold only parent folders "
                         f"({folder}/<parent>/<class>/<image>); remove or move it")
    if not dirs:
        raise ValueError(f"{folder} holds no parent folders; hierarchy=true expects {folder}/<parent>/<class>/<image>")
    classes = []
    for parent in dirs:
        _, images = _entries(parent)
        if any(is_image_name(path) for path in images):
            raise ValueError(f"parent folder {parent} holds images directly; hierarchy=true expects "
                             f"{parent}/<class>/<image> (for {folder}/<class>/<image>, leave hierarchy out)")
        classes.extend((f"{parent.name}/{name}", paths) for name, paths in _class_folders(parent, root, False))
    return classes


def _layout(root: Path, hierarchy: bool = False) -> dict[str, list[tuple[str, list[Path]]]]:
    """{"": classes} for an ImageFolder tree, or {"train"/"val"/"test": classes} for explicit split folders;
    with `hierarchy`, each holds parent folders over the class folders, and classes are named "parent/class"."""
    class_folders = _parent_folders if hierarchy else _class_folders
    dirs, files = _entries(root)
    names = [path.name for path in dirs]
    present = [name for name in SPLIT_FOLDERS if name in names]
    if not present:
        return {"": class_folders(root, root)}
    missing = [name for name in SPLIT_FOLDERS if name not in names]
    if missing:
        raise ValueError(
            f"{root} has the split folder(s) {', '.join(present)}/ but not {', '.join(missing)}/: explicit class "
            f"splits need all of train/, val/ and test/ (or put the class folders directly in {root} for a "
            "seeded random class split)")
    others = [name + "/" for name in names if name not in SPLIT_FOLDERS] + [path.name for path in files]
    if others:
        raise ValueError(f"{root} holds the split folders train/, val/, test/ and also {', '.join(others[:5])}; "
                         "with split folders, every class folder must be inside one of them")
    splits = {name: class_folders(root / name, root) for name in SPLIT_FOLDERS}
    seen: dict[str, tuple[str, str]] = {}  # case-folded name -> (split, name)
    for split, classes in splits.items():
        for name, _ in classes:
            if name.casefold() in seen:
                other_split, other = seen[name.casefold()]
                same = "" if other == name else " (the names differ only in case: one folder on a case-insensitive disk)"
                raise ValueError(f"class {name!r} appears in both {root / other_split / other}/ and {root / split / name}/"
                                 f"{same}; the splits' classes must be disjoint (novel classes must stay novel)")
            seen[name.casefold()] = (split, name)
    return splits


def _fingerprint(paths: list[Path], relative: list[str], progress: bool) -> list[list[str]]:
    """[relative path, sha256 of the bytes] per image: what the cache key is made of."""
    entries = []
    for path, name in zip(tqdm(paths, desc="Hashing images", unit="img", disable=None if progress else True),
                          relative):
        try:
            entries.append([name, hashlib.sha256(path.read_bytes()).hexdigest()])
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
    return entries


def _modes(paths: list[Path]) -> list[str]:
    """The PIL mode of each image from its header alone (PIL's open is lazy), so that an unreadable
    file fails before any decoding."""
    modes = []
    for path in paths:
        with open_image(path) as image:
            modes.append(image.mode)
    return modes


def _resolve_channels(channels: int | None, modes: list[str], relative: list[str], root: Path) -> int:
    if channels is not None:
        return channels
    gray = [i for i, mode in enumerate(modes) if is_grayscale(mode)]
    if len(gray) == len(modes):
        return 1
    if not gray:
        return 3
    colour = [i for i, mode in enumerate(modes) if not is_grayscale(mode)]

    def examples(rows: list[int]) -> str:
        # one file per class folder first: the user sees where the odd images are
        chosen: list[int] = []
        folders: set[str] = set()
        for i in rows:
            folder = relative[i].rsplit("/", 1)[0]
            if folder not in folders:
                folders.add(folder)
                chosen.append(i)
                if len(chosen) == _EXAMPLES:
                    break
        chosen += [i for i in rows[:2 * _EXAMPLES] if i not in chosen][:_EXAMPLES - len(chosen)]
        return ", ".join(f"{relative[i]} ({modes[i]})" for i in chosen)

    raise ValueError(
        f"{root} mixes grayscale and colour images: {len(gray)} grayscale (e.g. {examples(gray)}) and "
        f"{len(colour)} colour (e.g. {examples(colour)}). Choose how to store them: channels=1 converts all to "
        "grayscale, channels=3 to RGB (CLI: --dataset-arg channels=3)")


def _payload_fits(payload: dict, count: int, image_size: int) -> bool:
    images, channels = payload.get("images"), payload.get("channels")
    shape = {1: (count, image_size, image_size), 3: (count, 3, image_size, image_size)}.get(channels)
    return isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and tuple(images.shape) == shape


def _cache_key(entries: list[list[str]], image_size: int, channels: int | None) -> str:
    description = {"version": _CACHE_VERSION, "pillow": PIL.__version__, "image_size": image_size,
                   "channels": channels, "files": entries}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _decode(paths: list[Path], image_size: int, channels: int, progress: bool) -> torch.Tensor:
    shape = (len(paths), image_size, image_size) if channels == 1 else (len(paths), 3, image_size, image_size)
    check_memory(int(np.prod(shape)), f"decoding {len(paths):,} images at {image_size}x{image_size} px",
                 f"choose a smaller image size (the folder default is {DEFAULT_IMAGE_SIZE})")
    images = torch.empty(shape, dtype=torch.uint8)
    for row, path in enumerate(tqdm(paths, desc="Decoding images", unit="img", disable=None if progress else True)):
        try:
            images[row] = preprocess_generic(path, image_size, channels)
        except ValueError as error:
            if str(path) in str(error):
                raise  # load_resized's message already names the file
            raise ValueError(f"cannot decode image {path}: {error}") from error
        except Exception as error:  # a malformed file can make a PIL decoder raise anything: name the file
            raise ValueError(f"cannot decode image {path}: {error}") from error
    return images


def _check_options(image_size: int, channels: int | None) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or None (detect), got {channels!r}")


def _fingerprints(entries: list[list[str]], labels: list[int], class_names: list[str]) -> dict[str, str]:
    """{class name: content fingerprint} from the per-image [relative path, sha256] entries."""
    hashes: list[list[str]] = [[] for _ in class_names]
    for (_, digest), label in zip(entries, labels):
        hashes[label].append(digest)
    return {name: class_fingerprint(digests) for name, digests in zip(class_names, hashes)}


def _check_disjoint(split_ids: dict[str, np.ndarray], entries: list[list[str]], class_names: list[str],
                    labels: list[int], root: Path) -> None:
    """Refuse images shared by two splits ({split: class ids}), before any image is decoded."""
    by_class: list[list[tuple[str, str]]] = [[] for _ in class_names]
    for (path, digest), label in zip(entries, labels):
        by_class[label].append((path, digest))
    check_disjoint_images({split: {class_names[i]: by_class[i] for i in ids} for split, ids in split_ids.items()},
                          str(root))


def _load(root: str | Path, scheme: str, image_size: int | None, channels: int | None,
          fractions: Sequence[float], split_seed: int, progress: bool, new_classes: str = "refuse",
          hierarchy: bool = False, min_images: int | None = None) -> DatasetSplits:
    image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    _check_options(image_size, channels)
    if min_images is not None and (isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 2):
        raise ValueError(f"min_images must be a whole number of at least 2 (one support and one query image), "
                         f"got {min_images!r}")
    if not isinstance(hierarchy, bool):
        raise ValueError(f"hierarchy must be true or false, got {hierarchy!r}")
    check_new_classes_policy(new_classes)
    root = Path(root).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder; expected a folder of class folders (<root>/<class>/<image>)")
    layout = _layout(root, hierarchy)
    found = "folders" if "" not in layout else "random"
    if scheme == "auto":
        scheme = found
    elif scheme not in ("random", "folders"):
        raise ValueError(f"unknown split scheme {scheme!r} for folder; valid schemes: auto, random, folders")
    elif scheme != found:
        raise ValueError(
            f"{root} has explicit train/, val/ and test/ folders, so the scheme is 'folders', not 'random'"
            if found == "folders" else
            f"the 'folders' scheme needs {root}/train/, {root}/val/ and {root}/test/ holding class folders; "
            f"{root} holds class folders directly (use the 'random' or 'auto' scheme)")
    if scheme == "folders" and (tuple(fractions) != DEFAULT_FRACTIONS or split_seed != 0):
        # they would be silently ignored: the folders decide the split
        raise ValueError(f"fractions and split_seed apply to the 'random' scheme; {root} defines its class split "
                         "with train/, val/ and test/ folders")

    # Rows grouped by class, classes in split order (train, val, test) then by name.
    class_names, paths, labels = [], [], []
    split_classes_count: dict[str, int] = {}
    for split, classes in layout.items():
        split_classes_count[split] = len(classes)
        for name, images in classes:
            labels.extend([len(class_names)] * len(images))
            class_names.append(name)
            paths.extend(images)
    relative = [path.relative_to(root).as_posix() for path in paths]
    if scheme == "folders":
        check_split_sizes(split_classes_count, str(root))
        bounds = np.cumsum([0] + [split_classes_count[name] for name in SPLIT_FOLDERS])
        split_ids = [np.arange(bounds[i], bounds[i + 1]) for i in range(3)]
    else:  # check the split before spending time on the images
        split_ids = list(random_class_ids(len(class_names), fractions, split_seed, str(root)))

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set (by other code in this process): truncated "
                      f"images in {root} load partly blank instead of failing", stacklevel=3)
    # The key holds the requested channels (None: detect) and the payload the resolved ones, so that a warm
    # load only hashes the files and never opens them as images.
    entries = _fingerprint(paths, relative, progress)
    _check_disjoint(dict(zip(SPLIT_FOLDERS, split_ids)), entries, class_names, labels, root)
    key = _cache_key(entries, image_size, channels)
    channel_tag = "auto" if channels is None else f"{channels}ch"
    # Named by the content key alone: a copied or moved folder finds its cache.
    cache_file = cache_dir() / "folder" / f"folder-{image_size}px-{channel_tag}-{key[:16]}.pt"
    payload = load_cache(cache_file, key, "image folder")
    if payload is not None and not _payload_fits(payload, len(paths), image_size):
        payload = None  # cannot happen for a matching key, but a wrong-shaped tensor must never be used
    if payload is None:
        resolved = _resolve_channels(channels, _modes(paths), relative, root)
        payload = {"key": key, "channels": resolved, "images": _decode(paths, image_size, resolved, progress)}
        # Written only now, after every image decoded: a failure above leaves no cache behind. The cache only
        # saves time: a failure to write it warns and loading goes on.
        write_cache(cache_file, payload, "image folder")
    channels = int(payload["channels"])

    full = ClassSplit(payload["images"], np.array(labels, dtype=np.int64), class_names, np.array(relative, dtype=np.str_))
    options: dict = {"root": str(root), "channels": channels}
    if scheme == "folders":
        bounds = np.cumsum([0] + [split_classes_count[name] for name in SPLIT_FOLDERS])
        train, val, test = (full.subset(np.arange(bounds[i], bounds[i + 1])) for i in range(3))
        trainval = full.subset(np.arange(bounds[2]))
    else:
        train, val, test, trainval = random_class_splits(full, fractions, split_seed, str(root))
        options.update(fractions=[float(f) for f in fractions], split_seed=int(split_seed))
    if new_classes != "refuse":  # recorded only when asked for, so the options of existing runs stay the same
        options[NEW_CLASSES_OPTION] = new_classes
    if hierarchy:  # likewise
        options["hierarchy"] = True
    if min_images is not None:  # likewise
        options["min_images"] = min_images
    splits = DatasetSplits("folder", scheme, train, val, test, in_channels=channels, image_size=image_size,
                           trainval=trainval, options=options, fingerprints=_fingerprints(entries, labels, class_names))
    # Dropped after the class split (and the cache, which holds every image): a class's split never depends
    # on the threshold.
    return splits if min_images is None else splits.without_small_classes(min_images)


def from_folder(root: str | Path, *, image_size: int | None = None, channels: int | None = None,
                fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, split_seed: int = 0,
                progress: bool = True, new_classes: str = "refuse", hierarchy: bool = False,
                min_images: int | None = None) -> DatasetSplits:
    """Load an image folder as class splits (dataset "folder"; see the module docstring for the layouts).

    Args:
        root: `root/<class>/<image>` (seeded random class split, scheme "random") or
            `root/{train,val,test}/<class>/<image>` (the folders' split, scheme "folders").
        image_size: side of the stored square images; None means 84.
        channels: 1 (grayscale) or 3 (RGB) converts every image; None detects it from the image modes and
            refuses a mix of grayscale and colour images.
        fractions, split_seed: the random class split (see `fewshot.data.base.split_classes`); "random" only.
        progress: show progress bars while reading and decoding.
        new_classes: what a run's recorded class split does with class folders that appeared since it was
            recorded (on resume and evaluation): "refuse" (an error naming them) or "ignore" (left out).
        hierarchy: parent folders over the class folders (`root/<parent>/<class>/<image>`, with or without
            split folders above them); classes are named "parent/class".
        min_images: leave out the classes of fewer images (in every split, after the class split), e.g. 6 for
            1-shot episodes with 5 queries; the dropped classes are listed in `dropped_classes` (and a training
            run's dropped_classes.json). None keeps every class.

    Splits that share an image (the same file content) are refused. Class names are the folder names; item
    ids the images' paths relative to `root`. `options` records root (absolute), channels, for "random"
    fractions and split_seed, new_classes when not "refuse", hierarchy when true and min_images when given;
    `fingerprints` each class's content.
    """
    return _load(root, "auto", image_size, channels, fractions, split_seed, progress, new_classes, hierarchy,
                 min_images)


def load_splits_folder(root: str | Path | None, scheme: str, image_size: int, channels: int | None = None,
                       fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                       split_seed: int = 0, new_classes: str = "refuse", hierarchy: bool = False,
                       min_images: int | None = None) -> DatasetSplits:
    """The registered loader: `root` is the `--data-root` folder; scheme "auto" follows the folder's layout.
    `new_classes=ignore` leaves out class folders that appeared since a run recorded its split; `hierarchy=true`
    reads parent folders over the class folders (classes named "parent/class"); `min_images=N` leaves out the
    classes of fewer than N images (`fewshot train --min-images-per-class N`)."""
    if root is None:
        raise ValueError("--dataset folder needs --data-root PATH (a folder of class folders)")
    return _load(root, scheme, image_size, channels, fractions, split_seed, progress=True, new_classes=new_classes,
                 hierarchy=hierarchy, min_images=min_images)


FOLDER = register_dataset(DatasetInfo(
    name="folder",
    load=load_splits_folder,
    preprocess=preprocess_generic,  # exactly what `_decode` applies, so inference sees the training pixels
    channels=None,
    default_image_size=DEFAULT_IMAGE_SIZE,
    schemes=("auto", "random", "folders"),
))
