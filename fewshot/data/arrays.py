"""Images already in memory (numpy arrays or torch tensors) as few-shot class splits: `from_arrays`.

The result is a `DatasetSplits` like any loaded dataset; pass it as `splits=` to `train()` /
`evaluate_checkpoint()`. There is nothing to load from a path, so the registered "arrays" dataset only
records the preprocessing that new images get at inference time (grayscale or RGB, antialiased resize).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from fewshot.data.datasets import DatasetInfo, DatasetSplits, preprocess_generic, register_dataset, split_classes
from fewshot.data.splits import ClassSplit

# Resize this many images at a time: bounds the temporary memory of the resize on large arrays.
_RESIZE_CHUNK = 1024


def random_class_ids(num_classes: int, fractions: Sequence[float], split_seed: int,
                     where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded class-level (train, val, test) class ids via `split_classes`; each split must get at least
    2 classes (a few-shot episode needs 2 ways). `where` names the data in errors."""
    if num_classes < 3:
        raise ValueError(f"{where} has {num_classes} class(es); a random train / val / test class split "
                         "needs at least 3 (and at least 2 per split for few-shot episodes)")
    try:
        parts = split_classes(num_classes, tuple(float(f) for f in fractions), int(split_seed))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    check_split_sizes({name: len(ids) for name, ids in zip(("train", "val", "test"), parts)}, where,
                      hint=f"with {num_classes} classes and fractions {tuple(fractions)}; "
                           "add classes or change fractions")
    return parts


def random_class_splits(full: ClassSplit, fractions: Sequence[float], split_seed: int,
                        where: str) -> tuple[ClassSplit, ClassSplit, ClassSplit, ClassSplit]:
    """(train, val, test, trainval) views of `full` under `random_class_ids`."""
    train, val, test = random_class_ids(full.num_classes, fractions, split_seed, where)
    views = [full.subset(ids) for ids in (train, val, test)]
    return (*views, full.subset(np.sort(np.concatenate([train, val]))))


def check_split_sizes(counts: dict[str, int], where: str, hint: str = "") -> None:
    """Raise a ValueError naming any split with fewer than 2 classes (few-shot episodes need >= 2 ways)."""
    for name, count in counts.items():
        if count < 2:
            raise ValueError(f"{where}: the {name} split has {count} class(es), but few-shot episodes need at "
                             f"least 2 classes (ways) per split" + (f" ({hint})" if hint else ""))


#: Layouts `from_arrays` takes: grayscale [N,H,W], channels-first [N,C,H,W], channels-last [N,H,W,C].
LAYOUTS = ("NHW", "NCHW", "NHWC")
# Unsigned types torch cannot take the min / max of: read as int64 (the values are checked against 0..255 after).
_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def _ragged_message(images: Any) -> str:
    """Why a list of images does not stack into one array: the first image whose shape differs from the first's."""
    shapes = [np.shape(image) for image in images] if isinstance(images, Sequence) else []
    for position, shape in enumerate(shapes):
        if shape != shapes[0]:
            return (f"images must all have one shape to stack into [N,...], but image 0 has shape {shapes[0]} and "
                    f"image {position} has shape {shape}; resize them to one size first")
    return "images must be a numeric array or tensor of equal-size images (a list of images of different shapes?)"


