"""The training config in sections: flat and sectioned construction, `resolve()` returning a new config,
`--config FILE` (TOML or a run's config.json) under command-line overrides, old flat config.json files,
the legacy --margin / --miner flags, and the augmentation and schedule registries."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.cli.train import build_parser, main
from fewshot.data import from_arrays
from fewshot.data.datasets import load_splits
from fewshot.model.checkpoint import load_checkpoint, save_checkpoint, spec_from_state
from fewshot.registry import Registry
from fewshot.training import (
    AUGMENTATIONS,
    SCHEDULES,
    EpisodeSettings,
    ModelSettings,
    OptimisationSettings,
    TrainConfig,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "omniglot-protonet.toml"
# The tiny run of tests/test_train.py: one thread, so separate runs compute bit-identical numbers.
TINY = ["--ways", "5", "--shots", "1", "--train-ways", "5", "--queries", "2", "--eval-queries", "5",
        "--val-every", "10", "--val-episodes", "5", "--test-episodes", "10", "--checkpoint-every", "5",
        "--seed", "3", "--threads", "1", "--no-progress"]


def run_main(argv: list[str]) -> tuple[int, str]:
    """fewshot.train's main in this process: (exit code, stderr); restores torch's thread count."""
    threads = torch.get_num_threads()
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        torch.set_num_threads(threads)
    return code, err.getvalue()


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first), "weights differ"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    output = tmp_path_factory.mktemp("tiny") / "run"
    code, stderr = run_main([*TINY, "--episodes", "20", "--data-root", str(data_root), "--output", str(output)])
    assert code == 0, stderr
    return output


def test_flat_keywords_are_sorted_into_sections() -> None:
    flat = TrainConfig(ways=3, shots=2, learner="triplet", learner_args={"margin": 0.3}, episodes=50, seed=4)
    sectioned = TrainConfig(episode=EpisodeSettings(ways=3, shots=2),
                            model=ModelSettings(learner="triplet", learner_args={"margin": 0.3}),
                            optimisation=OptimisationSettings(episodes=50, seed=4))
    assert flat == sectioned
    assert (flat.ways, flat.episode.ways, flat.episodes, flat.optimisation.episodes) == (3, 3, 50, 50)
    assert replace(flat, episodes=7).optimisation == OptimisationSettings(episodes=7, seed=4)
    assert TrainConfig.from_dict(flat.to_dict()) == flat == TrainConfig.from_dict(flat.sections())
    with pytest.raises(TypeError, match="unknown training setting 'wayz'"):
        TrainConfig(wayz=5)
    with pytest.raises(FrozenInstanceError):
        flat.ways = 5  # type: ignore[misc]


def test_resolve_returns_a_new_checked_config_and_leaves_the_callers_alone(data_root: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    splits = load_splits("omniglot", "vinyals", data_root)
    config = TrainConfig(train_ways=5, data_root="data", init="runs/a/last.pt")
    before = config.to_dict()
    run = config.resolve(splits, world_size=2)
    assert config.to_dict() == before
    assert (run.split, run.image_size, run.episodes_per_step) == ("vinyals", 28, 2)
    assert run.data_root == str(tmp_path / "data") and run.init == str(tmp_path / "runs" / "a" / "last.pt")
    assert run.output.startswith("runs/omniglot-protonet-5w1s-")
    arrays = from_arrays(torch.rand(40, 1, 16, 16), np.repeat(np.arange(10), 4))
    assert TrainConfig(ways=2, train_ways=2, queries=1, eval_queries=1).resolve(arrays).output.startswith(
        f"runs/{arrays.dataset}-protonet-2w1s-")  # named after the data it trains on
    with pytest.raises(ValueError, match="--train-ways 5000 exceeds"):
        replace(config, train_ways=5000).resolve(splits)
    with pytest.raises(ValueError, match="--metric 'cosine' does not suit the siamese learner"):
        replace(config, learner="siamese", metric="cosine").resolve(splits)


def test_old_flat_configs_with_margin_and_miner_are_read_as_learner_arguments() -> None:
    old = {**TrainConfig().to_dict(), "learner": "triplet", "margin": 0.3, "miner": "batch-hard"}
    config = TrainConfig.from_dict(old)
    assert config.learner_args == {"margin": 0.3, "miner": "batch-hard"}
    assert "margin" not in config.to_dict() and "miner" not in config.to_dict()
    with pytest.raises(ValueError, match="ways in the model section belongs to the episode section"):
        TrainConfig.from_dict({"model": {"ways": 5}})


def test_a_run_written_by_the_old_code_resumes(tiny_run: Path, data_root: Path, tmp_path: Path) -> None:
    # The old code wrote the flat config with `margin` and `miner` fields, in config.json and in every checkpoint.
    old = tmp_path / "old"
    old.mkdir()
    for name in ("splits.json", "metrics.jsonl", "best.pt"):
        (old / name).write_bytes((tiny_run / name).read_bytes())
    flat = {**json.loads((tiny_run / "config.json").read_text()), "margin": None, "miner": None, "output": str(old)}
    (old / "config.json").write_text(json.dumps(flat, indent=2))
    state = load_checkpoint(tiny_run / "last.pt")
    save_checkpoint(old / "last.pt", {**state, "config": flat})
    code, stderr = run_main([*TINY, "--episodes", "22", "--data-root", str(data_root), "--output", str(old), "--resume"])
    assert code == 0, stderr
    assert load_checkpoint(old / "last.pt")["episode"] == 22


def test_training_from_the_example_toml_with_flags_overriding_it(data_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    # The file's sizes are for real Omniglot; the flags shrink the run (and win over the file).
    code, stderr = run_main(["--config", str(EXAMPLE), *TINY, "--episodes", "10", "--data-root", str(data_root),
                             "--output", str(output)])
    assert code == 0, stderr
    saved = json.loads((output / "config.json").read_text())
    assert (saved["episodes"], saved["train_ways"], saved["seed"]) == (10, 5, 3)  # flags given
    assert (saved["lr_step"], saved["split"]) == (500, "vinyals")  # from the file: the parser's defaults do not apply
    assert saved["val_every"] == 10 and (output / "last.pt").is_file()


def test_repeating_a_finished_run_from_its_config_json_gives_the_same_weights(tiny_run: Path, tmp_path: Path) -> None:
    code, stderr = run_main(["--config", str(tiny_run / "config.json"), "--output", str(tmp_path / "again"),
                             "--no-progress"])
    assert code == 0, stderr
    assert_same_weights(tiny_run / "last.pt", tmp_path / "again" / "last.pt")
    assert_same_weights(tiny_run / "best.pt", tmp_path / "again" / "best.pt")
    repeated = json.loads((tmp_path / "again" / "config.json").read_text())
    assert {**repeated, "output": None} == {**json.loads((tiny_run / "config.json").read_text()), "output": None}


def test_a_bad_config_file_is_refused_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[episode]\nwayz = 5\n")
    code, stderr = run_main(["--config", str(bad)])
    assert code == 2 and f"config file {bad}: unknown training setting 'wayz'" in stderr
    bad.write_text("[episode\n")
    code, stderr = run_main(["--config", str(bad)])
    assert code == 2 and "is not valid TOML" in stderr


def test_legacy_margin_and_miner_flags_become_loss_arguments(data_root: Path, tmp_path: Path) -> None:
    code, stderr = run_main(["--learner", "triplet", "--margin", "0.3", "--loss-arg", "margin=0.2",
                             "--output", str(tmp_path / "a")])
    assert code == 2 and "--margin and --loss-arg margin=... both set the learner's margin" in stderr
    code, stderr = run_main(["--learner", "protonet", "--miner", "batch-hard", "--output", str(tmp_path / "b")])
    assert code == 2 and "--miner does not apply to the protonet learner" in stderr
    output = tmp_path / "c"
    code, stderr = run_main([*TINY, "--episodes", "2", "--val-every", "2", "--val-episodes", "2", "--test-episodes",
                             "2", "--learner", "triplet", "--margin", "0.3", "--miner", "batch-hard",
                             "--data-root", str(data_root), "--output", str(output)])
    assert code == 0, stderr
    saved = json.loads((output / "config.json").read_text())
    assert saved["learner_args"] == {"margin": 0.3, "miner": "batch-hard"} and "margin" not in saved


def test_checkpoints_whose_spec_holds_margin_and_miner_still_load(tiny_run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_run / "best.pt")
    old_spec = {**state["spec"], "learner": "triplet", "metric": "euclidean", "normalize": True,
                "margin": 0.25, "miner": "semi-hard"}
    spec = spec_from_state({"spec": old_spec}, "old.pt")
    assert spec.learner_args == {"margin": 0.25, "miner": "semi-hard"}


def test_augmentations_and_schedules_are_registries_the_cli_offers() -> None:
    assert isinstance(AUGMENTATIONS, Registry) and isinstance(SCHEDULES, Registry)
    assert list(SCHEDULES) == ["step", "cosine", "none"]

    @SCHEDULES.register("test-constant")
    def constant(optimizer: torch.optim.Optimizer, episodes: int, lr_step: int,
                 lr_gamma: float) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    try:
        args = build_parser().parse_args(["--schedule", "test-constant"])
        assert args.schedule == "test-constant"
    finally:
        SCHEDULES.unregister("test-constant")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--schedule", "test-constant"])


def test_flags_left_out_do_not_override_the_file() -> None:
    given = vars(build_parser(given_only=True).parse_args(["--ways", "3", "--freeze-backbone"]))
    assert given == {"ways": 3, "freeze_backbone": True}

