"""Where data and derived caches live (`$FEWSHOT_DATA`, `$FEWSHOT_CACHE`), downloads and cache files."""

from __future__ import annotations

import errno
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torchvision.datasets.utils import download_url

from fewshot.files import (
    absolute_path,
    atomic_write,
    load_error_reason,
    os_error_of,
    remove_stale_temporaries,
)

DATA_ENV = "FEWSHOT_DATA"
CACHE_ENV = "FEWSHOT_CACHE"


def _user_cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def resolve_data_root(root: str | Path | None = None) -> Path:
    """Return the absolute data root: `root` if given, else $FEWSHOT_DATA, else the user cache
    (`<cache>/fewshot/data`). Relative paths are taken against the current directory at this call."""
    if root is not None:
        return absolute_path(root)
    env_root = os.environ.get(DATA_ENV)
    if env_root:
        return absolute_path(env_root)
    return absolute_path(_user_cache_home() / "fewshot" / "data")


def describe_data_root(root: str | Path | None = None) -> str:
    """Say which data root `resolve_data_root(root)` picks and why, for error messages."""
    if root is not None:
        origin = "the root argument"
    elif os.environ.get(DATA_ENV):
        origin = f"${DATA_ENV}"
    else:
        origin = f"the default; pass --data-root (root= in Python) or set ${DATA_ENV} to use another folder"
    return f"{resolve_data_root(root)} (from {origin})"


def cache_dir() -> Path:
    """Return the folder for derived caches: $FEWSHOT_CACHE, else `<user cache>/fewshot`.

    Derived files never go under the data root, which may be read-only (a shared data folder).
    """
    env_cache = os.environ.get(CACHE_ENV)
    if env_cache:
        return absolute_path(env_cache)
    return absolute_path(_user_cache_home() / "fewshot")


def download_file(url: str, folder: Path, filename: str, md5: str | None) -> None:
    """Download into a temporary folder beside the target, then rename: no partial file is ever left in place,
    and a failed download removes the folders it created (an empty data root would look like a broken one)."""
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            download_url(url, tmp, filename=filename, md5=md5)
            os.replace(Path(tmp, filename), folder / filename)
    except BaseException:
        for parent in created:  # deepest first; a folder something else wrote into meanwhile stays
            try:
                parent.rmdir()
            except OSError:
                break
        raise


def fetch_split_list(path: Path, url: str, download: bool, what: str) -> None:
    """Download a missing split list from `url` to `path`, or raise one error saying where it looked.

    `what` describes the list for the message, e.g. "Vinyals split list (train/val/test/trainval.txt)".
    """
    failure = ""
    if download:
        try:
            download_file(url, path.parent, path.name, md5=None)
            return
        except Exception as error:  # any network or filesystem failure ends in the one message below
            failure = f"Downloading {url} failed: {error}.\n"
    raise FileNotFoundError(
        f"{what} not found: looked for {path}.\n{failure}"
        f"Put the file (from {url.rsplit('/', 1)[0]}) in {path.parent}; or pass --data-root (root= in Python) "
        f"naming a data root that holds it; or load with download=True when online."
    )


def load_cache(path: Path, key: str, what: str) -> dict | None:
    """The cached payload at `path` if it is readable and built for `key`, else None (then it is rebuilt).

    Read weights-only; a damaged cache is never trusted: it is reported (naming `what`) and rebuilt.
    Temporaries left in the cache folder by a process killed while writing a cache are removed.
    """
    remove_stale_temporaries(path.parent)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as error:  # any unreadable file: rebuild rather than fail
        warnings.warn(f"ignoring unreadable {what} cache {path} ({load_error_reason(error)}); rebuilding it", stacklevel=3)
        return None
    return payload if isinstance(payload, dict) and payload.get("key") == key else None


def write_cache(path: Path, payload: dict, what: str) -> bool:
    """Write a derived cache atomically; return whether it was written.

    The cache only saves time, so a failure to write it (a full disk, a read-only or missing cache folder)
    is a warning naming `what` and the reason, and loading goes on without it. torch's writer reports a
    failed file write as a RuntimeError; that is caught here too, with the OSError behind it named.
    """
    try:
        atomic_write(path, lambda file: torch.save(payload, file))
        return True
    except (OSError, RuntimeError) as error:
        cause = os_error_of(error)
        if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = f"no space left on the device ({cause.strerror})"
        else:
            reason = str(cause or error)
        warnings.warn(f"could not write {what} cache {path}: {reason}; continuing without the cache "
                      f"(set ${CACHE_ENV} to a folder with room to keep one)", stacklevel=3)
        return False
