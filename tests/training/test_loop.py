"""Training CLI on Omniglot (real, or the miniature in the real formats without FEWSHOT_DATA): run artifacts, exact resume after SIGKILL / SIGINT, every learner, bad input, NaN."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.model.checkpoint import load_checkpoint, load_model_state
from fewshot.data.datasets import load_splits
from fewshot.evaluation import evaluate_model
from fewshot.learners.miners import MINERS
from fewshot.model.network import FewShotModel, ModelSpec
from fewshot.cli.train import main

EPISODES = 30
# Tiny but complete: 5-way training, validation every 10 episodes, checkpoints every 5, one thread so that
# separate processes compute bit-identical numbers.
TINY = ["--ways", "5", "--shots", "1", "--train-ways", "5", "--queries", "2", "--eval-queries", "5",
        "--val-every", "10", "--val-episodes", "5", "--test-episodes", "10", "--checkpoint-every", "5",
        "--seed", "3", "--threads", "1", "--no-progress"]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """fewshot.train.main in this process: (exit code, stdout, stderr); restores torch's thread count."""
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def run_args(output: Path, data_root: Path, episodes: int = EPISODES, extra: tuple[str, ...] = ()) -> list[str]:
    return [*TINY, "--episodes", str(episodes), "--data-root", str(data_root), "--output", str(output), *extra]


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_identical(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts / lists of tensors and plain values are exactly equal (torch.equal for tensors)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where} keys differ: {sorted(a)} vs {sorted(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where} lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(run_dir: Path, reference_dir: Path) -> None:
    """Final last.pt (model, optimizer, scheduler, best), metrics log and test report equal the reference run's."""
    state, reference = load_checkpoint(run_dir / "last.pt"), load_checkpoint(reference_dir / "last.pt")
    assert state["episode"] == reference["episode"] == EPISODES
    for key in ("model", "optimizer", "scheduler", "best"):
        assert_identical(state[key], reference[key], key)
    best, reference_best = load_checkpoint(run_dir / "best.pt"), load_checkpoint(reference_dir / "best.pt")
    assert_identical(best["model"], reference_best["model"], "best.pt")
    log, reference_log = read_log(run_dir), read_log(reference_dir)
    assert [r for r in log if r["kind"] == "train"] == [r for r in reference_log if r["kind"] == "train"]
    assert [r for r in log if r["kind"] == "val"] == [r for r in reference_log if r["kind"] == "val"]
    report = json.loads((run_dir / "test_report.json").read_text())
    reference_report = json.loads((reference_dir / "test_report.json").read_text())
    assert report["results"][0]["per_episode"] == reference_report["results"][0]["per_episode"]


def start_training(output: Path, data_root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fewshot.train", *run_args(output, data_root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process: subprocess.Popen, path: Path, episode: int, timeout: float = 120.0) -> int:
    """Poll until `path` holds a checkpoint of at least `episode` episodes; return its episode."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"training exited ({process.returncode}) before reaching episode {episode}:\n{out}\n{err}")
        if path.exists() and path.stat().st_mtime_ns != seen:
            seen = path.stat().st_mtime_ns
            saved = load_checkpoint(path)["episode"]  # written atomically: never half a file
            if saved >= episode:
                return saved
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"no checkpoint of episode >= {episode} in {path} after {timeout} s")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Any]:
    """One uninterrupted tiny run, shared by the tests of this module (which never modify it)."""
    output = tmp_path_factory.mktemp("reference") / "run"
    code, stdout, stderr = run_main(run_args(output, data_root))
    assert code == 0, stderr
    return {"dir": output, "stdout": stdout, "stderr": stderr, "data_root": data_root}


def test_run_writes_config_log_curve_checkpoints_and_report(reference_run: dict[str, Any]) -> None:
    run_dir = reference_run["dir"]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["ways"], config["shots"], config["train_ways"], config["episodes"]) == (5, 1, 5, EPISODES)
    assert (config["split"], config["image_size"], config["learner"], config["seed"]) == ("vinyals", 28, "protonet", 3)

    log = read_log(run_dir)
    train = [r for r in log if r["kind"] == "train"]
    val = [r for r in log if r["kind"] == "val"]
    assert [r["episode"] for r in train] == list(range(1, EPISODES + 1))
    assert all(np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1 and r["lr"] == 1e-3 for r in train)
    assert [r["episode"] for r in val] == [10, 20, 30]
    assert all(0 <= r["accuracy"] <= 1 and r["ci95"] >= 0 for r in val)
    # Learning happened: late training episodes beat chance (1/5) by far.
    assert np.mean([r["accuracy"] for r in train[-10:]]) > 0.5

    with Image.open(run_dir / "curve.png") as curve:
        assert curve.format == "PNG" and curve.size[0] > 100 and curve.size[1] > 100
        curve.load()  # decodes every pixel: fails on a truncated file

    last = load_checkpoint(run_dir / "last.pt")
    assert last["episode"] == EPISODES and last["spec"]["backbone"] == "conv4"
    train_classes = load_splits("omniglot", "vinyals", reference_run["data_root"]).train.num_classes
    assert len(last["train_classes"]) == train_classes and last["dataset"] == "omniglot"

    report = json.loads((run_dir / "test_report.json").read_text())
    assert report["eval_split"] == "test" and report["checkpoint"] == str(run_dir / "best.pt")
    row = report["results"][0]
    assert (row["ways"], row["shots"], row["episodes"], len(row["per_episode"])) == (5, 1, 10, 10)
    assert row["accuracy"] == pytest.approx(np.mean(row["per_episode"]))
    expected = (f"test (test classes, 10 episodes): 5-way 1-shot accuracy {100 * row['accuracy']:.2f}% "
                f"+- {100 * row['ci95']:.2f}% (95% CI)")
    assert expected in reference_run["stdout"]


def test_best_checkpoint_has_the_highest_logged_validation_accuracy(reference_run: dict[str, Any]) -> None:
    run_dir = reference_run["dir"]
    val = [r for r in read_log(run_dir) if r["kind"] == "val"]
    best_record = max(val, key=lambda r: r["accuracy"])  # first of equals, as training keeps the first
    best = load_checkpoint(run_dir / "best.pt")
    assert best["episode"] == best_record["episode"]
    assert best["best"] == {"episode": best_record["episode"], "accuracy": best_record["accuracy"]}
    assert load_checkpoint(run_dir / "last.pt")["best"] == best["best"]
    # The weights in best.pt reproduce the logged validation accuracy on the same (seed + 1) episodes.
    model = FewShotModel(ModelSpec(**best["spec"]))
    load_model_state(model, best, run_dir / "best.pt")
    splits = load_splits("omniglot", "vinyals", reference_run["data_root"])
    accuracies = evaluate_model(model, splits.val, ways=5, shots=1, queries=5, episodes=5, seed=3 + 1)
    assert accuracies.mean() == pytest.approx(best_record["accuracy"], abs=1e-6)


def test_resume_after_sigkill_matches_an_uninterrupted_run(reference_run: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "run"
    process = start_training(output, reference_run["data_root"])
    try:
        wait_for_checkpoint(process, output / "last.pt", 5)
    finally:
        process.kill()  # SIGKILL: no handler runs, the process may be anywhere (mid-episode, mid-write)
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(output / "last.pt")["episode"]
    assert 5 <= killed_at < EPISODES, "the kill must land partway through training"

    code, _, stderr = run_main(run_args(output, reference_run["data_root"], extra=("--resume",)))
    assert code == 0, stderr
    assert_same_run(output, reference_run["dir"])


def test_resume_survives_a_torn_last_log_line(reference_run: dict[str, Any], tmp_path: Path) -> None:
    # A crash while a record is being written leaves half a line; records past the checkpoint must go too.
    output = tmp_path / "run"
    code, _, stderr = run_main(run_args(output, reference_run["data_root"], episodes=10))
    assert code == 0, stderr
    with open(output / "metrics.jsonl", "a") as log:
        log.write('{"kind": "train", "episode": 11, "loss": 0.5, "accuracy": 1.0, "lr": 0.001}\n{"kind": "tra')
    code, _, stderr = run_main(run_args(output, reference_run["data_root"], extra=("--resume",)))
    assert code == 0, stderr
    assert_same_run(output, reference_run["dir"])


def test_sigint_saves_exits_130_and_resume_matches_an_uninterrupted_run(reference_run: dict[str, Any], tmp_path: Path) -> None:
    output = tmp_path / "run"
    process = start_training(output, reference_run["data_root"])
    try:
        wait_for_checkpoint(process, output / "last.pt", 5)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    stopped_at = load_checkpoint(output / "last.pt")["episode"]
    assert 5 <= stopped_at < EPISODES
    assert f"interrupted before episode {stopped_at}" in stderr and "--resume" in stderr
    # The log holds exactly the episodes done, nothing past the saved state.
    assert [r["episode"] for r in read_log(output) if r["kind"] == "train"] == list(range(1, stopped_at + 1))

    code, _, stderr = run_main(run_args(output, reference_run["data_root"], extra=("--resume",)))
    assert code == 0, stderr
    assert_same_run(output, reference_run["dir"])


LEARNER_SETTINGS = [
    ("protonet", "euclidean", None),
    ("protonet", "cosine", None),
    ("protonet", "mahalanobis", None),
    ("siamese", "euclidean", None),
    *[("triplet", "euclidean", miner) for miner in sorted(MINERS)],
]


@pytest.mark.parametrize(("learner", "metric", "miner"), LEARNER_SETTINGS)
def test_every_learner_trains_through_the_cli(learner: str, metric: str, miner: str | None, tmp_path: Path,
                                              data_root: Path) -> None:
    extra = ["--learner", learner, "--metric", metric, "--val-every", "3", "--val-episodes", "2", "--test-episodes", "2"]
    if miner:
        extra += ["--miner", miner]
    if miner == "distance-weighted":
        extra += ["--normalize"]  # its distance distribution assumes embeddings on the unit sphere
    code, stdout, stderr = run_main(run_args(tmp_path, data_root, episodes=3, extra=tuple(extra)))
    assert code == 0, stderr
    train = [r for r in read_log(tmp_path) if r["kind"] == "train"]
    assert len(train) == 3 and all(np.isfinite(r["loss"]) for r in train)
    spec = load_checkpoint(tmp_path / "best.pt")["spec"]
    assert (spec["learner"], spec["metric"], spec["learner_args"].get("miner")) == (learner, metric, miner)
    assert "5-way 1-shot accuracy" in stdout


def test_bf16_precision_autocasts_the_backbone_only(data_root: Path, tmp_path: Path) -> None:
    split = load_splits("omniglot", "vinyals", str(data_root), 28).train
    images = split.to_float(split.gather(np.arange(0, 400, 20)))
    torch.manual_seed(0)
    model = FewShotModel(ModelSpec())
    reference = model.embed(images)
    model.compute_dtype = torch.bfloat16
    embeddings = model.embed(images)
    # float32 out (distances and losses stay float32), within bfloat16's 8-bit mantissa of the float32 result
    assert embeddings.dtype == torch.float32 and not torch.equal(embeddings, reference)
    assert torch.allclose(embeddings, reference, rtol=0.05, atol=0.05 * reference.abs().max().item())

    code, _, stderr = run_main(run_args(tmp_path, data_root, episodes=3,
                                        extra=("--precision", "bf16", "--val-every", "3", "--val-episodes", "2")))
    assert code == 0, stderr
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert all(np.isfinite(r["loss"]) for r in read_log(tmp_path) if r["kind"] == "train")


@pytest.mark.parametrize(("flag", "value", "valid"), [("--learner", "protonett", "protonet"),
                                                      ("--metric", "manhattan", "mahalanobis"),
                                                      ("--backbone", "vgg16", "resnet12"),
                                                      ("--precision", "fp16", "bf16"),
                                                      ("--augment", "elastic", "affine")])
def test_unknown_names_are_refused_with_the_valid_choices(flag: str, value: str, valid: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([flag, value])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in message and valid in message


def test_more_ways_than_the_split_has_classes_is_refused(data_root: Path, tmp_path: Path) -> None:
    splits = load_splits("omniglot", "vinyals", data_root)
    code, _, stderr = run_main(run_args(tmp_path / "a", data_root, extra=("--train-ways", "5000")))
    assert code == 2
    assert f"--train-ways 5000 exceeds the {splits.train.num_classes} classes of the omniglot vinyals train split" in stderr
    code, _, stderr = run_main(run_args(tmp_path / "b", data_root, extra=("--ways", "700")))
    assert code == 2 and f"--ways 700 exceeds the {splits.val.num_classes} classes of the omniglot vinyals val split" in stderr
    assert not (tmp_path / "a" / "last.pt").exists() and not (tmp_path / "b" / "last.pt").exists()


def test_more_shots_and_queries_than_a_class_holds_is_refused_before_training(data_root: Path, tmp_path: Path) -> None:
    # Training episodes fit (5 + 5 <= 20 drawings); validation episodes (5 + 16) would fail only at the first validation.
    output = tmp_path / "run"
    code, _, stderr = run_main(run_args(output, data_root, extra=("--shots", "5", "--queries", "5", "--eval-queries", "16")))
    assert code == 2
    assert "--shots 5 + --eval-queries 16 needs 21 images per class, but classes of the omniglot vinyals val split " \
           "have as few as 20" in stderr
    assert not output.exists()


def test_a_step_schedule_run_can_be_extended_but_a_cosine_one_cannot(reference_run: dict[str, Any], data_root: Path,
                                                                     tmp_path: Path) -> None:
    extended = tmp_path / "extended"
    shutil.copytree(reference_run["dir"], extended)
    code, _, stderr = run_main(run_args(extended, data_root, episodes=EPISODES + 2, extra=("--resume",)))
    assert code == 0, stderr
    train = [r for r in read_log(extended) if r["kind"] == "train"]
    reference_train = [r for r in read_log(reference_run["dir"]) if r["kind"] == "train"]
    assert train[:EPISODES] == reference_train and len(train) == EPISODES + 2

    cosine = tmp_path / "cosine"
    tiny = ("--schedule", "cosine", "--val-every", "2", "--val-episodes", "2", "--test-episodes", "2")
    assert run_main(run_args(cosine, data_root, episodes=2, extra=tiny))[0] == 0
    code, _, stderr = run_main(run_args(cosine, data_root, episodes=4, extra=(*tiny, "--resume")))
    assert code == 2 and "episodes: run has 2, now 4" in stderr  # the lr would climb back up from zero


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--val-every", "0", "--val-every must be at least 1, got 0"),
    ("--checkpoint-every", "0", "--checkpoint-every must be at least 1, got 0"),
    ("--lr-step", "0", "--lr-step must be at least 1, got 0"),
    ("--val-episodes", "1", "--val-episodes must be at least 2 (for a confidence interval), got 1"),
    ("--test-episodes", "1", "--test-episodes must be at least 2 (for a confidence interval), got 1"),
])
def test_run_settings_that_would_fail_later_are_refused_up_front(flag: str, value: str, message: str,
                                                                 data_root: Path, tmp_path: Path) -> None:
    code, _, stderr = run_main(run_args(tmp_path / "run", data_root, extra=(flag, value)))
    assert code == 2 and message in stderr
    assert not (tmp_path / "run").exists()


def test_a_metric_with_a_learner_that_cannot_use_it_is_refused(data_root: Path, tmp_path: Path) -> None:
    code, _, stderr = run_main(run_args(tmp_path, data_root, extra=("--learner", "siamese", "--metric", "cosine")))
    assert code == 2 and "--metric 'cosine' does not suit the siamese learner; it accepts: euclidean" in stderr


def test_resume_with_a_changed_setting_is_refused(reference_run: dict[str, Any]) -> None:
    run_dir = reference_run["dir"]
    before = (run_dir / "last.pt").read_bytes()
    code, _, stderr = run_main(run_args(run_dir, reference_run["data_root"], extra=("--lr", "0.01", "--resume")))
    assert code == 2
    assert "lr: run has 0.001, now 0.01" in stderr and str(run_dir) in stderr
    assert (run_dir / "last.pt").read_bytes() == before


def test_starting_over_an_existing_run_without_resume_is_refused(reference_run: dict[str, Any]) -> None:
    run_dir = reference_run["dir"]
    log_before = (run_dir / "metrics.jsonl").read_text()
    code, _, stderr = run_main(run_args(run_dir, reference_run["data_root"]))
    assert code == 2 and "already holds a run" in stderr and "--resume" in stderr
    assert (run_dir / "metrics.jsonl").read_text() == log_before


def test_resume_without_a_run_names_the_missing_checkpoint(data_root: Path, tmp_path: Path) -> None:
    code, _, stderr = run_main(run_args(tmp_path, data_root, extra=("--resume",)))
    assert code == 2 and f"checkpoint {tmp_path / 'last.pt'} does not exist" in stderr


def test_checkpoint_from_another_architecture_is_refused(reference_run: dict[str, Any]) -> None:
    path = reference_run["dir"] / "best.pt"
    state = load_checkpoint(path)
    resnet = FewShotModel(ModelSpec(**{**state["spec"], "backbone": "resnet12"}))
    with pytest.raises(ValueError, match=r"another architecture \(backbone: checkpoint 'conv4' vs requested 'resnet12'\)"):
        load_model_state(resnet, state, path)
    # Same spec but weights that do not fit (a tensor missing): a clear error too, not a raw RuntimeError.
    conv4 = FewShotModel(ModelSpec(**state["spec"]))
    damaged = {**state, "model": {k: v for k, v in state["model"].items() if not k.endswith("running_mean")}}
    with pytest.raises(ValueError, match="does not match the conv4 architecture"):
        load_model_state(conv4, damaged, path)


def test_corrupt_truncated_foreign_and_missing_checkpoints(reference_run: dict[str, Any], tmp_path: Path) -> None:
    data = (reference_run["dir"] / "best.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or not a fewshot checkpoint"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="expected keys 'model' and 'spec'"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_loss_stops_with_the_episode_and_keeps_the_last_finite_checkpoint(data_root: Path,
                                                                                     tmp_path: Path) -> None:
    # A learning rate of 1e30 blows the weights up after the first update; the next loss is NaN for real.
    code, _, stderr = run_main(run_args(tmp_path, data_root, extra=("--lr", "1e30", "--checkpoint-every", "1")))
    assert code == 2
    train = [r for r in read_log(tmp_path) if r["kind"] == "train"]
    assert train and all(np.isfinite(r["loss"]) for r in train)
    failed_episode = len(train) + 1
    assert f"at episode {failed_episode};" in stderr and ("loss is nan" in stderr or "loss is inf" in stderr)
    assert "lower --lr" in stderr
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["episode"] == failed_episode - 1
    assert all(torch.isfinite(tensor).all() for tensor in last["model"].values())
    assert not (tmp_path / "test_report.json").exists()


def test_without_output_each_run_gets_a_new_directory_and_resume_needs_one(data_root: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_main([*TINY, "--episodes", "2", "--val-every", "2", "--data-root", str(data_root)])
    assert code == 0, stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("omniglot-protonet-5w1s-") and (run_dir / "best.pt").exists()
    code, _, stderr = run_main([*TINY, "--episodes", "2", "--data-root", str(data_root), "--resume"])
    assert code == 2 and "--resume needs --output" in stderr


def test_resume_with_another_thread_count_warns_that_it_is_no_longer_exact(reference_run: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run["dir"], run_dir)
    code, _, stderr = run_main(run_args(run_dir, reference_run["data_root"], episodes=EPISODES + 2, extra=("--resume",)))
    assert code == 0 and "warning: resuming with" not in stderr
    code, _, stderr = run_main(run_args(run_dir, reference_run["data_root"], episodes=EPISODES + 4,
                                        extra=("--resume", "--threads", "2")))
    assert code == 0, stderr
    assert "warning: resuming with --threads 2 (the run used 1): the numbers will differ" in stderr
