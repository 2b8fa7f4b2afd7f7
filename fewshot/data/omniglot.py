"""Omniglot (Lake et al. 2015): decoded once into a uint8 tensor, cached on disk, viewed as class splits.

Reads the official layout `images_{background,evaluation}/<Alphabet>/characterNN/<id>_<drawer>.png`, from the
two official zips or from their extracted folders under `<data root>/omniglot/`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from tqdm import tqdm

from fewshot.data.datasets import DatasetInfo, DatasetSplits, register_dataset
from fewshot.data.images import is_os_artifact, load_resized
from fewshot.data.omniglot_memory import (
    DEGREES_TO_TURNS,
    LAKE_TRAIN_ROTATIONS,
    check_copies_memory,
    check_decoding_memory,
    held_image_copies,
    rotation_turns,
)
from fewshot.data.splits import ClassSplit
from fewshot.data.storage import (
    cache_dir,
    describe_data_root,
    download_file,
    fetch_split_list,
    load_cache,
    resolve_data_root,
    write_cache,
)

BACKGROUND, EVALUATION = "images_background", "images_evaluation"
PARTS = (BACKGROUND, EVALUATION)
OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OMNIGLOT_MD5 = {BACKGROUND: "68d2efa1b9178cc56df9314c21c6e718", EVALUATION: "6b91aef0f799c5bb55b94e3f2daec811"}
VINYALS_SPLITS_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals"
)
VINYALS_SPLITS = ("train", "val", "test", "trainval")
LAKE_SPLITS = ("background", "evaluation")
SPLIT_NAMES = VINYALS_SPLITS + LAKE_SPLITS

# Bump when the decoded pixels or the cache's contents change, so old caches are rebuilt.
_CACHE_VERSION = 1
_MEMBER_PATTERN = re.compile(r"(?P<alphabet>[^/]+)/(?P<character>character\d+)/(?P<image_id>\d+_(?P<drawer>\d+))\.png")
_ENTRY_PATTERN = re.compile(r"(?P<character>[^/]+/character\d+)/rot(?P<degrees>\d{3})")
_EXPECTED_LAYOUT = "<Alphabet>/characterNN/<id>_<drawer>.png"


def preprocess_image(image: Image.Image | str | Path, image_size: int = 28) -> torch.Tensor:
    """Turn one character image (dark strokes on a light background) into the uint8 [H,W] tensor the cache holds.

    Grayscale, antialiased bilinear resize to `image_size` x `image_size` (torchvision's resize on PIL), then
    inverted so that ink is 255 and background 0: an empty (zero) background is what zero padding,
    rotations and augmentation assume, and it is the convention of MNIST-style models and the
    few-shot literature (Prototypical Networks use 1 - x).
    """
    return 255 - torch.from_numpy(load_resized(image, image_size, "L"))

@dataclass(frozen=True)
class _Source:
    """One half of Omniglot (background or evaluation), zipped or extracted."""

    part: str
    path: Path
    is_zip: bool

    def fingerprint(self) -> dict:
        """What the cache key needs to notice a change: zip size and mtime, or every file's name, size and mtime."""
        if self.is_zip:
            stat = self.path.stat()
            return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        files = []
        for folder, dirs, names in os.walk(self.path):
            dirs[:] = [name for name in dirs if not is_os_artifact(name)]
            for name in names:
                if not is_os_artifact(name):
                    stat = os.stat(os.path.join(folder, name))
                    files.append((os.path.join(folder, name), stat.st_size, stat.st_mtime_ns))
        return {"files": hashlib.sha256(json.dumps(sorted(files)).encode()).hexdigest()}

    def members(self) -> list[str]:
        """Sorted image names relative to the part folder (grouped by alphabet, then character); checks the layout."""
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as archive:
                    names = [info.filename for info in archive.infolist() if not info.is_dir()]
            except (zipfile.BadZipFile, OSError) as error:
                raise ValueError(
                    f"{self.path} is not a readable zip archive ({error}); expected the official Omniglot "
                    f"{self.part}.zip. Delete or replace it."
                ) from error
            prefix = f"{self.part}/"
            for name in names:
                if not name.startswith(prefix) and not is_os_artifact(name):
                    raise ValueError(
                        f"{self.path} holds '{name}', outside '{prefix}'; expected every image at "
                        f"{prefix}{_EXPECTED_LAYOUT} (the official zip layout)"
                    )
            names = [name[len(prefix) :] for name in names if name.startswith(prefix)]
        else:
            names = [path.relative_to(self.path).as_posix() for path in self.path.rglob("*") if path.is_file()]
        names = sorted(name for name in names if not is_os_artifact(name))
        for name in names:
            if not _MEMBER_PATTERN.fullmatch(name):
                raise ValueError(f"unexpected file {self._where(name)}; expected {self.part}/{_EXPECTED_LAYOUT}")
        if not names:
            raise ValueError(f"{self.path} holds no images; expected {self.part}/{_EXPECTED_LAYOUT}")
        return names

    def _where(self, name: str) -> str:
        return f"{self.path}:{self.part}/{name}" if self.is_zip else str(self.path / name)

    def decode(self, names: list[str], image_size: int, out: torch.Tensor, progress: tqdm) -> None:
        """Decode `names` into the rows of `out`, in order."""
        archive = zipfile.ZipFile(self.path) if self.is_zip else None
        try:
            for row, name in enumerate(names):
                try:
                    if archive is not None:
                        data = archive.read(f"{self.part}/{name}")
                    else:
                        data = (self.path / name).read_bytes()
                    with Image.open(io.BytesIO(data)) as image:
                        out[row] = preprocess_image(image, image_size)
                except (OSError, SyntaxError, ValueError, zipfile.BadZipFile, zlib.error) as error:
                    raise ValueError(f"corrupt image {self._where(name)}: {error}; expected a PNG") from error
                progress.update()
        finally:
            if archive is not None:
                archive.close()


@dataclass(eq=False)
class OmniglotStore:
    """All 32,460 Omniglot images as one uint8 tensor, with per-image metadata and the standard splits.

    Images are grouped by character (rows of one character are contiguous), characters sorted by
    (background first, alphabet, character).

    Attributes:
        images: uint8 [N,H,W], ink 255 on background 0.
        characters: "Alphabet/characterNN" per character (1623).
        background: bool per character, True for Lake's background set.
        character_of, drawer: int64 per image.
        image_ids: per image, the file stem "<id>_<drawer>".
    """

    images: torch.Tensor
    characters: list[str]
    background: np.ndarray
    character_of: np.ndarray
    drawer: np.ndarray
    image_ids: np.ndarray
    splits_dir: Path
    download: bool = False
    cache_file: Path | None = None
    from_cache: bool = False

    def __post_init__(self) -> None:
        if np.any(np.diff(self.character_of) < 0):
            raise ValueError("images must be grouped by character (character_of non-decreasing)")
        counts = np.bincount(self.character_of, minlength=len(self.characters))
        self._count = counts
        self._start = np.cumsum(counts) - counts

    @cached_property
    def alphabets(self) -> list[str]:
        """Alphabet names, in character order (background alphabets first)."""
        return list(dict.fromkeys(name.split("/")[0] for name in self.characters))

    @cached_property
    def alphabet_of(self) -> np.ndarray:
        """int64 per image: index into `alphabets`."""
        index = {name: i for i, name in enumerate(self.alphabets)}
        per_character = np.array([index[name.split("/")[0]] for name in self.characters], dtype=np.int64)
        return per_character[self.character_of]

    @cached_property
    def _character_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.characters)}

    @cached_property
    def images_and_mirrors(self) -> torch.Tensor:
        """uint8 [2N,H,W]: the images, then each image mirrored left to right (row N + i mirrors row i)."""
        return torch.cat([self.images, self.images.flip(-1)])

    def split(self, name: str, rotations: Iterable[int] | None = None, mirrors: bool = False) -> ClassSplit:
        """Return a split's classes: Vinyals "train"/"val"/"test"/"trainval" or Lake "background"/"evaluation".

        Vinyals classes are the file's `Alphabet/characterNN/rotDDD` lines unless `rotations` (degrees) is
        given; then they are the file's characters times `rotations`. Lake splits use `rotations`, default (0,).
        `mirrors=True` adds each class mirrored left to right (then rotated) as one more class,
        `.../rotDDD/mirror`: a mirrored character is another character, as a rotated one is.
        """
        if name in LAKE_SPLITS:
            turns = rotation_turns(rotations if rotations is not None else (0,))
            chosen = np.flatnonzero(self.background == (name == "background"))
            classes = [(int(c), k) for c in chosen for k in turns]
        elif name in VINYALS_SPLITS:
            classes = self._read_vinyals(name)
            if rotations is not None:
                turns = rotation_turns(rotations)
                classes = [(c, k) for c in dict.fromkeys(c for c, _ in classes) for k in turns]
        else:
            raise ValueError(f"unknown Omniglot split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        if not isinstance(mirrors, bool):
            raise ValueError(f"mirrors must be True or False, got {mirrors!r}")
        return self._class_split(classes, mirrors)

    def _class_split(self, classes: list[tuple[int, int]], mirrors: bool = False) -> ClassSplit:
        mirrored = [False] * len(classes) + [True] * (len(classes) if mirrors else 0)
        classes = classes + (classes if mirrors else [])
        chars = np.array([c for c, _ in classes], dtype=np.int64)
        turns = np.array([k for _, k in classes], dtype=np.int8)
        counts = self._count[chars]
        class_start = np.cumsum(counts) - counts
        image_index = np.repeat(self._start[chars], counts) + np.arange(counts.sum()) - np.repeat(class_start, counts)
        ids = self.image_ids[image_index]
        # Mirrored classes read the mirrored copy of the images (rows offset by N); the rotation follows the mirror.
        image_index = image_index + len(self.images) * np.repeat(np.array(mirrored, dtype=np.int64), counts)
        class_names = [f"{self.characters[c]}/rot{90 * k:03d}" + ("/mirror" if m else "")
                       for (c, k), m in zip(classes, mirrored)]
        item_ids = np.char.add(np.repeat(np.array(class_names), counts), np.char.add("/", ids))
        return ClassSplit(
            self.images_and_mirrors if mirrors else self.images,
            labels=np.repeat(np.arange(len(classes), dtype=np.int64), counts),
            class_names=class_names,
            item_ids=item_ids,
            image_index=image_index,
            rotation=np.repeat(turns, counts),
        )

    def _read_vinyals(self, name: str) -> list[tuple[int, int]]:
        path = self.splits_dir / f"{name}.txt"
        if not path.is_file():
            fetch_split_list(path, f"{VINYALS_SPLITS_URL}/{path.name}", self.download,
                             "Vinyals split list")
        classes: list[tuple[int, int]] = []
        seen: set[str] = set()
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            entry = line.strip()
            if not entry:
                continue
            where = f"{path}:{line_number}"
            match = _ENTRY_PATTERN.fullmatch(entry)
            if not match or int(match["degrees"]) not in DEGREES_TO_TURNS:
                raise ValueError(
                    f"{where}: malformed entry {entry!r}; "
                    "expected 'Alphabet/characterNN/rotDDD' with DDD in 000/090/180/270"
                )
            if match["character"] not in self._character_index:
                raise ValueError(
                    f"{where}: entry {entry!r} names character {match['character']!r}, "
                    "which is not in the loaded Omniglot images"
                )
            if entry in seen:
                raise ValueError(f"{where}: duplicate entry {entry!r}")
            seen.add(entry)
            classes.append((self._character_index[match["character"]], DEGREES_TO_TURNS[int(match["degrees"])]))
        if not classes:
            raise ValueError(f"{path} lists no classes")
        return classes

    def __repr__(self) -> str:
        shape, count = tuple(self.images.shape), len(self.characters)
        return f"OmniglotStore(images={shape}, characters={count}, cache_file={self.cache_file})"


def _locate_sources(root: str | Path | None, download: bool) -> list[_Source]:
    folder = resolve_data_root(root) / "omniglot"
    found: dict[str, _Source] = {}
    for part in PARTS:
        # Prefer the zip: one file, cheap to fingerprint; an extracted folder beside it holds the same images.
        if (folder / f"{part}.zip").is_file():
            found[part] = _Source(part, folder / f"{part}.zip", is_zip=True)
        elif (folder / part).is_dir():
            found[part] = _Source(part, folder / part, is_zip=False)
    missing = [part for part in PARTS if part not in found]
    if not missing:
        return [found[part] for part in PARTS]
    _check_not_flattened(folder)
    failure = ""
    if download:
        for part in missing:
            url = f"{OMNIGLOT_URL}/{part}.zip"
            try:
                download_file(url, folder, f"{part}.zip", OMNIGLOT_MD5[part])
            except Exception as error:  # any network or filesystem failure ends in the one message below
                failure = f"Downloading {url} failed: {error}.\n"
                break
            found[part] = _Source(part, folder / f"{part}.zip", is_zip=True)
    if failure or not download:
        looked = "\n".join(f"  {folder / part}.zip or {folder / part}/" for part in missing)
        raise FileNotFoundError(
            f"Omniglot images not found. Looked for:\n{looked}\nin the data root {describe_data_root(root)}.\n{failure}"
            f"To provide them, put the official images_background.zip and images_evaluation.zip "
            f"({OMNIGLOT_URL}/), zipped or extracted, in {folder}/; or pass --data-root (root= in Python, or set "
            f"$FEWSHOT_DATA) naming a folder that holds omniglot/; or load with download=True when online."
        )
    return [found[part] for part in PARTS]


def _check_not_flattened(folder: Path) -> None:
    """Name the mistake when alphabets sit directly under omniglot/ instead of under images_background/."""
    if not folder.is_dir():
        return
    for child in sorted(folder.iterdir()):
        if child.is_dir() and any(c.is_dir() and re.fullmatch(r"character\d+", c.name) for c in child.iterdir()):
            raise ValueError(
                f"{child} looks like an alphabet folder placed directly under {folder}; expected "
                f"{folder}/images_background/{_EXPECTED_LAYOUT} and {folder}/images_evaluation/{_EXPECTED_LAYOUT} "
                f"(or the official zips images_background.zip and images_evaluation.zip in {folder})"
            )


def _cache_key(sources: list[_Source], image_size: int) -> str:
    description = {"version": _CACHE_VERSION, "image_size": image_size, "pillow": PIL.__version__}
    description["sources"] = [
        {"part": source.part, "path": str(source.path.resolve()), "zip": source.is_zip, **source.fingerprint()}
        for source in sources
    ]
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _build(sources: list[_Source], image_size: int, held_copies: int = 1) -> dict:
    characters: list[str] = []
    seen_characters: set[str] = set()
    background: list[bool] = []
    character_of: list[int] = []
    drawer: list[int] = []
    image_ids: list[str] = []
    names_per_source: list[list[str]] = []
    for source in sources:
        names = source.members()
        names_per_source.append(names)
        for name in names:
            match = _MEMBER_PATTERN.fullmatch(name)
            character = f"{match['alphabet']}/{match['character']}"
            if not characters or characters[-1] != character:
                if character in seen_characters:
                    raise ValueError(f"character {character} appears in both {sources[0].path} and {sources[1].path}")
                seen_characters.add(character)
                characters.append(character)
                background.append(source.part == BACKGROUND)
            character_of.append(len(characters) - 1)
            drawer.append(int(match["drawer"]))
            image_ids.append(match["image_id"])
    # Estimated before allocating: a large --image-size would otherwise die mid-decode (or thrash) with no message.
    check_decoding_memory(len(image_ids), image_size, held_copies)
    images = torch.empty((len(image_ids), image_size, image_size), dtype=torch.uint8)
    with tqdm(total=len(image_ids), desc="Decoding Omniglot", unit="img", disable=None) as progress:
        start = 0
        for source, names in zip(sources, names_per_source):
            source.decode(names, image_size, images[start : start + len(names)], progress)
            start += len(names)
    return {
        "images": images,
        # Names as one newline-joined string each: unpickling 32k separate strings would dominate a warm load.
        "characters": "\n".join(characters),
        "background": torch.tensor(background, dtype=torch.bool),
        "character_of": torch.tensor(character_of, dtype=torch.int64),
        "drawer": torch.tensor(drawer, dtype=torch.int64),
        "image_ids": "\n".join(image_ids),
    }



def load_omniglot(root: str | Path | None = None, image_size: int = 28, download: bool = True,
                  held_copies: int = 1) -> OmniglotStore:
    """Load all of Omniglot as uint8 [32460, image_size, image_size], from the disk cache when it is current.

    Looks under `<data root>/omniglot/` (see `resolve_data_root`) for the official zips or extracted folders,
    downloading the zips when absent and `download` is true. The decoded tensor is cached under `cache_dir()`,
    keyed by the sources' paths, sizes and modification times and by `image_size`.

    `held_copies` is the memory the caller's use of the images will hold, in decoded images (`held_copies`:
    `held_image_copies` for a run on the splits); what cannot fit is refused before decoding (or, from the
    cache, before the copies are made).
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    sources = _locate_sources(root, download)
    key = _cache_key(sources, image_size)
    cache_file = cache_dir() / "omniglot" / f"omniglot-{image_size}px-{key[:16]}.pt"
    payload = load_cache(cache_file, key, "Omniglot")
    from_cache = payload is not None
    if payload is None:
        payload = _build(sources, image_size, held_copies)
        payload["key"] = key
        write_cache(cache_file, payload, "Omniglot")  # the cache only saves time: a failure warns and loading goes on
    else:
        check_copies_memory(payload["images"], image_size, held_copies)
    return OmniglotStore(
        images=payload["images"],
        characters=payload["characters"].split("\n"),
        background=payload["background"].numpy(),
        character_of=payload["character_of"].numpy(),
        drawer=payload["drawer"].numpy(),
        image_ids=np.array(payload["image_ids"].split("\n"), dtype=np.str_),
        splits_dir=resolve_data_root(root) / "omniglot" / "splits" / "vinyals",
        download=download,
        cache_file=cache_file,
        from_cache=from_cache,
    )


# Lake's protocol has no validation alphabets; hold out the last few background alphabets for
# model selection so that the evaluation alphabets stay novel.
LAKE_VAL_ALPHABETS = 5


def load_splits_omniglot(root: str | Path | None, scheme: str, image_size: int,
                         rotations: tuple[int, ...] | None = None, mirrors: bool = False,
                         download: bool = True) -> DatasetSplits:
    """Omniglot's class splits under `scheme`.

    - "vinyals": the split files' `Alphabet/characterNN/rotDDD` classes (train / val / test / trainval);
    - "lake": background alphabets (each character in four rotations; the last
      `LAKE_VAL_ALPHABETS` alphabets held out as validation) against the evaluation alphabets.

    `rotations` (degrees, from 0/90/180/270) replaces the scheme's rotations in every split: each
    character then makes one class per listed rotation.

    `mirrors=True` adds every training class (train and trainval) mirrored left to right as one more
    class, doubling the training classes; validation and test classes stay as the scheme has them.
    """
    store = load_omniglot(root, image_size=image_size, download=download,
                          held_copies=held_image_copies(scheme, rotations, mirrors))
    options = {} if rotations is None else {"rotations": tuple(rotations)}
    if mirrors:
        options["mirrors"] = True
    if scheme == "vinyals":
        training = ("train", "trainval")  # the splits that get the mirrored classes
        train, val, test, trainval = (store.split(name, rotations, mirrors=mirrors if name in training else False)
                                      for name in ("train", "val", "test", "trainval"))
        return DatasetSplits("omniglot", scheme, train, val, test, in_channels=1, image_size=image_size,
                             trainval=trainval, options=options)
    background = store.split("background", rotations=rotations if rotations is not None else LAKE_TRAIN_ROTATIONS,
                             mirrors=mirrors)
    alphabet = np.array([name.split("/")[0] for name in background.class_names])
    held_out = sorted(set(alphabet))[-LAKE_VAL_ALPHABETS:]
    is_val = np.isin(alphabet, held_out)
    # With mirrors, every background class is also mirrored; validation keeps the held-out alphabets' originals.
    is_mirror = np.array([name.endswith("/mirror") for name in background.class_names], dtype=bool)
    train = background.subset(np.flatnonzero(~is_val))
    val = background.subset(np.flatnonzero(is_val & ~is_mirror))
    return DatasetSplits("omniglot", scheme, train, val, store.split("evaluation", rotations), in_channels=1,
                         image_size=image_size, trainval=background, options=options)


OMNIGLOT = register_dataset(DatasetInfo(
    name="omniglot",
    load=load_splits_omniglot,
    preprocess=lambda image, image_size, channels: preprocess_image(image, image_size),
    channels=1,
    default_image_size=28,
    schemes=("vinyals", "lake"),
    background=0.0,  # the images are inverted: ink 1, paper 0
))
