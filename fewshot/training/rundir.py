"""A run directory's guards: an advisory lock held for the run's life, the refusal to start a run over
files already there, and output failures (a full disk, a read-only folder) as one clear error."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fewshot.data.datasets import DatasetSplits
from fewshot.files import remove_stale_temporaries

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked (said once, when a run starts)
    fcntl = None

LOCK_NAME = ".lock"
# What a run writes, so what --overwrite deletes; `eval_*` are the evaluator's default reports beside a
# checkpoint, which describe the checkpoints being replaced.
#: The classes a run's `min_images` dataset option left out, with their image counts (`dropped_classes_record`).
DROPPED_CLASSES_FILE = "dropped_classes.json"
RUN_FILES = ("config.json", "splits.json", "metrics.jsonl", "curve.png", "last.pt", "best.pt", "test_report.json",
             DROPPED_CLASSES_FILE)
RUN_FILE_PATTERNS = ("eval_*.json", "eval_*.png")
#: The folder of a run's TensorBoard event files (`--tensorboard`), also deleted by --overwrite.
TENSORBOARD_DIR = "tensorboard"


class RunInUse(RuntimeError):
    """Another process holds the run directory's lock."""


class OutputError(RuntimeError):
    """A run's output could not be written (no space left, no permission, a file in the way)."""


def describe_write_error(error: OSError, path: str | Path) -> str:
    """One line saying why writing `path` failed, in words for the common causes."""
    where = error.filename if isinstance(error.filename, str) else str(path)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device holding {where} ({error.strerror})"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied writing {where}"
    if error.errno == errno.EROFS:
        return f"{where} is on a read-only file system"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot create {where}: a file is in the way of the folder ({error.strerror})"
    return f"cannot write {where}: {error.strerror or error}"


@contextmanager
def writing(path: str | Path, consequence: str = "") -> Iterator[None]:
    """Turn an OSError raised while writing `path` into an OutputError: the cause in words, then
    `consequence` (what is still intact and what to do)."""
    try:
        yield
    except OSError as error:
        raise OutputError(describe_write_error(error, path) + (f"; {consequence}" if consequence else "")) from error


class RunLock:
    """An exclusive advisory lock (flock) on `<run dir>/.lock`, held while a process trains in the directory.

    The kernel releases it when the process exits, however it exits (SIGKILL included), so a lock file left
    behind never blocks a later run. The file holds the holder's pid and host, for the refusal message.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise RunInUse naming the process that holds it."""
        if fcntl is None:
            warnings.warn(f"file locking is not available here: {self.run_dir} is not protected against a second "
                          "run in it", stacklevel=2)
            return self
        with writing(self.path, "the run directory must be writable"):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # never truncated before the lock is ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"cannot lock {self.path}: {error.strerror}") from error
            raise RunInUse(f"{self.run_dir} is in use by another training process "
                           f"({holder or 'which has not yet written its pid'}); wait for it to finish or stop it, "
                           "or choose another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Release the lock (the file stays: removing it would race with a process about to lock it)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or any(Path(name).match(pattern) for pattern in RUN_FILE_PATTERNS)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a directory that holds anything (a lone lock file aside).

    `resume` continues the run there (its last.pt is read by the caller); `overwrite` deletes the files a
    run writes (checkpoints, log, curve, reports) and starts over, leaving any other file alone. Stale
    temporaries of interrupted atomic writes are removed first.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or start it over")
    if not run_dir.is_dir():
        return
    remove_stale_temporaries(run_dir)
    try:
        present = sorted(entry.name for entry in os.scandir(run_dir) if entry.name != LOCK_NAME)
    except OSError as error:
        raise OutputError(f"cannot list the run directory {run_dir}: {error.strerror or error}") from error
    if resume or not present:
        return
    if overwrite:
        for name in present:
            if _is_run_file(name):
                with writing(run_dir / name, "--overwrite could not delete the previous run's files"):
                    (run_dir / name).unlink()
            elif name == TENSORBOARD_DIR and (run_dir / name).is_dir():
                with writing(run_dir / name, "--overwrite could not delete the previous run's files"):
                    shutil.rmtree(run_dir / name)
        return
    listed = ", ".join(present[:6]) + (", ..." if len(present) > 6 else "")
    if "last.pt" in present:
        raise FileExistsError(f"{run_dir} already holds a run (last.pt); pass --resume to continue it, --overwrite to "
                              "start it over (deleting its checkpoints and log), or choose another --output")
    raise FileExistsError(f"{run_dir} is not empty (it holds {listed}); a new run would replace or mix with those "
                          "files. Choose another --output, or pass --overwrite to start a run over in it")


def dropped_classes_record(splits: DatasetSplits) -> dict[str, Any]:
    """What dropped_classes.json holds: {"min_images": N, "classes": {split: [{"name": ..., "images": count}]}},
    from `splits.dropped_classes` (`DatasetSplits.without_small_classes`)."""
    dropped = splits.dropped_classes or {"min_images": None, "classes": {}}
    return {"min_images": dropped["min_images"],
            "classes": {split: [{"name": name, "images": count} for name, count in classes.items()]
                        for split, classes in dropped["classes"].items()}}
