"""Small synthetic datasets in the real on-disk formats, for tests that must run without $FEWSHOT_DATA.

Plain functions, no pytest fixtures. Each writer is deterministic given its seed (byte-identical files for the same
arguments) and draws classes that are easy to tell apart, so that a model trained for a few dozen episodes, or a
nearest-class-mean on raw pixels, beats chance by a wide margin:

- `write_omniglot`: `omniglot/images_{background,evaluation}.zip` in the official layout (1-bit 105x105 PNGs, black
  strokes on white), each character a fixed set of strokes and each drawer a small jitter of it, plus the Vinyals
  split lists `omniglot/splits/vinyals/{train,val,test,trainval}.txt` (see `omniglot_split_alphabets`).
- `write_image_folder`: an ImageFolder tree `<class>/<i>.<ext>` of drawn shapes, optionally under train/val/test.
- `write_miniimagenet`: `miniimagenet/images/<wnid><8 digits>.jpg` (84x84) and `miniimagenet/splits/ravi/*.csv`.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------------------------
# Omniglot

OMNIGLOT_PARTS = ("images_background", "images_evaluation")
ROTATIONS = ("000", "090", "180", "270")
# A fixed timestamp for every zip entry, so that the archives are byte-identical from run to run.
_ZIP_DATE = (2015, 12, 10, 12, 0, 0)
_FILE_ATTR = (0o100644 << 16)
_DIR_ATTR = (0o040755 << 16) | 0x10  # unix drwxr-xr-x plus the MS-DOS directory flag

# Strokes live in this box of the 105 px canvas, so that a drawer's shift of a few pixels stays on the canvas.
_LOW, _HIGH = 0.2, 0.8
_COMPARE_SIZE = 28


def alphabet_names(alphabets_background: int, alphabets_evaluation: int) -> tuple[list[str], list[str]]:
    """The synthetic alphabet names of each zip (background, evaluation), as `write_omniglot` names them."""
    background = [f"Synthetic_Background_{i + 1:02d}" for i in range(alphabets_background)]
    evaluation = [f"Synthetic_Evaluation_{i + 1:02d}_(novel)" for i in range(alphabets_evaluation)]
    return background, evaluation


def omniglot_split_alphabets(alphabets_background: int = 3, alphabets_evaluation: int = 2) -> dict[str, list[str]]:
    """Which alphabets `write_omniglot` puts in each Vinyals split ("train", "val", "test"; "trainval" = train + val).

    Like the real Vinyals split, whole alphabets go to one split, about 60/20/20; the test alphabets are the last
    evaluation ones (novel alphabets), validation takes the last remaining background ones, and train mixes both zips.
    """
    background, evaluation = alphabet_names(alphabets_background, alphabets_evaluation)
    order = background + evaluation
    count = len(order)
    n_test = max(1, round(0.2 * count))
    n_val = max(1, round(0.2 * count))
    remaining = order[:-n_test]
    test = order[-n_test:]
    remaining_background = [name for name in remaining if name in background]
    val = remaining_background[-n_val:] if len(remaining_background) > n_val else remaining[-n_val:]
    train = [name for name in remaining if name not in val]
    return {"train": train, "val": val, "test": test, "trainval": train + val}


def _random_point(rng: np.random.Generator) -> tuple[float, float]:
    return float(rng.uniform(_LOW, _HIGH)), float(rng.uniform(_LOW, _HIGH))


def _random_character(rng: np.random.Generator) -> list[tuple]:
    """A character: 2-4 strokes in unit coordinates, each a polyline, an arc or (at most one) dot."""
    strokes: list[tuple] = []
    has_dot = False
    for _ in range(int(rng.integers(2, 5))):
        kind = rng.choice(["line", "line", "arc", "dot"])
        if kind == "dot" and (has_dot or not strokes):
            kind = "line"
        if kind == "line":
            strokes.append(("line", [_random_point(rng) for _ in range(int(rng.integers(2, 4)))]))
        elif kind == "arc":
            cx, cy = _random_point(rng)
            radius = float(rng.uniform(0.1, 0.22))
            start = float(rng.uniform(0, 360))
            strokes.append(("arc", (cx, cy, radius), start, start + float(rng.uniform(100, 250))))
        else:
            has_dot = True
            strokes.append(("dot", _random_point(rng)))
    return strokes


def _render_character(strokes: list[tuple], size: int, width: int, shift: tuple[float, float] = (0.0, 0.0),
                      rng: np.random.Generator | None = None, wobble: float = 0.0) -> Image.Image:
    """Draw `strokes` black on white in PIL mode "1" (`size` square); `rng` and `wobble` jitter every point."""
    image = Image.new("1", (size, size), 1)
    draw = ImageDraw.Draw(image)

    def place(x: float, y: float) -> tuple[float, float]:
        if rng is not None and wobble:
            x, y = x + rng.uniform(-wobble, wobble), y + rng.uniform(-wobble, wobble)
        return (x * size + shift[0], y * size + shift[1])

    for stroke in strokes:
        if stroke[0] == "line":
            draw.line([place(*point) for point in stroke[1]], fill=0, width=width, joint="curve")
        elif stroke[0] == "arc":
            (cx, cy, radius), start, end = stroke[1], stroke[2], stroke[3]
            x, y = place(cx, cy)
            r = radius * size
            spread = 10.0 if rng is not None and wobble else 0.0
            jitter = (rng.uniform(-spread, spread), rng.uniform(-spread, spread)) if spread else (0.0, 0.0)
            draw.arc([x - r, y - r, x + r, y + r], start + jitter[0], end + jitter[1], fill=0, width=width)
        else:
            x, y = place(*stroke[1])
            r = max(2.0, 0.9 * width)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=0)
    return image


def _ink(image: Image.Image) -> np.ndarray:
    """Ink (1 = stroke) of a character image at the comparison size, as float."""
    small = image.convert("L").resize((_COMPARE_SIZE, _COMPARE_SIZE), Image.Resampling.BILINEAR)
    return 1.0 - np.asarray(small, dtype=np.float64) / 255.0


def _distinct_characters(count: int, size: int, width: int, rng: np.random.Generator) -> list[list[tuple]]:
    """`count` characters whose four rotations all differ from each other and from every other character's.

    Candidates are drawn until their ink, compared at 28 px, is far (relative L2) from the candidate's own other
    rotations and from all rotations of the characters already kept; after a few tries the farthest one is kept.
    """
    kept: list[list[tuple]] = []
    templates: list[np.ndarray] = []  # ink of every rotation of every kept character
    for _ in range(count):
        best, best_score = None, -1.0
        for _ in range(40):
            strokes = _random_character(rng)
            ink = _ink(_render_character(strokes, size, width))
            norm = np.linalg.norm(ink) + 1e-9
            rotations = [np.rot90(ink, k) for k in range(4)]
            own = min(np.linalg.norm(ink - rotations[k]) for k in (1, 2, 3)) / norm
            other = min((np.linalg.norm(ink - t) / norm for t in templates), default=2.0)
            score = min(own, other)
            if score > best_score:
                best, best_score = (strokes, rotations), score
            if own > 0.9 and other > 0.9:
                break
        kept.append(best[0])
        templates.extend(best[1])
    return kept


def _zip_info(name: str, is_dir: bool, compress: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.create_system = 3  # unix, as the official zips
    info.external_attr = _DIR_ATTR if is_dir else _FILE_ATTR
    info.compress_type = compress
    return info


def write_omniglot(root: Path, alphabets_background: int = 3, alphabets_evaluation: int = 2,
                   characters_per_alphabet: int = 6, drawers: int = 20, size: int = 105, seed: int = 0) -> Path:
    """Write a miniature Omniglot under `root/omniglot/` in the official formats and return `root` (the data root).

    Writes `images_background.zip` and `images_evaluation.zip` (members `<part>/<Alphabet>/characterNN/<id>_<dd>.png`
    where `<id>` is a 4-digit running character id, as in the official zips, and `<dd>` the drawer 01..`drawers`;
    PNG mode "1", `size` square, black strokes on white; directory entries included, members in shuffled order)
    and `splits/vinyals/{train,val,test,trainval}.txt` listing `Alphabet/characterNN/rotDDD` for all four
    rotations of every character of the alphabets that `omniglot_split_alphabets` assigns to each split.
    With the defaults: 30 characters, 600 images; Vinyals train/val/test = 18/6/6 characters = 72/24/24 classes.
    """
    if alphabets_background < 1 or alphabets_evaluation < 1 or alphabets_background + alphabets_evaluation < 3:
        raise ValueError("need at least one alphabet in each zip and three in all (one per Vinyals split)")
    if characters_per_alphabet < 1 or not 1 <= drawers <= 99 or size < 16:
        raise ValueError("need characters_per_alphabet >= 1, 1 <= drawers <= 99 and size >= 16")
    rng = np.random.default_rng(seed)
    folder = Path(root) / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    base_width = max(2, round(size * 0.045))
    names = alphabet_names(alphabets_background, alphabets_evaluation)
    total = (alphabets_background + alphabets_evaluation) * characters_per_alphabet
    characters = iter(_distinct_characters(total, size, base_width, rng))
    max_shift = size * 0.04
    character_id = 0
    for part, alphabets in zip(OMNIGLOT_PARTS, names):
        members: list[tuple[str, bytes]] = []
        for alphabet in alphabets:
            for number in range(1, characters_per_alphabet + 1):
                character_id += 1
                strokes = next(characters)
                for drawer in range(1, drawers + 1):
                    shift = (float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-max_shift, max_shift)))
                    width = base_width + int(rng.integers(-1, 2))
                    image = _render_character(strokes, size, width, shift, rng, wobble=0.02)
                    buffer = io.BytesIO()
                    image.save(buffer, format="PNG")
                    name = f"{part}/{alphabet}/character{number:02d}/{character_id:04d}_{drawer:02d}.png"
                    members.append((name, buffer.getvalue()))
        # The official zips list members in no particular order; the loader must sort them itself.
        order = rng.permutation(len(members))
        written_dirs: set[str] = set()
        with zipfile.ZipFile(folder / f"{part}.zip", "w") as archive:
            for index in order:
                name, data = members[index]
                parts = name.split("/")
                for depth in range(1, len(parts)):
                    directory = "/".join(parts[:depth]) + "/"
                    if directory not in written_dirs:
                        written_dirs.add(directory)
                        archive.writestr(_zip_info(directory, is_dir=True), b"")
                # Deflate when it pays, store otherwise, as zip tools do (the official zips mix both).
                smaller = len(zlib.compress(data, 6)) < len(data)
                compress = zipfile.ZIP_DEFLATED if smaller else zipfile.ZIP_STORED
                archive.writestr(_zip_info(name, is_dir=False, compress=compress), data)
    splits = folder / "splits" / "vinyals"
    splits.mkdir(parents=True, exist_ok=True)
    for split, alphabets in omniglot_split_alphabets(alphabets_background, alphabets_evaluation).items():
        lines = [f"{alphabet}/character{number:02d}/rot{degrees}" for alphabet in alphabets
                 for number in range(1, characters_per_alphabet + 1) for degrees in ROTATIONS]
        (splits / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return Path(root)


# ----------------------------------------------------------------------------------------------------------------
# Drawn shapes (ImageFolder, miniImageNet)

SHAPES = ("circle", "square", "triangle", "cross", "star", "diamond", "hexagon", "ring")
COLOURS = {  # 7 colours: coprime with the 8 shapes, so class c -> (shape c % 8, colour c % 7) is unique for c < 56
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "magenta": (200, 30, 200),
    "cyan": (20, 190, 200),
    "black": (20, 20, 20),
}
MAX_SHAPE_CLASSES = len(SHAPES) * len(COLOURS)


def shape_class(index: int) -> tuple[str, str]:
    """The (shape, colour name) drawn for class `index` by `write_image_folder` and `write_miniimagenet`."""
    if not 0 <= index < MAX_SHAPE_CLASSES:
        raise ValueError(f"at most {MAX_SHAPE_CLASSES} distinct shape classes, got class index {index}")
    return SHAPES[index % len(SHAPES)], list(COLOURS)[index % len(COLOURS)]


def _polygon(vertices: int, angle: float, radius: float, centre: tuple[float, float], inner: float = 1.0) -> list:
    """Regular polygon (or star when inner < 1: alternate vertices at inner * radius)."""
    points = []
    steps = vertices * (2 if inner < 1.0 else 1)
    for k in range(steps):
        r = radius * (inner if inner < 1.0 and k % 2 else 1.0)
        theta = angle + 2 * math.pi * k / steps
        points.append((centre[0] + r * math.sin(theta), centre[1] - r * math.cos(theta)))
    return points


def _shape_image(class_index: int, size: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image of class `class_index`'s shape and colour at a random position, size and slight rotation,
    on a smooth random light background."""
    shape, colour_name = shape_class(class_index)
    scale = 2  # draw at twice the size, then downsample: smoother edges
    canvas = size * scale
    grid = rng.integers(165, 256, size=(3, 3, 3), dtype=np.uint8)
    image = Image.fromarray(grid, "RGB").resize((canvas, canvas), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour_name])
    radius = canvas * float(rng.uniform(0.22, 0.34))
    slack = canvas / 2 - radius * 1.05
    centre = (canvas / 2 + float(rng.uniform(-slack, slack)), canvas / 2 + float(rng.uniform(-slack, slack)))
    angle = float(rng.uniform(-0.25, 0.25))  # radians, about +-15 degrees
    cx, cy = centre
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, round(radius * 0.35)))
    elif shape == "square":
        draw.polygon(_polygon(4, angle + math.pi / 4, radius * 1.15, centre), fill=colour)
    elif shape == "diamond":
        draw.polygon(_polygon(4, angle, radius * 1.1, centre), fill=colour)
    elif shape == "triangle":
        draw.polygon(_polygon(3, angle, radius * 1.1, centre), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, angle, radius, centre), fill=colour)
    elif shape == "star":
        draw.polygon(_polygon(5, angle, radius * 1.1, centre, inner=0.42), fill=colour)
    else:  # cross: an X of two thick bars
        width = max(2, round(radius * 0.45))
        for theta in (angle + math.pi / 4, angle - math.pi / 4):
            dx, dy = radius * math.cos(theta), radius * math.sin(theta)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=width)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _save(image: Image.Image, path: Path, ext: str) -> None:
    if ext == "jpg":
        image.save(path, format="JPEG", quality=90)
    else:
        image.save(path, format="PNG")