def _as_tensor(images: Any) -> torch.Tensor:
    """A CPU tensor copy of `images`: the stored images must not change when the caller's array does."""
    if isinstance(images, torch.Tensor):
        tensor = images.detach().cpu().clone()
    else:
        try:
            array = np.array(images)  # a copy, writable (torch warns on read-only arrays)
        except ValueError:  # numpy refuses to stack arrays of different shapes
            raise ValueError(_ragged_message(images)) from None
        if array.dtype == object:
            raise ValueError(_ragged_message(images))
        if array.dtype.kind not in "biuf":
            raise ValueError(f"images must be uint8 (0..255), another integer type within 0..255 or float (0..1), "
                             f"got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype in _WIDE_UNSIGNED:
        tensor = tensor.to(torch.int64)
    return tensor


def _to_uint8(images: torch.Tensor, given: str) -> torch.Tensor:
    """uint8 pixels: uint8 as is, floats in [0, 1] scaled by 255 and rounded, other integers in 0..255 as is
    (`given`: the caller's dtype, for errors)."""
    if images.dtype == torch.uint8:
        return images
    if images.dtype == torch.bool or images.is_complex():
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}")
    if images.numel() == 0:
        return images.to(torch.uint8)
    if images.is_floating_point():
        if torch.isnan(images).any():
            raise ValueError("float images contain NaN; expected values in [0, 1]")
        low, high = images.min().item(), images.max().item()
        if low < 0 or high > 1:
            hint = " (0..255 pixel values? convert them to uint8 first)" if high > 1 and low >= 0 else ""
            raise ValueError(f"float images must lie in [0, 1], found values in [{low:g}, {high:g}]{hint}")
        return (images.to(torch.float32) * 255).round_().to(torch.uint8)
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 255:
        hint = (" (16-bit images? scale them to 0..255 first, e.g. (images / 257).round() as uint8)"
                if low >= 0 and high <= 65535 else "")
        raise ValueError(f"integer images must lie in 0..255, found {given} values in {low}..{high}{hint}")
    return images.to(torch.uint8)


def _channels_first(images: torch.Tensor, layout: str | None = None) -> torch.Tensor:
    """[N,C,H,W] with C in (1, 3), from [N,H,W], [N,1|3,H,W] or channels-last [N,H,W,1|3]; `layout` ("NHW",
    "NCHW", "NHWC") says which, and must be given where the shape fits both 4-D layouts."""
    shape = tuple(images.shape)
    expected = "[N,H,W], [N,1,H,W], [N,3,H,W] or channels-last [N,H,W,1] / [N,H,W,3]"
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)} or None (from the shape), got {layout!r}")
    if layout is None:
        if images.dim() == 3:
            layout = "NHW"
        elif images.dim() == 4:
            first, last = shape[1] in (1, 3), shape[-1] in (1, 3)
            if first and last:
                raise ValueError(f"images of shape {shape} could be channels-first [N,C,H,W] ({shape[1]} channels of "
                                 f"{shape[2]}x{shape[3]} px) or channels-last [N,H,W,C] ({shape[3]} channels of "
                                 f"{shape[1]}x{shape[2]} px); say which with layout='NCHW' or layout='NHWC'")
            layout = "NCHW" if first else "NHWC" if last else None
        if layout is None:
            raise ValueError(f"images must have shape {expected}, got {shape}")
    if images.dim() != len(layout) or (layout != "NHW" and shape[layout.index("C")] not in (1, 3)):
        raise ValueError(f"images of shape {shape} do not fit layout {layout!r} (expected {expected})")
    if layout == "NHW":
        return images.unsqueeze(1)
    return images if layout == "NCHW" else images.permute(0, 3, 1, 2)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 [N,C,H,W] to size x size (torchvision), in chunks."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = images[start:start + _RESIZE_CHUNK].contiguous()
        out[start:start + _RESIZE_CHUNK] = F.resize(chunk, [size, size], interpolation=InterpolationMode.BILINEAR,
                                                    antialias=True)
    return out


def _label_values(labels: Any) -> list:
    if isinstance(labels, torch.Tensor):
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
        return labels.tolist()
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
        return labels.tolist()  # numpy scalars become Python ints / strs, so ints are recognised below
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) and not hasattr(labels, "__iter__"):
        raise ValueError(f"labels must be a 1-D sequence (one label per image), got {type(labels).__name__}")
    # numpy scalars in a plain list become Python values, so that np.int64 labels count as integers
    return [value.item() if isinstance(value, np.generic) else value for value in labels]


