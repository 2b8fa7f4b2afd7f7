"""Using a trained embedding (fewshot.search, fewshot.verification, fewshot.clustering and their API methods) on a
small generated Omniglot: index and search, save / load, faiss, calibration, verify, identify, cluster, anomaly
scores, the command line, and the bad input each refuses."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fewshot.inference.exact
import fewshot.inference.index
from fewshot.inference.ann import faiss_available
from fewshot.inference.classifier import TrainedModel, load
from fewshot.model.checkpoint import load_checkpoint, save_checkpoint
from fewshot.cli.search import main as search_main
from fewshot.distances import build_distance
from fewshot.learners.base import SquareRoot
from fewshot.learners.proxies import CosineScore
from fewshot.learners.proxy_nca import NormalizedScaled
from fewshot.inference.index import Index
from fewshot.inference.exact import exact_search
from fewshot.distances import metric_space
from fewshot.training import TrainConfig, train
from fewshot.api import calibrate, calibrate_checkpoint
from fewshot.evaluation.calibration import CHECKPOINT_KEY, operating_point, store_calibration

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed (the 'search' extra)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """best.pt of a tiny protonet run on the generated Omniglot (always generated: fast with or without real data)."""
    output = tmp_path_factory.mktemp("search") / "run"
    train(TrainConfig(train_ways=5, queries=2, eval_queries=5, episodes=20, val_every=20, val_episodes=2,
                      test_episodes=2, data_root=str(synthetic_root), output=str(output), threads=1), progress=False)
    state = load_checkpoint(output / "best.pt")
    assert CHECKPOINT_KEY in state  # training stores its threshold; these tests start from a checkpoint without one
    del state[CHECKPOINT_KEY]
    save_checkpoint(output / "uncalibrated.pt", state)
    return output / "uncalibrated.pt"


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """The generated evaluation alphabets as PNG files: <alphabet>/<character>/<id>.png (12 characters x 20)."""
    folder = tmp_path_factory.mktemp("gallery")
    with zipfile.ZipFile(synthetic_root / "omniglot" / "images_evaluation.zip") as archive:
        archive.extractall(folder, members=[n for n in archive.namelist() if n.endswith(".png")])
    return folder / "images_evaluation"


@pytest.fixture(scope="module")
def model(checkpoint: Path):
    return load(checkpoint)


@pytest.fixture(scope="module")
def calibrated(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkpoint with its calibration stored (the training hook)."""
    copy = tmp_path_factory.mktemp("calibrated") / "best.pt"
    copy.write_bytes(checkpoint.read_bytes())
    calibrate_checkpoint(copy, far=0.05, pairs=4000)
    return copy


def classes_of(folder: Path) -> dict[str, list[Path]]:
    return {f"{a.name}/{c.name}": sorted(c.glob("*.png")) for a in sorted(folder.iterdir()) for c in sorted(a.iterdir())}


# --------------------------------------------------------------------------------------------
# Metric and exact search
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: build_distance("euclidean", 6),
    lambda: build_distance("mahalanobis-diag", 6),
    lambda: build_distance("mahalanobis-lowrank", 6, rank=3),
    lambda: build_distance("cosine", 6, temperature=4.0),
    lambda: SquareRoot(build_distance("mahalanobis", 6)),
    lambda: NormalizedScaled(build_distance("euclidean", 6), 9.0),
    lambda: CosineScore(torch.tensor(3.0)),
])
def test_metric_space_reproduces_the_distance(make) -> None:
    distance = make()
    generator = torch.Generator().manual_seed(0)
    for parameter in getattr(distance, "parameters", lambda: [])():
        parameter.data = torch.rand(parameter.shape, generator=generator) + 0.5
    x, y = torch.randn(7, 6, generator=generator), torch.randn(5, 6, generator=generator)
    space = metric_space(distance)
    tx, ty = space.transform(x), space.transform(y)
    raw = (tx[:, None] - ty[None]).pow(2).sum(-1) if space.kind == "l2" else tx @ ty.T
    torch.testing.assert_close(space.to_distance(raw), distance(x, y).detach(), rtol=1e-4, atol=1e-4)
    assert metric_space(lambda a, b: torch.cdist(a, b, p=1)) is None  # unknown: exact search only


