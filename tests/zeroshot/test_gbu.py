"""The GBU protocol end to end on the real CUB and AWA2 splits, with features planted on the real class attributes
(the per-image res101.mat features are not available offline): a real-format res101.mat through the command line,
and the Python API. Without FEWSHOT_DATA the same command line runs on a synthetic folder in the same formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fewshot.zeroshot import (
    ZeroShotConfig,
    evaluate_zero_shot,
    load_attribute_splits,
)
from fewshot.cli.zeroshot import main
from tests.support.zeroshot_planted import load_planted_gbu, oracle_accuracy, write_planted_res101, write_synthetic_gbu


def test_cli_on_real_cub_with_planted_res101(gbu_root: Path, tmp_path: Path, capsys):
    """ESZSL (regularisers chosen on the three validation folds) through `python -m fewshot.zeroshot` on a
    real-format res101.mat planted on CUB's 312 real attributes: 50-way ZSL far above chance (2%) and within a
    few points of the Bayes classifier that knows the planted map."""
    splits = load_attribute_splits(gbu_root / "zsl" / "gbu" / "CUB")
    features = write_planted_res101(splits, tmp_path / "res101.mat", feature_dim=256, noise=1.5, seed=0)
    report_path = tmp_path / "report.json"
    code = main(["--dataset", "CUB", "--data-root", str(gbu_root), "--features", str(features), "--method", "eszsl",
                 "--shots", "0", "1", "--episodes", "100", "--validation-episodes", "50", "--output",
                 str(report_path), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ZSL top-1" in printed and "GZSL calibrated" in printed and "5-way 0-shot" in printed
    report = json.loads(report_path.read_text())
    assert report["dataset"]["seen_classes"] == 150 and report["dataset"]["unseen_classes"] == 50
    assert (report["dataset"]["trainval"], report["dataset"]["test_seen"], report["dataset"]["test_unseen"]) == (
        7057, 1764, 2967)
    assert report["validation"]["folds"] == 3 and "eszsl" in report["validation"]
    # The same planted map, in memory, gives the Bayes classifier's accuracy.
    data, mapping = load_planted_gbu("CUB", gbu_root, noise=1.5, feature_dim=256, seed=0)
    oracle = oracle_accuracy(data, mapping)
    assert oracle > 0.9 and report["zsl_top1"] > oracle - 0.1
    gzsl, calibrated = report["gzsl"], report["gzsl_calibrated"]
    assert gzsl["u"] > 0.5 and gzsl["s"] > 0.5 and calibrated["H"] > 0.5
    zero, one = report["episodes"]
    assert zero["accuracy"] > 0.9 and 0 < zero["ci95"] < 0.05  # 5-way, chance 20%
    assert one["accuracy"] > one["support_only"]["accuracy"]  # attributes help a single noisy shot


def test_api_on_real_awa2_planted(gbu_root: Path):
    """Softmax compatibility on AWA2's real split (40 seen / 10 unseen, 85 attributes), one validation fold for the
    calibration; the real split sizes are checked on the way in."""
    data, mapping = load_planted_gbu("AWA2", gbu_root, noise=2.0, feature_dim=128, seed=0)
    assert (len(data.seen_classes), len(data.unseen_classes)) == (40, 10)
    assert (len(data.trainval), len(data.test_seen), len(data.test_unseen)) == (23527, 5882, 7913)
    report = evaluate_zero_shot(data, ZeroShotConfig(method="softmax", epochs=2, batch_size=512, lr=1e-2), folds=1,
                                shots=(0,), episodes=50, seed=0)
    oracle = oracle_accuracy(data, mapping)
    assert report["zsl_top1"] > max(0.5, oracle - 0.2), (report["zsl_top1"], oracle)  # chance is 10%
    assert report["gzsl_calibrated"]["H"] > 0.3 and report["validation"]["folds"] == 1


def test_cli_without_data_on_synthetic_folder(tmp_path: Path, capsys):
    """No FEWSHOT_DATA needed: a synthetic folder in the GBU formats, the hinge method, a fixed calibration."""
    write_synthetic_gbu(tmp_path / "TOY", num_classes=16, num_unseen=4, attribute_dim=12, feature_dim=32,
                        images_per_class=16, noise=0.5)
    output = tmp_path / "out" / "toy.json"
    assert main(["--dataset", "TOY", "--data-root", str(tmp_path), "--method", "ale", "--epochs", "20", "--lr", "0.01",
                 "--calibration", "0.05", "--fusion-weight", "0.5", "--shots", "0", "2", "--ways", "3", "--queries",
                 "3", "--episodes", "30", "--output", str(output), "--quiet"]) == 0
    report = json.loads(output.read_text())
    assert report["gzsl_calibrated"]["calibration"] == 0.05 and report["episodes"][1]["fusion_weight"] == 0.5
    assert report["validation"]["folds"] == 0  # nothing was chosen on validation classes
    assert report["command"][:3] == ["python", "-m", "fewshot.zeroshot"]
    assert report["zsl_top1"] > 0.4  # 4 unseen classes: chance 25%
    assert np.isfinite(report["gzsl"]["H"])


def test_cli_errors(tmp_path: Path, capsys):
    assert main(["--dataset", "NOPE", "--data-root", str(tmp_path), "--quiet"]) == 2
    assert "no att_splits.mat for 'NOPE'" in capsys.readouterr().err
    write_synthetic_gbu(tmp_path / "TOY")
    (tmp_path / "TOY" / "res101.mat").unlink()
    assert main(["--dataset", "TOY", "--data-root", str(tmp_path), "--quiet"]) == 2
    assert "res101.mat does not exist" in capsys.readouterr().err
    assert main(["--dataset", "TOY", "--data-root", str(tmp_path), "--encoder", "mlp", "--encoder-arg", "width=3"]) == 2
    assert "unknown --encoder-arg 'width'" in capsys.readouterr().err


@pytest.mark.parametrize(("folds", "message"), [
    ("0", "folds (--folds) must be a whole number >= 1 (how many validation folds to use), got 0"),
    ("-2", "folds (--folds) must be a whole number >= 1 (how many validation folds to use), got -2"),
    ("3", "folds (--folds) is 3, but TOY has 2 validation fold(s); use at most 2, or leave it out to use all"),
])
def test_cli_folds_outside_the_folds_the_data_has_are_refused(folds: str, message: str, tmp_path: Path, capsys):
    write_synthetic_gbu(tmp_path / "TOY", folds=2)
    assert main(["--dataset", "TOY", "--data-root", str(tmp_path), "--folds", folds, "--epochs", "1", "--episodes", "2",
                 "--output", str(tmp_path / "report.json"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()
