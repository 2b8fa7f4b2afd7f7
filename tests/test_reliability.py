"""No silent wrong results and no lost work (issue 12): bad input and faults, one test per finding.

Runs on real Omniglot ($FEWSHOT_DATA) or the miniature in the real formats, with tiny runs (TINY). The
concurrency test runs two real processes, the SIGTERM test sends a real signal, and the disk-full tests
inject OSError(ENOSPC) at the write (through a file object that fills up), never into torch.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.training.test_loop import EPISODES, assert_same_run, read_log, run_args, run_main, start_training, wait_for_checkpoint

import fewshot.model.checkpoint
import fewshot.data.omniglot
import fewshot.data.storage
import fewshot.files
import fewshot.training.config
import fewshot.training.loop
from episodes.lists import load_episodes, save_episodes
from episodes.sampler import EpisodeSampler
from fewshot.inference.classifier import load
from fewshot.model.checkpoint import load_checkpoint, model_from_checkpoint
from fewshot.cli.evaluate import main as evaluate_main
from fewshot.training.runlog import read_records


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Any]:
    """One complete tiny run (the same settings as test_train's reference), never modified by the tests."""
    output = tmp_path_factory.mktemp("reliability") / "run"
    code, _, stderr = run_main(run_args(output, data_root))
    assert code == 0, stderr
    return {"dir": output, "data_root": data_root}


def copy_run(tiny_run: dict[str, Any], tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], target)
    return target