def test_exact_search_in_blocks_equals_one_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    gallery, queries = torch.randn(503, 8, generator=generator), torch.randn(37, 8, generator=generator)
    distance = build_distance("euclidean", 8)
    expected = torch.sort(distance(queries, gallery), dim=1, stable=True)
    monkeypatch.setattr(fewshot.inference.exact, "BLOCK_ELEMENTS", 37 * 50)  # 11 gallery blocks
    monkeypatch.setattr(fewshot.inference.exact, "QUERY_CHUNK", 16)
    d, i = exact_search(distance, queries, gallery, 9)
    assert torch.equal(i, expected.indices[:, :9])
    torch.testing.assert_close(d, expected.values[:, :9])
    _, left_out = exact_search(distance, gallery[:5], gallery, 3, exclude=torch.arange(5))
    assert not (left_out == torch.arange(5)[:, None]).any()


# --------------------------------------------------------------------------------------------
# Index, search, save / load
# --------------------------------------------------------------------------------------------


def test_index_a_folder_streams_batches_and_search_finds_the_model_neighbours(model, gallery: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    embed = model.model.embed
    monkeypatch.setattr(model.model, "embed", lambda x: (sizes.append(len(x)), embed(x))[1])
    index = model.index(gallery, batch_size=16, progress=False)
    monkeypatch.undo()
    classes = classes_of(gallery)
    assert len(index) == 240 and max(sizes) <= 16  # never more than one batch of images at a time
    assert set(index.labels) == set(classes) and index.items[0].endswith(".png")
    paths = [path for files in classes.values() for path in files]
    torch.testing.assert_close(index.embeddings, model.embed(paths), rtol=0, atol=1e-5)

    queries = [paths[3], paths[100]]
    result = index.search(queries, k=4)
    distances = model.model.learner.scoring_distance(model.embed(queries), index.embeddings)
    expected = torch.sort(distances, dim=1, stable=True)
    assert torch.equal(result.indices, expected.indices[:, :4])
    torch.testing.assert_close(result.distances, expected.values[:, :4])
    assert result.items[0][0] == str(paths[3].resolve()) and float(result.distances[0, 0]) < 1e-4
    item, label, distance = result.neighbours(1)[0]
    assert label == index.labels[result.indices[1, 0]] and isinstance(distance, float)
    # A generator (no length) and a list give the same index.
    again = model.index((path for path in paths[:20]), labels=[1] * 20, progress=False)
    torch.testing.assert_close(again.embeddings, index.embeddings[:20])


def test_index_save_and_load_round_trip_weights_only(model, gallery: Path, tmp_path: Path) -> None:
    index = model.index(gallery, progress=False)
    path = index.save(tmp_path / "g.index")
    raw = torch.load(path, weights_only=True)  # plain tensors and dicts only
    assert raw["meta"]["checkpoint_sha256"] == model.checkpoint_sha256
    loaded = model.load_index(path)
    assert torch.equal(loaded.embeddings, index.embeddings) and loaded.labels == index.labels
    assert loaded.items == index.items
    query = [Path(index.items[7])]
    assert torch.equal(loaded.search(query, 3).indices, index.search(query, 3).indices)


def test_an_index_of_another_checkpoint_is_refused(model, checkpoint: Path, calibrated: Path, gallery: Path,
                                                   tmp_path: Path) -> None:
    path = model.index(gallery, progress=False).save(tmp_path / "g.index")
    state = load_checkpoint(checkpoint)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 0.01
    other = save_checkpoint(tmp_path / "other.pt", state)
    with pytest.raises(ValueError, match=r"built by another checkpoint .*not comparable"):
        load(other).load_index(path)
    # The same weights with a stored calibration (a different file) embed alike: accepted.
    assert len(load(calibrated).load_index(path)) == len(model.load_index(path))


def test_bad_gallery_and_query_input_is_refused_clearly(model, gallery: Path, tmp_path: Path) -> None:
    index = model.index(gallery, progress=False)
    query = [Path(index.items[0])]
    with pytest.raises(ValueError, match=r"k=241 exceeds the 240 item\(s\) of the gallery"):
        index.search(query, k=241)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(query, k=0)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images under .*empty"):
        model.index(empty, progress=False)
    with pytest.raises(ValueError, match="empty gallery"):
        Index(model, torch.zeros(0, 64), [])
    with pytest.raises(ValueError, match="no images given .*the gallery would be empty"):
        model.index([], progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.index(tmp_path / "nowhere", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    good = Path(index.items[0])
    (broken / "good.png").write_bytes(good.read_bytes())
    (broken / "bad1.png").write_text("not a PNG")
    (broken / "bad2.png").write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"2 image\(s\) could not be read: .*bad1.png.*bad2.png"):
        model.index(broken, progress=False)
    with pytest.warns(UserWarning, match=r"left out 2 image\(s\)"):
        assert len(model.index(broken, progress=False, skip_unreadable=True)) == 1
    with pytest.raises(ValueError, match=r"images have shape \[2, 3, 28, 28\]; this model takes .*1 channel"):
        model.index(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), progress=False)
    with pytest.raises(TypeError, match="not a single image"):
        model.index(str(good), progress=False)
    with pytest.raises(ValueError, match="labels come from the class folders"):
        model.index(gallery, labels=["a"], progress=False)
    with pytest.raises(ValueError, match="got 3 images but 2 labels"):
        model.index([good] * 3, labels=["a", "b"], progress=False)
    with pytest.raises(ValueError, match="cannot save label"):
        model.index([good], labels=[("a", 1)], progress=False).save(tmp_path / "x.index")
    with pytest.raises(ValueError, match="not a fewshot index"):
        torch.save({"a": 1}, tmp_path / "foreign.index")
        model.load_index(tmp_path / "foreign.index")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.load_index(tmp_path / "missing.index")


@needs_faiss
@pytest.mark.parametrize("kind, settings", [("ivf", {"nlist": 4, "nprobe": 2}), ("hnsw", {"m": 8})])
def test_faiss_index_reports_measured_recall_and_survives_save(model, gallery: Path, tmp_path: Path, kind: str,
                                                              settings: dict) -> None:
    index = model.index(gallery, progress=False, ann=kind, **settings)
    recall = index.ann_recall
    assert recall["k"] == 10 and recall["queries"] == 240 and 0.0 < recall["recall"] <= 1.0
    assert index.measure_recall()["recall"] == pytest.approx(recall["recall"])
    query = [Path(index.items[5]), Path(index.items[150])]
    approximate, exact = index.search(query, 5), index.search(query, 5, exact=True)
    # Distances of what faiss finds are the model's own distances of those items.
    truth = model.model.learner.scoring_distance(model.embed(query), index.embeddings)
    torch.testing.assert_close(approximate.distances, truth.gather(1, approximate.indices), rtol=1e-4, atol=1e-4)
    assert torch.equal(approximate.indices[:, 0], exact.indices[:, 0])
    loaded = model.load_index(index.save(tmp_path / "ann.index"))
    assert loaded.ann_settings.kind == kind and loaded.ann_recall == recall
    assert torch.equal(loaded.search(query, 5).indices, approximate.indices)
    if kind == "ivf":
        loaded.set_search_params(nprobe=4)  # every cell: exact
        assert loaded.measure_recall()["recall"] == pytest.approx(1.0)
        with pytest.raises(ValueError, match="nprobe applies to an IVF index"):
            model.index(gallery, progress=False, ann="hnsw").set_search_params(nprobe=3)


# --------------------------------------------------------------------------------------------
# Calibration and verification
# --------------------------------------------------------------------------------------------


def test_calibrate_chooses_thresholds_at_the_far_on_validation_classes(model) -> None:
    calibration = calibrate(model, far=0.1, pairs=4000)
    pair, open_set = calibration["pair"], calibration["open_set"]
    assert calibration["far"] == 0.1 and calibration["data"]["classes"] == 24  # the generated val split
    assert pair["far_measured"] <= 0.1 and pair["pairs"] == 4000 and pair["same"] == 2000
    rejected = pair["rejected_scores"].double().numpy()
    assert np.mean(rejected >= pair["threshold"]) == pytest.approx(pair["far_measured"])
    assert open_set["far_measured"] <= 0.1 and open_set["known_classes"] == 12 and open_set["shots"] == 5
    strict, loose = operating_point(calibration, "pair", 0.01), operating_point(calibration, "pair", 0.3)
    assert strict["threshold"] >= pair["threshold"] >= loose["threshold"]
    assert operating_point(calibration, "pair")["threshold"] == pair["threshold"]
    assert calibrate(model, far=0.1, pairs=4000)["pair"]["threshold"] == pair["threshold"]  # seeded
    with pytest.raises(ValueError, match=r"far \(false accept rate\) must be a number in \(0, 1\)"):
        calibrate(model, far=1.5)


def test_load_uses_the_stored_threshold_else_calibrates_once_and_says_so(checkpoint: Path, calibrated: Path,
                                                                         gallery: Path) -> None:
    state = torch.load(calibrated, weights_only=True)
    assert state[CHECKPOINT_KEY]["far"] == 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stored threshold: no calibration, no warning
        stored = load(calibrated)
        assert stored.calibration["pair"]["threshold"] == state[CHECKPOINT_KEY]["pair"]["threshold"]
    fresh = load(checkpoint)
    with pytest.warns(UserWarning, match="stores no verification threshold; choosing one now"):
        first = fresh.calibration
    assert fresh.calibration is first  # once per load


def test_verify_a_pair_and_a_batch_of_pairs(calibrated: Path, gallery: Path) -> None:
    model = load(calibrated)
    classes = list(classes_of(gallery).values())
    same = model.verify(classes[0][0], classes[0][0])
    assert same.same is True and same.distance == pytest.approx(0.0, abs=1e-4) and same.far == 0.05
    assert isinstance(same.score, float) and same.threshold == model.calibration["pair"]["threshold"]
    a, b = classes[0][:6] + classes[1][:6], classes[0][6:12] + classes[2][:6]
    batch = model.verify(a, b)
    assert batch.same.shape == (12,) and batch.same.dtype == torch.bool
    assert torch.equal(batch.same, batch.score >= batch.threshold)
    assert batch.same[:6].float().mean() > batch.same[6:].float().mean()
    strict = model.verify(a, b, far=0.001)
    assert strict.far == 0.001 and strict.threshold >= batch.threshold
    with pytest.raises(ValueError, match="got 2 images in a and 1 in b"):
        model.verify(a[:2], b[:1])
    with pytest.raises(TypeError, match="two images, or two lists"):
        model.verify(a[0], b[:2])


# --------------------------------------------------------------------------------------------
# Open set, anomalies, clustering
# --------------------------------------------------------------------------------------------


def test_identify_answers_unknown_beyond_the_threshold(calibrated: Path, gallery: Path) -> None:
    model = load(calibrated)
    classes = classes_of(gallery)
    names = list(classes)
    known, unknown = names[:6], names[6:]
    support = [p for name in known for p in classes[name][:5]]
    labels = [name for name in known for _ in range(5)]
    queries = [p for name in known for p in classes[name][5:8]] + [p for name in unknown for p in classes[name][:3]]
    result = model.identify(support, labels, queries)
    assert len(result.labels) == len(queries) and set(result.labels) <= set(known) | {"unknown"}
    assert result.max_distance == pytest.approx(-model.calibration["open_set"]["threshold"])
    assert torch.equal(result.accepted, result.distances <= result.max_distance)
    assert all(label == "unknown" for label, ok in zip(result.labels, result.accepted.tolist()) if not ok)
    everything = model.identify(support, labels, queries, max_distance=float("inf"))
    assert everything.labels == everything.nearest == result.nearest
    assert model.identify(support, labels, queries, max_distance=-1.0).labels == ["unknown"] * len(queries)
    # A labelled index (or folder) is a support set too, with the same prototypes.
    index = model.index(support, labels=labels, progress=False)
    assert model.identify(index, None, queries).labels == result.labels
    with pytest.raises(ValueError, match="'unknown' is one of the support labels"):
        model.identify(support, ["unknown"] * len(support), queries)
    with pytest.raises(ValueError, match="the support needs labels"):
        model.identify(support, None, queries)


def test_anomaly_scores_are_distances_to_the_nearest_prototype_or_item(model, gallery: Path) -> None:
    classes = classes_of(gallery)
    names = list(classes)
    reference = [p for name in names[:6] for p in classes[name][:10]]
    labels = [name for name in names[:6] for _ in range(10)]
    inside = [p for name in names[:6] for p in classes[name][10:12]]
    outside = [p for name in names[6:] for p in classes[name][:2]]
    by_prototype = model.anomaly_scores(reference, inside + outside, labels=labels)
    assert by_prototype.shape == (24,) and by_prototype[:12].mean() < by_prototype[12:].mean()
    index = model.index(reference, progress=False)
    nearest_item = model.anomaly_scores(index, inside + outside)
    torch.testing.assert_close(nearest_item, index.search(inside + outside, 1).distances[:, 0])
    torch.testing.assert_close(index.anomaly_scores(inside + outside), nearest_item)
    with pytest.raises(ValueError, match="needs labels"):
        model.anomaly_scores(reference, inside, rule="prototype")


def test_cluster_with_and_without_the_number_of_clusters(model, gallery: Path) -> None:
    classes = classes_of(gallery)
    images = [p for name in list(classes)[:4] for p in classes[name][:10]]
    given = model.cluster(images, n_clusters=4)
    assert given.n_clusters == 4 and given.labels.shape == (40,) and set(given.labels) == {0, 1, 2, 3}
    assert not given.estimated and given.items[0] == str(images[0].resolve())
    estimated = model.cluster(images, max_clusters=8)
    assert estimated.estimated and sorted(estimated.candidates) == list(range(2, 9))
    assert estimated.n_clusters == max(estimated.candidates, key=estimated.candidates.get)
    tree = model.cluster(images, n_clusters=4, method="agglomerative")
    assert len(set(tree.labels)) == 4
    assert np.array_equal(model.cluster(images, n_clusters=4).labels, given.labels)  # seeded
    with pytest.raises(ValueError, match=r"n_clusters must be an int in \[1, 40\]"):
        model.cluster(images, n_clusters=41)
    with pytest.raises(ValueError, match="unknown clustering method"):
        model.cluster(images, method="dbscan")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def test_cli_build_query_verify_calibrate(checkpoint: Path, gallery: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    index_path = tmp_path / "g.index"
    assert search_main(["build", str(checkpoint), str(gallery), "--out", str(index_path), "--no-progress"]) == 0
    assert "indexed 240 images (12 classes)" in capsys.readouterr().out
    queries = sorted((gallery / sorted(p.name for p in gallery.iterdir())[0]).glob("*/*.png"))[:2]
    sheet = tmp_path / "sheet.png"
    assert search_main(["query", str(index_path), *map(str, queries), "-k", "3", "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n    1 ") == 2 and "contact sheet" in out and str(queries[0].resolve()) in out
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.size[0] > 400
    assert search_main(["query", str(index_path), str(queries[0]), "-k", "999"]) == 2
    assert "k=999 exceeds the 240 item(s)" in capsys.readouterr().err

    copy = tmp_path / "copy.pt"
    copy.write_bytes(checkpoint.read_bytes())
    assert search_main(["calibrate", str(copy), "--far", "0.1", "--write"]) == 0
    assert "stored in" in capsys.readouterr().out and CHECKPOINT_KEY in torch.load(copy, weights_only=True)
    assert search_main(["verify", str(copy), str(queries[0]), str(queries[0]), "--far", "0.2"]) == 0
    assert capsys.readouterr().out.startswith("same: distance 0.0000")

    state = load_checkpoint(checkpoint)
    state["model"] = {k: v + 0.5 if v.is_floating_point() else v for k, v in state["model"].items()}
    other = save_checkpoint(tmp_path / "other.pt", state)
    assert search_main(["query", str(index_path), str(queries[0]), "--checkpoint", str(other)]) == 2
    assert "built by another checkpoint" in capsys.readouterr().err


def test_store_calibration_refuses_what_calibrate_did_not_write(checkpoint: Path, model, tmp_path: Path) -> None:
    copy = tmp_path / "c.pt"
    copy.write_bytes(checkpoint.read_bytes())
    with pytest.raises(ValueError, match="no calibration written by fewshot.verification.calibrate"):
        store_calibration(copy, {"threshold": 1.0})
    bare = TrainedModel(model.model, "omniglot")  # not from a checkpoint: no validation classes known
    with pytest.raises(ValueError, match="not loaded from a checkpoint"):
        bare.verify(__file__, __file__)


@needs_faiss
def test_an_approximate_index_loads_without_faiss_and_searches_exactly(model, gallery: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = model.index(gallery, progress=False, ann="ivf", nlist=4).save(tmp_path / "ann.index")
    monkeypatch.setattr(fewshot.inference.index, "faiss_available", lambda: False)
    with pytest.warns(UserWarning, match="faiss is not installed.*searching exactly"):
        loaded = model.load_index(path)
    assert loaded.ann_settings is None and loaded._faiss is None
    exact = model.index(gallery, progress=False)
    query = [Path(exact.items[9])]
    assert torch.equal(loaded.search(query, 5).indices, exact.search(query, 5).indices)


def test_search_embeddings_answers_as_search_does(model, gallery: Path) -> None:
    index = model.index(gallery, progress=False)
    query = [Path(index.items[5]), Path(index.items[150])]
    by_image = index.search(query, 4)
    by_embedding = index.search_embeddings(model.embed(query), 4)
    assert torch.equal(by_embedding.indices, by_image.indices)
    torch.testing.assert_close(by_embedding.distances, by_image.distances)
    assert by_embedding.items == by_image.items and by_embedding.labels == by_image.labels
    assert by_embedding.queries == ["#0", "#1"]
    assert index.search_embeddings(model.embed(query), 4, names=["a", "b"]).queries == ["a", "b"]


@needs_faiss
def test_measure_recall_takes_images_or_embeddings(model, gallery: Path) -> None:
    index = model.index(gallery, progress=False, ann="ivf", nlist=4, nprobe=4)  # every cell visited: exact
    query = [Path(index.items[5]), Path(index.items[150])]
    by_image = index.measure_recall(queries=query, k=5)
    assert by_image == index.measure_recall(queries=model.embed(query), k=5)
    assert by_image["recall"] == pytest.approx(1.0) and by_image["queries"] == 2


def test_an_approximate_index_without_faiss_fails_before_embedding(model, checkpoint: Path, gallery: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def missing() -> None:
        raise ImportError("approximate search needs faiss: pip install 'fewshot[search]'")

    def embedded(*args, **kwargs):
        raise AssertionError("the gallery was embedded before the faiss check")

    monkeypatch.setattr(fewshot.inference.index, "import_faiss", missing)
    monkeypatch.setattr(fewshot.inference.index, "embed_stream", embedded)
    with pytest.raises(ImportError, match="needs faiss"):
        model.index(gallery, progress=False, ann="hnsw")
    code = search_main(["build", str(checkpoint), str(gallery), "--out", str(tmp_path / "x.index"), "--ann", "ivf"])
    assert code != 0 and "needs faiss" in capsys.readouterr().err
    assert not (tmp_path / "x.index").exists()
