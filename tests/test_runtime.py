"""Training and evaluation on several processes (torchrun, gloo on this CPU) against one process.

The torchrun tests launch real process groups (`python -m torch.distributed.run --standalone`), two
processes of one thread each, on the real Omniglot data or its miniature copy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fewshot.model.checkpoint import spec_from_state
from fewshot.runtime import World, shard
from fewshot.model.network import FewShotModel
from fewshot.training import TrainConfig, train
from fewshot.training.steps import StepBatchNorm

EPISODES = 8  # 2M episodes with M = 4 steps of 2


def run_args(output: Path, data_root: Path, episodes: int = EPISODES, *extra: str) -> list[str]:
    return ["--train-ways", "5", "--queries", "3", "--episodes", str(episodes), "--episodes-per-step", "2",
            "--val-every", "4", "--val-episodes", "4", "--test-episodes", "6", "--checkpoint-every", "4",
            "--threads", "1", "--no-progress", "--data-root", str(data_root), "--output", str(output), *extra]


def torchrun(module: str, args: list[str], *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
               "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def single(module: str, args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Path]:
    """The same 8 episodes, 2 per step: on two processes (one episode each per step) and on one
    (gradient accumulation over two)."""
    root = tmp_path_factory.mktemp("distributed")
    torchrun("fewshot.train", run_args(root / "two", data_root))
    single("fewshot.train", run_args(root / "one", data_root))
    return {"two": root / "two", "one": root / "one", "root": root}


def test_two_processes_match_one_process_with_the_same_episodes_per_step(runs: dict[str, Path]) -> None:
    two, one = weights(runs["two"]), weights(runs["one"])
    assert two.keys() == one.keys()
    for name in two:  # parameters and batch-norm statistics alike
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    # The model moved: equal weights are not two copies of the (seeded) initialisation.
    state = torch.load(runs["two"] / "last.pt", weights_only=True)
    torch.manual_seed(0)
    initial = FewShotModel(spec_from_state(state, "last.pt")).state_dict()
    assert all(not torch.equal(two[name], initial[name]) for name in two if name.endswith("weight"))
    steps_two, steps_one = records(runs["two"]), records(runs["one"])
    assert [r["episode"] for r in steps_two] == [2, 4, 6, 8] == [r["episode"] for r in steps_one]
    for a, b in zip(steps_two, steps_one):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    # The same validation accuracies, so the same best.pt, and the same test report.
    assert [r["accuracy"] for r in records(runs["two"], "val")] == [r["accuracy"] for r in records(runs["one"], "val")]
    report_two = json.loads((runs["two"] / "test_report.json").read_text())["results"][0]["per_episode"]
    report_one = json.loads((runs["one"] / "test_report.json").read_text())["results"][0]["per_episode"]
    assert report_two == report_one


def test_no_episode_is_used_twice_and_every_episode_once(runs: dict[str, Path]) -> None:
    for run in ("two", "one"):
        used = [n for r in records(runs[run]) for n in r["episodes"]]
        assert sorted(used) == list(range(1, EPISODES + 1)), (run, used)


def test_rank_zero_alone_writes_the_run_directory(runs: dict[str, Path]) -> None:
    config = json.loads((runs["two"] / "config.json").read_text())
    assert config["episodes_per_step"] == 2
    lines = (runs["two"] / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 4 + 2  # 4 steps and 2 validations, written once
    assert sorted(p.name for p in runs["two"].iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in runs["one"].iterdir() if not p.name.startswith("."))


def test_distributed_evaluation_gives_the_single_process_per_episode_accuracies(runs: dict[str, Path]) -> None:
    checkpoint = runs["one"] / "best.pt"
    common = [str(checkpoint), "--ways", "5", "20", "--shots", "1", "5", "--episodes", "30", "--no-progress"]
    torchrun("fewshot.evaluate", [*common, "--report", str(runs["root"] / "eval_two.json")])
    single("fewshot.evaluate", [*common, "--report", str(runs["root"] / "eval_one.json")])
    two = json.loads((runs["root"] / "eval_two.json").read_text())["results"]
    one = json.loads((runs["root"] / "eval_one.json").read_text())["results"]
    assert [(r["ways"], r["shots"]) for r in two] == [(5, 1), (5, 5), (20, 1), (20, 5)]
    for a, b in zip(two, one):
        assert len(a["per_episode"]) == 30
        assert a["per_episode"] == b["per_episode"]
        assert (a["accuracy"], a["ci95"]) == (b["accuracy"], b["ci95"])


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the torchrun workers below `launcher`, read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent != launcher.pid:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_a_killed_rank_is_restarted_by_torchrun_and_the_job_ends_with_the_uninterrupted_weights(
        runs: dict[str, Path], data_root: Path, tmp_path: Path) -> None:
    episodes = 120
    output = tmp_path / "restarted"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
               "--monitor-interval=0.5", "-m", "fewshot.train", *run_args(output, data_root, episodes)]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        killed_at = None
        deadline = time.monotonic() + 240
        while killed_at is None and time.monotonic() < deadline:
            time.sleep(0.2)
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            done = records(output)[-1]["episode"] if (output / "metrics.jsonl").exists() and records(output) else 0
            if (output / "last.pt").exists() and 40 <= done < episodes - 40:
                pids = worker_pids(launcher)
                if 1 in pids:
                    os.kill(pids[1], signal.SIGKILL)
                    killed_at = done
        assert killed_at is not None, "the run ended or stalled before rank 1 could be killed mid-run"
        _, stderr = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:  # the launcher and its workers: nothing may outlive a failed test
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode == 0, stderr[-3000:]
    assert "resuming from" in stderr and "restart 1 of this torchrun job" in stderr
    # The log reads as one run: every step once, in order, and every episode used once.
    steps = records(output)
    assert [r["episode"] for r in steps] == list(range(2, episodes + 1, 2))
    assert sorted(n for r in steps for n in r["episodes"]) == list(range(1, episodes + 1))
    # The uninterrupted reference: the same episodes in one process, 2 per step.
    reference = tmp_path / "reference"
    single("fewshot.train", run_args(reference, data_root, episodes))
    restarted, uninterrupted = weights(output), weights(reference)
    for name in restarted:
        torch.testing.assert_close(restarted[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)


def test_episodes_per_step_in_one_process_resumes_exactly(data_root: Path, tmp_path: Path) -> None:
    base = dict(train_ways=5, queries=3, episodes_per_step=2, val_every=4, val_episodes=4, test_episodes=4,
                checkpoint_every=2, threads=1, data_root=str(data_root))
    whole = train(TrainConfig(episodes=8, output=str(tmp_path / "whole"), **base), progress=False)
    train(TrainConfig(episodes=4, output=str(tmp_path / "part"), **base), progress=False)
    resumed = train(TrainConfig(episodes=8, output=str(tmp_path / "part"), **base), resume=True, progress=False)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "part")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert whole["results"][0]["per_episode"] == resumed["results"][0]["per_episode"]


@pytest.mark.parametrize("settings, message", [
    (dict(episodes_per_step=0), "--episodes-per-step must be a positive int"),
    (dict(episodes_per_step=3, episodes=8), "--episodes 8 must be a multiple of --episodes-per-step 3"),
    (dict(sync_batchnorm=True, device="cpu"), "--sync-batchnorm needs CUDA"),
    (dict(dist_timeout=0.0), "--dist-timeout must be a finite number of seconds > 0"),
])
def test_bad_distributed_settings_are_refused(settings: dict, message: str, data_root: Path, tmp_path: Path) -> None:
    config = TrainConfig(**{"train_ways": 5, "episodes": 8, "data_root": str(data_root),
                            "output": str(tmp_path / "run"), **settings})
    with pytest.raises(ValueError, match=message):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_step_moves_batch_norm_statistics_once_towards_the_mean_of_its_episodes() -> None:
    torch.manual_seed(0)
    layer = nn.BatchNorm1d(3, momentum=0.1)
    start_mean, start_var = layer.running_mean.clone(), layer.running_var.clone()
    episodes = [torch.randn(6, 3) * (b + 1) + b for b in range(4)]
    averager = StepBatchNorm(layer)
    averager.begin()
    for x in episodes:
        layer(x)
        averager.after_episode()
        assert torch.equal(layer.running_mean, start_mean)  # every episode starts from the step's statistics
    averager.finish(len(episodes), World())
    # By hand: (1 - m) r0 + m * mean over the episodes of their batch mean and unbiased variance.
    mean = torch.stack([x.mean(0) for x in episodes]).mean(0)
    var = torch.stack([x.var(0, unbiased=True) for x in episodes]).mean(0)
    torch.testing.assert_close(layer.running_mean, 0.9 * start_mean + 0.1 * mean)
    torch.testing.assert_close(layer.running_var, 0.9 * start_var + 0.1 * var)
    assert int(layer.num_batches_tracked) == 1


def test_ranks_shard_positions_disjointly_and_completely() -> None:
    shards = [list(shard(10, World(rank, 3))) for rank in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_a_restarted_job_starts_over_only_in_files_its_own_failed_attempt_wrote(data_root: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    base = dict(train_ways=5, queries=3, val_every=4, val_episodes=4, test_episodes=4, checkpoint_every=100,
                threads=1, data_root=str(data_root))
    output = tmp_path / "run"
    # What a first attempt killed before its first checkpoint leaves: its own config.json and log, no last.pt.
    train(TrainConfig(episodes=4, output=str(output), **base), progress=False)
    for name in ("last.pt", "best.pt", "test_report.json"):
        (output / name).unlink()
    (output / "metrics.jsonl").write_text('{"kind": "train", "episode": 1, "loss": 9.0, "accuracy": 0.5, "lr": 0.001}\n')
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    train(TrainConfig(episodes=4, output=str(output), **base), progress=False)
    assert [r["episode"] for r in records(output)] == [1, 2, 3, 4] and records(output)[0]["loss"] != 9.0  # started over
    # A restart never takes over files of another run (here: another learning rate).
    with pytest.raises(FileExistsError, match="already holds a run|is not empty"):
        (output / "last.pt").rename(tmp_path / "kept.pt")
        train(TrainConfig(episodes=4, output=str(output), **{**base, "lr": 0.5}), progress=False)
    (tmp_path / "kept.pt").rename(output / "last.pt")
    # With last.pt there, a restart resumes (here: the finished run, to a longer schedule).
    train(TrainConfig(episodes=6, output=str(output), **base), progress=False)
    assert [r["episode"] for r in records(output)] == [1, 2, 3, 4, 5, 6]


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_and_the_run_resumes_exactly(
        data_root: Path, tmp_path: Path) -> None:
    episodes = 120
    output = tmp_path / "stopped"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "fewshot.train", *run_args(output, data_root, episodes)]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        sent = False
        deadline = time.monotonic() + 240
        while not sent and time.monotonic() < deadline:
            time.sleep(0.2)
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            done = records(output)[-1]["episode"] if (output / "metrics.jsonl").exists() and records(output) else 0
            if 20 <= done < episodes - 40 and 1 in (pids := worker_pids(launcher)):
                os.kill(pids[1], signal.SIGTERM)
                sent = True
        assert sent, "the run ended or stalled before rank 1 could be signalled mid-run"
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    saved = torch.load(output / "last.pt", weights_only=True)["episode"]
    # Both ranks stopped before the same episode (the signal travels in the step's all-reduce); rank 0 saved there.
    assert stderr.count(f"SIGTERM received: interrupted before episode {saved};") == 2, stderr[-3000:]
    assert records(output)[-1]["episode"] == saved < episodes
    torchrun("fewshot.train", [*run_args(output, data_root, episodes), "--resume"])
    reference = tmp_path / "reference"
    single("fewshot.train", run_args(reference, data_root, episodes))
    resumed, uninterrupted = weights(output), weights(reference)
    for name in resumed:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)
