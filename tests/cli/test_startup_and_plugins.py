"""Issue 28, items 4 and 7: every command's `--help` answers without importing torch, the catalogue the parsers
show equals the registries it mirrors, and `--import MODULE` brings a user's plug-in to train, evaluate and
search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.cli import COMMANDS
from fewshot.cli import catalogue
from fewshot.cli.evaluate import main as evaluate_main
from fewshot.cli.plugins import parse_with_plugins
from fewshot.cli.registries import REGISTRIES
from fewshot.cli.search import main as search_main
from fewshot.cli.train import build_parser
from fewshot.cli.train import main as train_main
from fewshot.distances import DISTANCES
from fewshot.evaluation import EVAL_SPLITS
from fewshot.learners import LEARNERS
from fewshot.training import PRECISIONS, SAMPLINGS, TrainConfig
from fewshot.training.settings import TRAIN_SPLITS
from fewshot.zeroshot.gbu import ATTRIBUTE_KEYS, GBU_DATASETS
from fewshot.zeroshot.methods import FEATURE_NORMS, SCORES, ZeroShotConfig
from tests.cli.test_folder import TINY
from tests.support.synthetic import write_image_folder

ROOT = Path(__file__).resolve().parents[2]

#: Each command's --help, through the dispatcher and through its own module.
HELP_COMMANDS = [("-m", "fewshot", name, "--help") for name in COMMANDS] + [
    ("-m", f"fewshot.cli.{name}", "--help") for name in COMMANDS] + [
    ("-m", f"fewshot.{name}", "--help") for name in ("train", "evaluate", "search", "recipe")]


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=" ".join)
def test_help_does_not_import_torch(argv: tuple[str, ...]) -> None:
    # What makes --help fast is that torch is never imported; its time is measured, not asserted (a timed test
    # would fail on a loaded machine): docs/api.md gives the figures.
    probe = ("import runpy, sys\n"
             f"sys.argv = {[argv[1], *argv[2:]]!r}\n"
             "try:\n"
             f"    runpy.run_module({argv[1]!r}, run_name='__main__', alter_sys=True)\n"
             "except SystemExit as stop:\n"
             "    assert stop.code in (0, None), stop.code\n"
             "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and result.stdout.rstrip().endswith("NO TORCH"), result.stdout[-300:]
    direct = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT)
    assert direct.returncode == 0 and "usage:" in direct.stdout, direct.stderr


#: Prints, in a fresh process (no test's plug-ins), what the package itself registers.
BUILT_IN_PROBE = """
import json
from fewshot.cli.registries import REGISTRIES
print(json.dumps({"names": {kind: list(registry) for kind, registry in REGISTRIES.items()},
                  "schemes": {name: list(info.schemes) for name, info in REGISTRIES["dataset"].items()},
                  "recipes": {name: recipe.description for name, recipe in REGISTRIES["recipe"].items()}}))
"""


def test_the_catalogue_equals_the_registries_and_configs() -> None:
    """The names --help shows are what the package registers: a built-in added to a registry (or renamed) without
    its catalogue entry fails here."""
    result = subprocess.run([sys.executable, "-c", BUILT_IN_PROBE], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout)
    assert {kind: tuple(names) for kind, names in registered["names"].items()} == catalogue.BUILT_IN
    assert {name: tuple(schemes) for name, schemes in registered["schemes"].items()} == catalogue.DATASET_SCHEMES
    assert registered["recipes"] == catalogue.RECIPE_DESCRIPTIONS
    assert set(REGISTRIES) == set(catalogue.BUILT_IN)
    assert catalogue.PRECISIONS == tuple(PRECISIONS) and catalogue.SAMPLINGS == tuple(SAMPLINGS)
    assert catalogue.TRAIN_SPLITS == tuple(TRAIN_SPLITS) and catalogue.EVAL_SPLITS == tuple(EVAL_SPLITS)
    assert catalogue.ATTRIBUTE_KEYS == tuple(ATTRIBUTE_KEYS) and catalogue.GBU_DATASETS == tuple(GBU_DATASETS)
    assert catalogue.FEATURE_NORMS == tuple(FEATURE_NORMS) and catalogue.SCORES == tuple(SCORES)
    train_defaults = TrainConfig().to_dict()
    assert {key: train_defaults[key] for key in vars(catalogue.TRAIN_DEFAULTS)} == vars(catalogue.TRAIN_DEFAULTS)
    zeroshot_defaults = vars(ZeroShotConfig())
    assert {key: zeroshot_defaults[key] for key in vars(catalogue.ZEROSHOT_DEFAULTS)} == \
        vars(catalogue.ZEROSHOT_DEFAULTS)


PLUGIN = '''
import torch

from fewshot.distances import DISTANCES, SquaredEuclidean


@DISTANCES.register("plugin-halved-euclidean")
class HalvedEuclidean(SquaredEuclidean):
    """Half the squared Euclidean distance: a test plug-in."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * super().forward(a, b)
