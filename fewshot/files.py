"""Safe file writing and OS-error wording shared by every stage: atomic writes, stale temporaries, memory checks."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# When this process started using fewshot: a temporary file of ours last modified before then cannot be a
# write in progress in this process (see `remove_stale_temporaries`).
PROCESS_STARTED = time.time()

# atomic_write's temporaries: ".<name>.<8 characters of tempfile's alphabet>.tmp".
_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")

# A live writer touches its temporary continuously; one untouched this long is an orphan even if it is newer
# than this process (a process killed mid-write while this one was running).
_STALE_SECONDS = 60.0


def absolute_path(path: str | Path) -> Path:
    """`path` with `~` expanded, made absolute against the current directory now (not when it is used)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def check_writable(path: str | Path, what: str) -> Path:
    """Refuse, before any work, an output `path` that cannot be written; return it absolute.

    `what` names the output in errors ("--output", "the report"). The path must not be a directory; its
    folder must exist and be writable, or be creatable (its nearest existing ancestor a writable directory);
    an existing file must be writable (a read-only file is the user's request not to change it). Raises
    ValueError naming `what` and the user's path, never a temporary file.
    """
    target = absolute_path(path)
    if target.is_dir():
        raise ValueError(f"{what} {path} is a directory; name a file to write")
    if target.exists() or target.is_symlink():
        if not os.access(target, os.W_OK, follow_symlinks=True):
            raise ValueError(f"cannot write {what} {path}: the file is read-only")
    folder = target.parent
    while not folder.exists():  # the folders still to make: the nearest existing one must take them
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"cannot write {what} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        verb = "write into" if folder == target.parent else "create folders in"
        raise ValueError(f"cannot write {what} {path}: no permission to {verb} the folder {folder}")
    return target


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | Path, write_fn: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through `write_fn(file)` so that readers see either the old file or the complete new one.

    The data goes to a temporary file in the same folder (same filesystem, so the rename is atomic), is
    fsynced, then renamed over `path`. If `write_fn` raises, the temporary file is removed and `path`
    is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # name the file the caller asked for, not the temporary that could not be made
        error.filename = str(path)
        raise
    try:
        with os.fdopen(handle, "wb") as file:
            write_fn(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename == tmp_name:  # a full disk: the caller's file, not ours
            error.filename = str(path)
        raise
    if os.name == "posix":  # persist the rename itself
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries `atomic_write` left in `folder` when a process was killed mid-write.

    Only files of atomic_write's naming (`.<name>.<random>.tmp`) are touched, and only those last modified
    before this process started and over a minute ago, so another process's write in progress is kept.
    Returns the files removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no folder (nothing to clean) or an unreadable one (the caller's own access will say so)
        return removed
    cutoff = min(PROCESS_STARTED, time.time() - _STALE_SECONDS)
    for entry in entries:
        if not _TEMPORARY_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # removed meanwhile by another process, or not ours to remove: leave it
            continue
    return removed


def os_error_of(error: BaseException) -> OSError | None:
    """The OSError behind `error`: itself, or one in its cause / context chain (torch's writer reports a
    failed `file.write` as a RuntimeError raised while handling the OSError)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError):
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def load_error_reason(error: BaseException) -> str:
    """A short reason why torch could not read a file, without torch's advice to disable weights-only
    loading (for an untrusted or damaged file that advice points at the unsafe action)."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = next((line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()), "")
        detail = detail.split(". ")[0].rstrip(".")  # the rest suggests allow-listing the object
        return f"it holds something other than tensors, numbers and strings ({detail or 'unreadable data'})"
    if isinstance(error, EOFError) or not text:
        return f"the file ends early or is empty ({type(error).__name__})"
    reason = text.splitlines()[0].split(". ")[0].rstrip(".")
    return type(error).__name__ if "weights_only" in reason.lower() else reason


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable, else free pages); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(size: float) -> str:
    """`size` bytes as a short figure: 32.5 GB, 610.0 MB."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def check_memory(needed: int, what: str, advice: str) -> None:
    """Refuse, before allocating, what cannot fit in the memory available now (`what` needs `needed` bytes)."""
    available = available_memory()
    if available is not None and needed > available:
        raise ValueError(f"{what} needs {format_bytes(needed)} of memory, but only {format_bytes(available)} is "
                         f"available; {advice}")
