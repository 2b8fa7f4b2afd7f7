"""A run's metrics log (append-only JSONL, trimmed exactly on resume), its learning-curve plot, and the
optional TensorBoard mirror of the log (`tensorboard` installed, asked for with `TrainConfig(tensorboard=True)`)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import importlib.util

import numpy as np

from fewshot.files import atomic_write

#: The scalars a TensorBoard log shows for each metrics record: (record kind, record key) -> tag.
TENSORBOARD_TAGS: dict[tuple[str, str], str] = {
    ("train", "loss"): "train/loss",
    ("train", "accuracy"): "train/accuracy",
    ("train", "lr"): "train/learning_rate",
    ("val", "accuracy"): "val/accuracy",
    ("val", "ci95"): "val/ci95",
}


def read_records(path: Path, up_to: int | None = None) -> list[dict[str, Any]]:
    """Records of a metrics log up to episode `up_to`.

    Only a torn last line (a crash mid-write: no newline at its end) is dropped. Any other line that is
    not a JSON record with a string "kind" and an integer "episode" is an error naming the line, so that
    a resume never silently drops the records after it.
    """
    data = path.read_bytes()
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":
        raw_lines.pop()  # the newline ending the last record
    torn = not data.endswith(b"\n")  # the last line was being written when the run stopped
    records = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:  # decoded line by line, so the error can name the line
            if number == len(raw_lines) and torn:
                break  # torn mid-character
            raise ValueError(f"{path}, line {number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                             f"{error.start + 1}): {raw[:80]!r}. Only a torn last line can be dropped; fix or delete "
                             "this line (records after it are kept)") from None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(raw_lines) and torn:
                break  # torn while being written: the checkpoint never covers it
            raise ValueError(f"{path}, line {number}: not a JSON record ({error.msg}): {line[:80]!r}. Only a torn "
                             "last line can be dropped; fix or delete this line (records after it are kept)") from None
        if (not isinstance(record, dict) or not isinstance(record.get("kind"), str)
                or isinstance(record.get("episode"), bool) or not isinstance(record.get("episode"), int)):
            raise ValueError(f"{path}, line {number}: {line[:80]!r} is not a metrics record (expected a JSON object "
                             "with a string \"kind\" and an integer \"episode\"); fix or delete this line")
        if up_to is None or record["episode"] <= up_to:
            records.append(record)
    return records


class MetricsLog:
    """Append-only JSONL log; on resume, records after the checkpoint's episode are dropped so the log
    reads exactly as if the run had never stopped."""

    def __init__(self, path: Path, resume_episode: int | None) -> None:
        self.path = path
        if resume_episode is None:
            path.write_text("")
        elif path.exists():
            kept = read_records(path, resume_episode)
            atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
        self.file = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def sync(self) -> None:
        """Make the log durable, so it covers at least what the next checkpoint covers."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)

    def close(self) -> None:
        self.file.close()


def require_tensorboard() -> None:
    """Refuse a TensorBoard log (before a run touches its directory) when the `tensorboard` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard (or "
                          "pip install 'fewshot[tensorboard]'), or train without --tensorboard (metrics.jsonl "
                          "and curve.png hold the same curves)")


class TensorBoardLog:
    """The metrics records as TensorBoard scalars (step: the record's episode) in `log_dir`.

    On resume (`resume_episode`), TensorBoard hides the events after that episode (`purge_step`), as
    MetricsLog drops those records, so the curves read as if the run had never stopped.
    """

    def __init__(self, log_dir: Path, resume_episode: int | None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415  (optional dependency)

        purge_step = None if resume_episode is None else resume_episode + 1
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        for (kind, key), tag in TENSORBOARD_TAGS.items():
            if record["kind"] == kind and record.get(key) is not None:  # balanced batches log no training accuracy
                self.writer.add_scalar(tag, record[key], global_step=record["episode"])

    def sync(self) -> None:
        """Write the queued events, so the log covers at least what the next checkpoint covers."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curve(records: list[dict[str, Any]], path: Path, config: Any) -> None:
    """Learning curve PNG: smoothed training loss and accuracy (episodes only), validation accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    if not train:
        return
    episode = np.array([r["episode"] for r in train])
    window = max(1, len(train) // 100)
    kernel = np.ones(window) / window
    smooth = lambda key: np.convolve([r[key] for r in train], kernel, mode="valid")  # noqa: E731
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(episode[window - 1:], smooth("loss"))
    ax_loss.set(xlabel="episode", ylabel="training loss", yscale="log", title="loss")
    if all(r.get("accuracy") is not None for r in train):  # balanced batches have no queries, so no accuracy
        ax_acc.plot(episode[window - 1:], smooth("accuracy"), label=f"train ({config.train_ways}-way, query accuracy)")
    if val:
        ax_acc.errorbar([r["episode"] for r in val], [r["accuracy"] for r in val],
                        yerr=[r["ci95"] for r in val], fmt="o-", capsize=3,
                        label=f"validation ({config.ways}-way {config.shots}-shot, 95% CI)")
    ax_acc.set(xlabel="episode", ylabel="accuracy", title="accuracy")
    ax_acc.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    # Atomic: a run killed while plotting leaves the previous curve, not half a PNG.
    atomic_write(path, lambda file: file.write(buffer.getvalue()))