def evaluate_cli(argv: list[str]) -> tuple[int, str, str]:
    """fewshot.evaluate's main in this process: (exit code, stdout, stderr)."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = evaluate_main(argv)
    return code, out.getvalue(), err.getvalue()


class FullDisk(io.RawIOBase):
    """A file that takes `room` bytes and then fails as a full disk does (OSError ENOSPC)."""

    def __init__(self, file: Any, room: int) -> None:
        super().__init__()
        self.file, self.room, self.written = file, room, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        if self.written + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.file.write(data)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- 2. episode lists are validated on load -----------------------------------------------------------

LABELS = np.repeat([0, 1, 2], 4)
NAMES = {0: "cat", 1: "dog", 2: "emu"}
ITEM_IDS = [f"img{i % 4}" for i in range(12)]


def write_list(tmp_path: Path, edit: Any = None, text: str | None = None) -> Path:
    """An episode list of 3 valid 2-way 1-shot 2-query episodes, with `edit(document)` applied (or raw `text`)."""
    path = save_episodes(tmp_path / "episodes.json", EpisodeSampler(LABELS, 2, 1, 2, seed=0).episodes(range(3)),
                         labels=LABELS, class_names=NAMES, item_ids=ITEM_IDS)
    if text is not None:
        path.write_text(text)
    elif edit is not None:
        document = json.loads(path.read_text())
        edit(document)
        path.write_text(json.dumps(document))
    return path


def leak(document: dict) -> None:  # episode 1's first query item is its class's support item
    document["episodes"][1]["query"][0][0] = document["episodes"][1]["support"][0][0]


def same_class_twice(document: dict) -> None:
    episode = document["episodes"][1]
    episode["classes"][1] = episode["classes"][0]


def one_way(document: dict) -> None:
    episode = document["episodes"][1]
    for key in ("classes", "support", "query"):
        episode[key] = episode[key][:1]


@pytest.mark.parametrize(("edit", "message"), [
    (leak, r"episode 1 puts items \['img\d'\] of class '\w+' in both support and query"),
    (same_class_twice, r"episode 1 names class\(es\) \['\w+'\] more than once"),
    (one_way, r"episode 1 has 1 class\(es\); an episode needs at least 2 ways"),
])
def test_2_episode_lists_that_leak_or_repeat_classes_or_have_one_way_are_refused_naming_the_episode(
        tmp_path: Path, edit: Any, message: str) -> None:
    path = write_list(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        load_episodes(path, labels=LABELS, class_names=NAMES, item_ids=ITEM_IDS)


# --- 3. non-finite hyper-parameters, weights and checkpoints ------------------------------------------

@pytest.mark.parametrize(("setting", "message"), [
    ("--lr=inf", "--lr must be a finite number, got inf"),
    ("--lr=nan", "--lr must be a finite number, got nan"),
    ("--lr-gamma=-inf", "--lr-gamma must be a finite number, got -inf"),
    ("--weight-decay=nan", "--weight-decay must be a finite number, got nan"),
    ("--margin=inf", "--margin must be a finite number, got inf"),
])
def test_3_non_finite_hyper_parameters_are_refused(setting: str, message: str, data_root: Path, tmp_path: Path) -> None:
    code, _, stderr = run_main(run_args(tmp_path / "run", data_root, extra=(setting,)))
    assert code == 2 and message in stderr
    assert not (tmp_path / "run").exists()


def test_3_a_checkpoint_with_non_finite_weights_is_never_written(data_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The run: --lr inf gets past the (disabled) setting checks; one update fills the weights with NaN.
    monkeypatch.setattr(fewshot.training.config, "check_data", lambda config, splits: None)
    monkeypatch.setattr(fewshot.training.config, "check_settings", lambda config: None)
    monkeypatch.setattr(fewshot.training.loop, "check_settings", lambda config: None)
    output = tmp_path / "run"
    code, _, stderr = run_main(run_args(output, data_root, extra=("--lr", "inf", "--checkpoint-every", "1")))
    assert code == 2 and "after episode 1 the weights hold NaN or inf" in stderr, stderr
    assert "No checkpoint was written yet" in stderr
    assert not list(output.glob("*.pt"))


def test_3_the_non_finite_loss_message_names_only_checkpoints_that_exist(data_root: Path, tmp_path: Path) -> None:
    # lr 1e30: the weights stay finite but the second loss overflows, before the first checkpoint (episode 5).
    code, _, stderr = run_main(run_args(tmp_path / "run", data_root, extra=("--lr", "1e30")))
    assert code == 2 and "at episode 2;" in stderr, stderr
    assert "No checkpoint was written yet" in stderr and "last.pt" not in stderr
    assert not list((tmp_path / "run").glob("*.pt"))


def test_3_the_evaluator_and_the_api_refuse_a_checkpoint_with_non_finite_weights(tiny_run: dict[str, Any],
                                                                                  tmp_path: Path) -> None:
    state = load_checkpoint(tiny_run["dir"] / "best.pt")
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    diverged = tmp_path / "diverged.pt"
    torch.save(state, diverged)  # as an older version wrote them
    code, _, stderr = evaluate_cli([str(diverged), "--episodes", "2", "--no-progress", "--allow-seen-classes"])
    assert code == 2 and f"checkpoint {diverged} holds non-finite weights" in stderr and name in stderr
    with pytest.raises(ValueError, match="holds non-finite weights"):
        load(diverged)
    with pytest.raises(ValueError, match="holds non-finite weights"):
        model_from_checkpoint(diverged)


# --- 4. an image size the model cannot take -----------------------------------------------------------

@pytest.mark.parametrize("size", ["0", "-3"])
def test_4_an_image_size_below_one_is_refused(size: str, data_root: Path, tmp_path: Path) -> None:
    # Already refused by fewshot.data.base.load_splits on the code this issue was filed against (no `or 28`).
    code, _, stderr = run_main(run_args(tmp_path / "run", data_root, extra=("--image-size", size)))
    assert code == 2 and f"image size must be a positive int, got {size}" in stderr
    assert not (tmp_path / "run").exists()


# --- 5. the API checks its inputs ---------------------------------------------------------------------

def test_5_api_inputs_are_checked_against_what_the_model_expects(tiny_run: dict[str, Any]) -> None:
    model = load(tiny_run["dir"] / "best.pt")
    good = torch.rand(4, 1, 28, 28)
    labels = ["a", "a", "b", "b"]
    probabilities, _ = model.predict_proba(good, labels, good[:1])
    assert torch.isfinite(probabilities).all()
    # float64 in 0..1 is the same image as float32
    torch.testing.assert_close(model.embed(good.double()), model.embed(good))
    cases = [
        (torch.zeros(4, 1, 20, 20, dtype=torch.uint8), ValueError, r"shape \[\d, 1, 20, 20\]; this model takes .*28x28 px"),
        (good * 255, ValueError, r"values in .*outside 0\.\.1 \(0\.\.255 values: divide by 255"),
        (torch.full((4, 1, 28, 28), float("nan")), ValueError, "hold NaN or inf"),
        (torch.rand(4, 3, 28, 28), ValueError, r"shape \[\d, 3, 28, 28\]; this model takes .*1 channel"),
        (torch.zeros(4, 1, 28, 28, dtype=torch.int64), TypeError, "torch.int64 tensor; this model takes"),
        (good - 0.5, ValueError, "outside 0..1"),
    ]
    for images, error, message in cases:
        with pytest.raises(error, match=message):
            model.predict_proba(images, labels, good[:1])
        with pytest.raises(error, match=message):
            model.classify(good, labels, images[:1])


def test_5_api_load_refuses_a_device_that_is_not_there(tiny_run: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        load(tiny_run["dir"] / "best.pt", device="gpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-GPU message cannot be shown")
    with pytest.raises(ValueError, match="asked for CUDA, but torch sees no CUDA device here; use device='cpu'"):
        load(tiny_run["dir"] / "best.pt", device="cuda")


# --- 6. the run directory is locked for the run's life -----------------------------------------------

def test_6_a_second_process_cannot_train_in_a_run_directory_in_use(data_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "fewshot.train", *run_args(output, data_root, episodes=200)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(first, output / "last.pt", 5)
        first.send_signal(signal.SIGSTOP)  # holds its lock, and the files stay as they are
        before = {name: (output / name).read_bytes() for name in ("last.pt", "metrics.jsonl", "config.json")}
        for flag in ("--resume", "--overwrite"):  # this test process is the second process
            code, _, stderr = run_main(run_args(output, data_root, episodes=200, extra=(flag,)))
            assert code == 2, stderr
            assert f"is in use by another training process (pid {first.pid} on host {socket.gethostname()}" in stderr
        assert {name: (output / name).read_bytes() for name in before} == before
    finally:
        first.kill()  # SIGKILL: the kernel drops the lock with the process
        first.communicate()
    from fewshot.training import RunLock

    with RunLock(output):  # a lock file left by a dead process does not block
        pass


# --- 7. a non-empty run directory is refused unless --resume or --overwrite ---------------------------

def test_7_a_directory_with_run_files_but_no_last_pt_is_refused_and_overwrite_replaces_them(
        tiny_run: dict[str, Any], data_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    output.mkdir()
    for name in ("best.pt", "metrics.jsonl"):
        shutil.copy(tiny_run["dir"] / name, output / name)
    (output / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    code, _, stderr = run_main(run_args(output, data_root, episodes=5))
    assert code == 2 and f"{output} is not empty (it holds best.pt, metrics.jsonl, notes.txt)" in stderr
    assert "--overwrite" in stderr
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before

    code, _, stderr = run_main(run_args(output, data_root, episodes=5, extra=("--overwrite",)))
    assert code == 0, stderr
    assert [r["episode"] for r in read_log(output) if r["kind"] == "train"] == list(range(1, 6))
    assert load_checkpoint(output / "best.pt")["episode"] == 5
    assert (output / "notes.txt").read_text() == "mine"  # not a run file: left alone


# --- 8. SIGTERM is handled like SIGINT ----------------------------------------------------------------

def test_8_sigterm_finishes_the_episode_saves_exits_143_and_resume_matches_an_uninterrupted_run(
        tiny_run: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "run"
    process = start_training(output, tiny_run["data_root"])
    try:
        wait_for_checkpoint(process, output / "last.pt", 5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    stopped_at = load_checkpoint(output / "last.pt")["episode"]
    assert 5 <= stopped_at < EPISODES, "the signal must land partway through training"
    assert f"SIGTERM received: interrupted before episode {stopped_at}" in stderr and "--resume" in stderr
    assert [r["episode"] for r in read_log(output) if r["kind"] == "train"] == list(range(1, stopped_at + 1))

    code, _, stderr = run_main(run_args(output, tiny_run["data_root"], extra=("--resume",)))
    assert code == 0, stderr
    assert_same_run(output, tiny_run["dir"])


# --- 9. only a torn last line of metrics.jsonl may be dropped -----------------------------------------

@pytest.mark.parametrize(("bad_line", "message"), [
    ("{garbage", r"metrics.jsonl, line 3: not a JSON record"),
    ("42", r"metrics.jsonl, line 3: '42' is not a metrics record"),
    ('{"kind": "train", "loss": 0.5}', r"metrics.jsonl, line 3: .* is not a metrics record"),
])
def test_9_a_bad_line_inside_the_metrics_log_is_an_error_naming_it(bad_line: str, message: str,
                                                                   tiny_run: dict[str, Any], tmp_path: Path) -> None:
    output = copy_run(tiny_run, tmp_path)
    lines = (output / "metrics.jsonl").read_text().splitlines(keepends=True)
    damaged = "".join(lines[:2]) + bad_line + "\n" + "".join(lines[2:])
    (output / "metrics.jsonl").write_text(damaged)
    with pytest.raises(ValueError, match=message):
        read_records(output / "metrics.jsonl")
    code, _, stderr = run_main(run_args(output, tiny_run["data_root"], extra=("--resume",)))
    assert code == 2 and "metrics.jsonl, line 3:" in stderr and "fix or delete" in stderr, stderr
    assert (output / "metrics.jsonl").read_text() == damaged  # nothing dropped
    # A torn last line is still dropped (a crash mid-write), and only that one.
    (output / "metrics.jsonl").write_text("".join(lines) + '{"kind": "tra')
    assert len(read_records(output / "metrics.jsonl")) == len(lines)


# --- 10. a full disk ----------------------------------------------------------------------------------

def test_10_a_full_cache_disk_falls_back_with_a_warning_and_stale_temporaries_are_cleaned(
        synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cache mechanism, on the miniature Omniglot: a fresh cache on the real data would decode 32,460 images.
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    real_write = fewshot.files.atomic_write

    def full_disk(path: Any, write_fn: Any) -> Path:
        return real_write(path, lambda file: write_fn(FullDisk(file, room=4096)))

    for module in (fewshot.data.storage, fewshot.data.omniglot):
        monkeypatch.setattr(module, "atomic_write", full_disk, raising=False)
    with pytest.warns(UserWarning, match=r"could not write Omniglot cache .*: no space left on the device"):
        store = fewshot.data.omniglot.load_omniglot(synthetic_root, image_size=28, download=False)
    assert len(store.images) == 600 and not store.from_cache
    folder = tmp_path / "cache" / "omniglot"
    assert temporaries(folder) == [] and not list(folder.glob("*.pt"))

    # A process killed mid-write leaves its temporary; the next load removes it (only ours, only stale ones).
    monkeypatch.undo()
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    orphan, fresh, foreign = (folder / ".omniglot-28px-0123.pt.k2x9_a0q.tmp", folder / ".omniglot-28px-0123.pt.zz11yy22.tmp",
                              folder / "notes.tmp")
    for path in (orphan, fresh, foreign):
        path.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))
    os.utime(foreign, (hour_ago, hour_ago))
    fewshot.data.omniglot.load_omniglot(synthetic_root, image_size=28, download=False)
    assert not orphan.exists() and fresh.exists() and foreign.exists()


def test_10_a_full_output_disk_is_one_clear_error_and_the_previous_checkpoint_stays_valid(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "run"
    real_write = fewshot.model.checkpoint.atomic_write
    writes = {"last.pt": 0}

    def full_at_third_last(path: Any, write_fn: Any) -> Path:
        if Path(path).name == "last.pt":
            writes["last.pt"] += 1
            if writes["last.pt"] == 3:  # episodes 5 and 10 fit; 15 (the last) meets a full disk mid-file
                return real_write(path, lambda file: write_fn(FullDisk(file, room=20_000)))
        return real_write(path, write_fn)

    monkeypatch.setattr(fewshot.model.checkpoint, "atomic_write", full_at_third_last)
    code, _, stderr = run_main(run_args(output, data_root, episodes=15))
    assert code == 2, stderr
    assert f"error: no space left on the device holding {output / 'last.pt'}" in stderr
    assert f"the previous last.pt (episode 10) is unchanged; {output / 'last.pt'} (episode 10) is intact" in stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert load_checkpoint(output / "last.pt")["episode"] == 10 and temporaries(output) == []

    monkeypatch.undo()  # space freed: the run goes on from episode 10
    code, _, stderr = run_main(run_args(output, data_root, episodes=15, extra=("--resume",)))
    assert code == 0, stderr
    assert [r["episode"] for r in read_log(output) if r["kind"] == "train"] == list(range(1, 16))


def test_10_a_stale_temporary_in_the_run_directory_is_cleaned_at_run_start(data_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    output.mkdir()
    orphan = output / ".last.pt.abcd1234.tmp"  # a SIGKILL during a checkpoint write
    orphan.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))
    code, _, stderr = run_main(run_args(output, data_root, episodes=2, extra=("--val-every", "2")))
    assert code == 0, stderr
    assert not orphan.exists()


# --- 11. messages instead of tracebacks ---------------------------------------------------------------

@pytest.mark.parametrize(("value", "message"), [("-1", "--threads must be a positive int"),
                                                ("0", "--threads must be a positive int")])
def test_11_a_bad_thread_count_is_a_message(value: str, message: str, data_root: Path, tmp_path: Path) -> None:
    code, _, stderr = run_main(run_args(tmp_path / "run", data_root, extra=("--threads", value)))
    assert code == 2 and message in stderr


def test_11_an_image_size_that_cannot_fit_in_memory_is_refused_with_the_figure(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The available memory is set low, so the estimate is refused here whatever the machine has.
    monkeypatch.setattr(fewshot.files, "available_memory", lambda: 100_000_000, raising=False)
    code, _, stderr = run_main(run_args(tmp_path / "run", data_root, extra=("--image-size", "1000")))
    assert code == 2, stderr
    count, needed = ("32,460", "32.5 GB") if os.environ.get("FEWSHOT_DATA") else ("600", "600.0 MB")
    assert (f"decoding {count} Omniglot images at 1000x1000 px needs {needed} of memory, "
            "but only 100.0 MB is available; choose a smaller --image-size") in stderr


def test_11_an_output_folder_without_write_permission_is_a_message(data_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: inject the error the kernel gives everyone else
        real_mkdir = os.mkdir

        def refuse(path: Any, *args: Any, **kwargs: Any) -> None:
            if str(path).startswith(str(folder)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", refuse)
    try:
        code, _, stderr = run_main(run_args(folder / "run", data_root))
    finally:
        folder.chmod(0o755)
    assert code == 2 and f"error: permission denied writing {folder / 'run'}" in stderr


def test_11_evaluate_checks_report_and_plot_paths_before_evaluating(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    best = str(tiny_run["dir"] / "best.pt")
    common = ["--episodes", "2", "--no-progress", "--allow-seen-classes"]
    code, stdout, stderr = evaluate_cli([best, *common, "--report", str(tmp_path)])
    assert code == 2 and f"--report {tmp_path} is a directory" in stderr
    report = tmp_path / "report.json"
    code, stdout, stderr = evaluate_cli([best, *common, "--report", str(report), "--plot", str(tmp_path / "x.xyz")])
    assert code == 2 and "unknown image format .xyz; use one of" in stderr and ".png" in stderr
    assert not report.exists() and not (tmp_path / "x.xyz").exists()
    code, stdout, stderr = evaluate_cli([best, *common, "--report", str(report), "--plot", str(tmp_path / "x.svg")])
    assert code == 0, stderr
    assert "ways" in stdout and report.exists() and (tmp_path / "x.svg").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("", "episode list {path} is empty"),
    ("{not json", r"episode list {path} is not valid JSON \(Expecting property name"),
    ('{"format": "episode-list", "version": 1, "episodes": {}}', '{path}: "episodes" must be a list of episodes'),
    ('{"format": "episode-list", "version": 1, "episodes": []}', r"{path} holds no episodes"),
    ('{"format": "episode-list", "version": 1, "episodes": [{"classes": ["cat", "dog"], "support": [1, 2, 3], '
     '"query": [["img1"], ["img1"]]}]}', r'{path}: episode 0 needs "support" as one list of item ids per class'),
    ('{"format": "episode-list", "version": 1, "episodes": [{"classes": ["cat", "dog"], "support": [[1.5], ["img0"]], '
     '"query": [["img1"], ["img1"]]}]}', r"{path}: episode 0 has support item 1.5 of JSON type float"),
    ('{"format": "episode-list", "version": 1, "episodes": [7]}', r"{path}: episode 0 is a JSON int"),
])
def test_11_episode_lists_with_bad_json_are_messages_naming_the_file(text: str, message: str, tmp_path: Path) -> None:
    path = write_list(tmp_path, text=text)
    with pytest.raises(ValueError, match=message.format(path=re.escape(str(path)))):
        load_episodes(path, labels=LABELS, class_names=NAMES, item_ids=ITEM_IDS)


def test_11_the_evaluator_reports_a_bad_episode_list_as_a_message(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("")
    code, _, stderr = evaluate_cli([str(tiny_run["dir"] / "best.pt"), "--episode-list", str(empty), "--no-progress",
                                    "--allow-seen-classes", "--report", str(tmp_path / "r.json")])
    assert code == 2 and f"error: episode list {empty} is empty" in stderr


# --- 12. a corrupt checkpoint never suggests disabling weights-only loading ---------------------------

class NotAWeight:
    """An object weights-only unpickling refuses: unpickled, it would create the file `marker`."""

    marker = Path()

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_12_corrupt_and_foreign_checkpoints_say_so_without_suggesting_weights_only_false(
        tiny_run: dict[str, Any], tmp_path: Path) -> None:
    data = (tiny_run["dir"] / "best.pt").read_bytes()
    files = {"garbage.pt": b"not a checkpoint at all", "truncated.pt": data[: len(data) // 2], "empty.pt": b""}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    NotAWeight.marker = tmp_path / "code-ran"
    torch.save({"model": {}, "spec": {}, "payload": NotAWeight()}, tmp_path / "objects.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about the pickle protocol of an empty file
        for name in [*files, "objects.pt"]:
            with pytest.raises(ValueError) as raised:
                load_checkpoint(tmp_path / name)
            message = str(raised.value)
            assert "weights_only" not in message.lower() and "trust" not in message.lower(), message
            assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no chained torch advice
            assert f"checkpoint {tmp_path / name} is corrupt or not a fewshot checkpoint" in message
            assert "not a checkpoint written by this project" in message
    with pytest.raises(ValueError, match="holds something other than tensors, numbers and strings"):
        load_checkpoint(tmp_path / "objects.pt")
    assert not NotAWeight.marker.exists()  # refused, not run
    code, _, stderr = evaluate_cli([str(tmp_path / "garbage.pt"), "--no-progress"])
    assert code == 2 and "weights_only" not in stderr and "corrupt" in stderr


# --- 13. more unclear errors --------------------------------------------------------------------------

def test_13_an_output_naming_a_file_is_a_message(data_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.write_text("a file")
    code, _, stderr = run_main(run_args(path, data_root))
    assert code == 2 and f"--output {path} is a file, not a directory" in stderr


def test_13_a_truncated_last_pt_says_how_to_go_on_and_the_advice_works(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    output = copy_run(tiny_run, tmp_path)
    data = (output / "last.pt").read_bytes()
    (output / "last.pt").write_bytes(data[: len(data) // 3])
    best_episode = load_checkpoint(output / "best.pt")["episode"]
    code, _, stderr = run_main(run_args(output, tiny_run["data_root"], extra=("--resume",)))
    assert code == 2 and "is corrupt" in stderr
    assert f"To continue from {output / 'best.pt'} (episode {best_episode})" in stderr
    assert f"cp {output / 'best.pt'} {output / 'last.pt'}" in stderr and "--overwrite" in stderr
    code, _, stderr = run_main(run_args(output, tiny_run["data_root"]))
    assert code == 2 and "--resume to continue it, --overwrite to start it over" in stderr

    shutil.copy(output / "best.pt", output / "last.pt")  # the advice
    code, _, stderr = run_main(run_args(output, tiny_run["data_root"], extra=("--resume",)))
    assert code == 0, stderr
    assert load_checkpoint(output / "last.pt")["episode"] == EPISODES


def test_13_sampler_indices_beyond_int64_and_boolean_counts_are_refused() -> None:
    sampler = EpisodeSampler(np.repeat(np.arange(5), 4), 2, 1, 1)
    for index in (2**63, 2**64 + 5):
        with pytest.raises(IndexError, match=f"episode index {index} is too large; indices are at most 2\\*\\*63 - 1"):
            sampler.episode(index)
    assert sampler.episode(2**63 - 1).ways == 2
    with pytest.raises(ValueError, match="num_episodes must be a positive int or None, got True"):
        EpisodeSampler(np.repeat(np.arange(5), 4), 2, 1, 1, num_episodes=True)
    with pytest.raises(ValueError, match="chunk must be a positive int, got True"):
        next(sampler.iterate(chunk=True))


def test_9_an_undecodable_byte_in_the_metrics_log_names_the_file_and_line(tiny_run: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    output = copy_run(tiny_run, tmp_path)
    log = output / "metrics.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:2]) + b'{"kind": "train", "episode": 3, "note": "\xff"}\n' + b"".join(lines[2:]))
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 3: not UTF-8 text \(byte 0xff at column 42\)"):
        read_records(log)
    code, _, stderr = run_main(run_args(output, tiny_run["data_root"], extra=("--resume",)))
    assert code == 2 and "metrics.jsonl, line 3: not UTF-8 text" in stderr and "fix or delete" in stderr, stderr
    # A last line torn in the middle of a character is dropped like any torn line.
    log.write_bytes(b"".join(lines) + '{"kind": "tr\u00e9'.encode()[:-1])
    assert len(read_records(log)) == len(lines)


def test_5_api_load_refuses_the_meta_device(tiny_run: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"device 'meta' \(meta\) cannot run a model here; expected 'cpu'"):
        load(tiny_run["dir"] / "best.pt", device="meta")