def image_folder_classes(classes: int = 8, split_folders: bool = False) -> dict[str, list[str]]:
    """The class folder names `write_image_folder` writes: {"": names} or {"train"/"val"/"test": names} (50/25/25)."""
    names = [f"{c:02d}_{shape}_{colour}" for c in range(classes) for shape, colour in [shape_class(c)]]
    if not split_folders:
        return {"": names}
    n_val = n_test = max(1, classes // 4)
    n_train = classes - n_val - n_test
    if n_train < 1:
        raise ValueError(f"split_folders needs at least 3 classes, got {classes}")
    return {"train": names[:n_train], "val": names[n_train:n_train + n_val], "test": names[n_train + n_val:]}


def write_image_folder(root: Path, classes: int = 8, per_class: int = 12, size: int = 32, mode: str = "RGB",
                       split_folders: bool = False, seed: int = 0, ext: str = "png") -> Path:
    """Write an ImageFolder tree of drawn shapes and return `root`.

    Layout `root/<class>/<i>.<ext>` (i = 000, 001, ...), or `root/{train,val,test}/<class>/<i>.<ext>` with disjoint
    classes divided 50/25/25 when `split_folders`. Class c is folder `<cc>_<shape>_<colour>` (see `shape_class`):
    one shape in one colour, at a random position, size and slight rotation per image. `mode` "RGB" or "L"
    (grayscale), `ext` "png" or "jpg". At most `MAX_SHAPE_CLASSES` classes.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if ext not in ("png", "jpg"):
        raise ValueError(f"ext must be 'png' or 'jpg', got {ext!r}")
    if not 1 <= classes <= MAX_SHAPE_CLASSES or per_class < 1 or size < 8:
        raise ValueError(f"need 1 <= classes <= {MAX_SHAPE_CLASSES}, per_class >= 1 and size >= 8")
    rng = np.random.default_rng(seed)
    root = Path(root)
    index = 0
    for split, names in image_folder_classes(classes, split_folders).items():
        for name in names:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _save(_shape_image(index, size, rng).convert(mode), folder / f"{i:03d}.{ext}", ext)
            index += 1
    return root


# ----------------------------------------------------------------------------------------------------------------
# miniImageNet


def miniimagenet_wnids(classes_per_split: tuple[int, int, int] = (6, 3, 3), seed: int = 0) -> dict[str, list[str]]:
    """The WordNet-style class ids `write_miniimagenet` uses per split ("train", "val", "test"), in CSV order."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the ids do not depend on how many images are drawn
    total = sum(classes_per_split)
    numbers = rng.choice(np.arange(1_000_000, 15_000_000), size=total, replace=False)
    wnids = [f"n{number:08d}" for number in numbers]
    out, start = {}, 0
    for split, count in zip(("train", "val", "test"), classes_per_split):
        out[split] = sorted(wnids[start:start + count])
        start += count
    return out


def write_miniimagenet(root: Path, classes_per_split: tuple[int, int, int] = (6, 3, 3), per_class: int = 20,
                       size: int = 84, seed: int = 0) -> Path:
    """Write a miniature miniImageNet in the JPEG-folder format under `root/miniimagenet/` and return `root`.

    `images/<wnid><8-digit index>.jpg` (`size` square RGB JPEGs of drawn shapes, one shape and colour per class;
    class k overall, in train, val, test order, is `shape_class(k)`) and `splits/ravi/{train,val,test}.csv` with
    header `filename,label`, rows grouped by class and sorted, as in the Ravi & Larochelle CSVs.
    """
    if len(classes_per_split) != 3 or min(classes_per_split) < 1 or sum(classes_per_split) > MAX_SHAPE_CLASSES:
        raise ValueError(f"classes_per_split must be three positive counts summing to <= {MAX_SHAPE_CLASSES}")
    if not 1 <= per_class <= 1300 or size < 8:
        raise ValueError("need 1 <= per_class <= 1300 and size >= 8")
    rng = np.random.default_rng(seed)
    folder = Path(root) / "miniimagenet"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    splits = folder / "splits" / "ravi"
    splits.mkdir(parents=True, exist_ok=True)
    class_index = 0
    for split, wnids in miniimagenet_wnids(classes_per_split, seed).items():
        lines = ["filename,label"]
        for wnid in wnids:
            # ImageNet-like image numbers: increasing, with gaps.
            numbers = np.sort(rng.choice(np.arange(1, 1301), size=per_class, replace=False))
            for number in numbers:
                filename = f"{wnid}{number:08d}.jpg"
                _save(_shape_image(class_index, size, rng), images / filename, "jpg")
                lines.append(f"{filename},{wnid}")
            class_index += 1
        (splits / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return Path(root)