'''


@pytest.fixture()
def plugin(tmp_path: Path):
    path = tmp_path / "my_plugin.py"
    path.write_text(PLUGIN)
    yield path
    if "plugin-halved-euclidean" in DISTANCES:
        DISTANCES.unregister("plugin-halved-euclidean")
    sys.modules.pop("my_plugin", None)


def test_a_plugin_distance_trains_evaluates_and_searches_through_import(plugin: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    folder = write_image_folder(tmp_path / "shapes", classes=15, per_class=8, size=32)
    output = tmp_path / "run"
    assert train_main(["--import", str(plugin), "--metric", "plugin-halved-euclidean", "--dataset", "folder",
                       "--data-root", str(folder), "--output", str(output), "--episodes", "10", *TINY]) == 0, \
        capsys.readouterr().err
    best = output / "best.pt"
    evaluate = [str(best), "--ways", "3", "--queries", "2", "--episodes", "2", "--no-progress",
                "--report", str(tmp_path / "report.json")]
    assert evaluate_main([*evaluate, "--import", str(plugin)]) == 0, capsys.readouterr().err
    assert search_main(["build", str(best), str(folder), "--out", str(tmp_path / "index.pt"), "--no-progress",
                        "--import", str(plugin)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    # A fresh process without --import does not know the plug-in: the error names it and the flag.
    result = subprocess.run([sys.executable, "-m", "fewshot", "evaluate", *evaluate], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "plugin-halved-euclidean" in result.stderr and "--import" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_plugin_name_is_refused_before_parsing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        train_main(["--import", "no_such_plugin_module_xyz", "--ways", "3"])
    assert stopped.value.code == 2
    assert "--import no_such_plugin_module_xyz: no module named 'no_such_plugin_module_xyz'" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(SystemExit) as stopped:
        evaluate_main(["best.pt", "--import", str(broken)])
    assert stopped.value.code == 2
    assert f"--import {broken}: importing it failed: RuntimeError: boom" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["best.pt", "--import", str(tmp_path / "missing.py")])
    assert "missing.py: no such file" in capsys.readouterr().err


LEARNER_PLUGIN = '''
import torch.nn.functional as F

from fewshot.learners import Learner, register_learner


@register_learner("plugin-centre")
class PluginCentre(Learner):
    """Prototypical loss under another name: a test plug-in imported by module name."""

    def loss(self, batch, generator):
        return F.cross_entropy(batch.logits, batch.query_labels)
'''


def test_a_plugin_module_name_is_imported_from_the_working_directory(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_centre_plugin.py").write_text(LEARNER_PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", str(tmp_path))])
    try:
        args = parse_with_plugins(build_parser(), ["--learner", "plugin-centre", "--import", "my_centre_plugin"])
        assert args.learner == "plugin-centre" and args.plugins == ["my_centre_plugin"]
    finally:
        if "plugin-centre" in LEARNERS:
            LEARNERS.unregister("plugin-centre")
        sys.modules.pop("my_centre_plugin", None)
    with pytest.raises(SystemExit) as stopped:  # unregistered again: argparse refuses it with the valid names
        build_parser().parse_args(["--learner", "plugin-centre"])
    assert stopped.value.code == 2