def _classes(values: list, class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """(label id 0..C-1 per image, class name per id), classes ordered by sorted label."""
    for index, value in enumerate(values):
        if not isinstance(value, Hashable):
            raise ValueError(f"labels must be hashable values (ints or strings); label {index} is "
                             f"{type(value).__name__} {value!r:.40}")
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a sequence of names, got the string {class_names!r}")
    integer = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if integer:
        unique = sorted(set(values))
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            bad = [v for v in unique if not 0 <= v < len(class_names)]
            if bad:
                raise ValueError(f"class_names has {len(class_names)} names (for labels 0..{len(class_names) - 1}), "
                                 f"but labels include {bad[:5]}")
            names = [class_names[v] for v in unique]  # ids without images are left out
        else:
            names = [str(v) for v in unique]
    else:
        if class_names is not None:
            raise ValueError("class_names names integer labels 0..C-1; these labels are not all integers, "
                             "so they name their classes themselves (leave class_names out)")
        by_name: dict[str, Hashable] = {}
        for value in values:
            other = by_name.setdefault(str(value), value)
            if other != value:
                raise ValueError(f"labels {other!r} and {value!r} would both be named {str(value)!r}")
        unique = [by_name[name] for name in sorted(by_name)]
        names = sorted(by_name)
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got duplicates in {names[:10]}")
    index = {value: i for i, value in enumerate(unique)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def from_arrays(images: Any, labels: Any, class_names: Sequence[str] | None = None, *,
                fractions: tuple[float, float, float] = (0.6, 0.2, 0.2), split_seed: int = 0,
                image_size: int | None = None, layout: str | None = None) -> DatasetSplits:
    """In-memory images and labels as a seeded class-level train / val / test split (dataset "arrays").

    Args:
        images: numpy array or torch tensor, [N,H,W] or [N,1,H,W] (grayscale), [N,3,H,W] (RGB), or
            channels-last [N,H,W,3] / [N,H,W,1] (recognised when dim 1 is not 1 or 3; a shape that fits both,
            such as [N,3,16,3], needs `layout`). uint8 0..255, float in [0, 1] (scaled by 255 and rounded), or
            another integer type (uint16 included) within 0..255; 16-bit pixel values are refused, to be scaled
            first. A list of images must hold images of one shape.
        labels: N hashable labels (ints or strings), one per image.
        class_names: for integer labels, the name of each label id 0..C-1 (ids without images are left out);
            else the names are the labels' str. Classes are ordered by sorted label.
        fractions, split_seed: the class split (see `fewshot.data.base.split_classes`).
        image_size: side of the stored square images; None keeps the arrays' side (the shorter one if not
            square). Non-square images, or another size, go through torchvision's antialiased bilinear resize.
        layout: "NHW", "NCHW" or "NHWC"; None reads it from the shape (refused where the shape fits both 4-D
            layouts).

    Item ids are the row numbers of `images`. `options` records channels, fractions and split_seed.
    """
    tensor = _as_tensor(images)
    tensor = _channels_first(_to_uint8(tensor, str(getattr(images, "dtype", tensor.dtype))), layout)
    count, channels = tensor.shape[0], tensor.shape[1]
    values = _label_values(labels)
    if len(values) != count:
        raise ValueError(f"images has {count} rows but labels has {len(values)} entries; expected one label per image")
    if count == 0:
        raise ValueError("images is empty")
    if image_size is None:
        image_size = int(min(tensor.shape[-2:]))
    elif isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    label_ids, names = _classes(values, class_names)
    tensor = _resize(tensor, image_size)
    if channels == 1:
        tensor = tensor[:, 0]  # grayscale is stored [N,H,W], as every dataset stores it
    full = ClassSplit(tensor.contiguous(), label_ids, names)
    train, val, test, trainval = random_class_splits(full, fractions, split_seed, "the arrays")
    return DatasetSplits("arrays", "random", train, val, test, in_channels=int(channels), image_size=image_size,
                         trainval=trainval, options={"channels": int(channels),
                                                     "fractions": [float(f) for f in fractions],
                                                     "split_seed": int(split_seed)})


def load_splits_arrays(root: str | Path | None, scheme: str, image_size: int) -> DatasetSplits:
    """Arrays have no path to load from: this only explains how to use them."""
    raise ValueError("arrays data lives in memory: build it with fewshot.data.from_arrays(...) and pass splits= "
                     "to train()/evaluate_checkpoint()")


ARRAYS = register_dataset(DatasetInfo(
    name="arrays",
    load=load_splits_arrays,
    preprocess=preprocess_generic,
    channels=None,
    default_image_size=84,  # only used for paths; from_arrays keeps the arrays' own side
    schemes=("random",),
))
