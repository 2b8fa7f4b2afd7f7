"""Shared set-up for running peer libraries on the same Omniglot copy as ours.

torchvision's `Omniglot` (used by learn2learn's Omniglot benchmark) checks the official zips' MD5
before it will read anything. The copy under FEWSHOT_DATA has the original pixels in re-encoded
PNGs, so its zips' MD5 differ; for a like-for-like timing, the peers read the extracted folders and
that one check is skipped. Nothing else in the peers is changed.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from torchvision.datasets import Omniglot


def extract_for_torchvision(data_root: Path, destination: Path) -> Path:
    """Extract our Omniglot zips into the folder layout torchvision expects (`<dest>/omniglot-py/...`)."""
    for part in ("images_background", "images_evaluation"):
        target = destination / Omniglot.folder / part
        if not target.is_dir():
            with zipfile.ZipFile(data_root / "omniglot" / f"{part}.zip") as archive:
                archive.extractall(destination / Omniglot.folder)
    return destination


def skip_torchvision_omniglot_md5() -> None:
    """Make torchvision's Omniglot accept the re-encoded local copy (see the module docstring)."""
    Omniglot._check_integrity = lambda self: True  # type: ignore[method-assign]
