"""Time loading all 32,460 Omniglot images: our cold build and warm cache load vs torchvision's Omniglot dataset.

    FEWSHOT_DATA=/path/to/data python -m benchmarks.omniglot_load [--root DIR] [--image-size 28]

The peer decodes the same PNGs through PIL with Resize + ToTensor, one image at a time, as a training loop
over `torchvision.datasets.Omniglot` would. The script also checks that both give the same pixels.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torchvision import transforms
from torchvision.datasets import Omniglot

from benchmarks.peers import extract_for_torchvision, skip_torchvision_omniglot_md5
from fewshot.data import load_omniglot, resolve_data_root


def time_call(function, repeats: int = 1) -> tuple[float, object]:
    """Best wall time of `repeats` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="data root holding omniglot/ (default: $FEWSHOT_DATA)")
    parser.add_argument("--image-size", type=int, default=28)
    args = parser.parse_args()
    root = resolve_data_root(args.root)

    with tempfile.TemporaryDirectory() as scratch:
        os.environ["FEWSHOT_CACHE"] = str(Path(scratch, "cache"))  # a fresh cache: the first load is cold
        cold_s, store = time_call(lambda: load_omniglot(root, args.image_size, download=False))
        warm_s, warm = time_call(lambda: load_omniglot(root, args.image_size, download=False), repeats=5)
        assert not store.from_cache and warm.from_cache and torch.equal(store.images, warm.images)

        peer_root = Path(scratch, "torchvision")
        started = time.perf_counter()
        extract_for_torchvision(root, peer_root)
        extract_s = time.perf_counter() - started

        skip_torchvision_omniglot_md5()
        transform = transforms.Compose([transforms.Resize(args.image_size), transforms.ToTensor()])
        started = time.perf_counter()
        peer_images = {}
        for background in (True, False):
            dataset = Omniglot(peer_root, background=background, transform=transform, download=False)
            for (image_name, label), index in zip(dataset._flat_character_images, range(len(dataset))):
                image, _ = dataset[index]
                peer_images[f"{dataset._characters[label]}/{image_name[:-4]}"] = image
        peer_s = time.perf_counter() - started

    # Same pixels: ours is the peer's image as uint8, inverted (ink 255 on background 0).
    names = [f"{store.characters[c]}/{i}" for c, i in zip(store.character_of, store.image_ids)]
    peer = torch.stack([peer_images[name][0] for name in names])
    identical = torch.equal(store.images, 255 - (peer * 255).round().to(torch.uint8))

    count = len(store.images)
    rows = [
        ("fewshot cold build (decode + cache write)", cold_s),
        ("fewshot warm load (best of 5)", warm_s),
        ("torchvision Omniglot: Resize+ToTensor, all images", peer_s),
        ("  (excluded above: extracting the zips for it)", extract_s),
    ]
    size = f"{args.image_size}x{args.image_size}"
    print(f"Omniglot, {count} images at {size}, data root {root}, {torch.get_num_threads()} torch threads")
    print(f"{'path':<52}{'seconds':>9}{'images/s':>12}")
    for label, seconds in rows:
        print(f"{label:<52}{seconds:>9.2f}{count / seconds:>12,.0f}")
    print(f"pixels identical to the torchvision path (inverted): {identical}")


if __name__ == "__main__":
    main()
