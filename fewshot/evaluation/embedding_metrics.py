"""Verification, retrieval and clustering metrics of a model's embeddings, with the model's own distance."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fewshot import metrics
from fewshot.data.splits import ClassSplit
from fewshot.evaluation.cache import SplitEmbeddings
from fewshot.evaluation.episodes import announce
from fewshot.metrics.verification import balanced_pairs
from fewshot.model.network import FewShotModel


def embed_split(model: FewShotModel, split: ClassSplit, device: torch.device,
                embeddings: SplitEmbeddings | None = None, progress: bool = False) -> torch.Tensor:
    """Embeddings [len(split), d] of every item of a split (eval mode), reusing `embeddings` where given."""
    items = np.arange(len(split))
    if embeddings is None or embeddings.split is not split or embeddings.model is not model:
        embeddings = SplitEmbeddings(model, split, device, progress=progress)
    embeddings.max_bytes = max(embeddings.max_bytes, 4 * len(split) * (embeddings.dim or 1))  # all items at once
    embeddings.ensure(items)
    return embeddings.rows(items).cpu()


@torch.no_grad()
def embedding_metrics(model: FewShotModel, val: ClassSplit, test: ClassSplit, device: torch.device,
                      pairs: int = 100_000, seed: int = 0, far: tuple[float, ...] = (1e-3, 1e-2, 1e-1),
                      test_embeddings: SplitEmbeddings | None = None, progress: bool = False) -> dict[str, Any]:
    """Verification (threshold chosen on validation classes), retrieval and clustering metrics on the test
    classes (`test_embeddings`: the test items the evaluation already embedded, reused).

    Clustering is k-means with k the number of test classes, seeded by `seed`, on the embeddings as
    the model outputs them (L2-normalised first when the model compares them by cosine), scored by
    NMI and AMI against the classes. `progress` shows the embedding bars and a line per phase.
    """
    distance = model.learner.pair_distance("embedding metrics (verification, retrieval, clustering)")
    rng = np.random.default_rng(seed)
    scores = {}
    for name, split in (("val", val), ("test", test)):
        embeddings = embed_split(model, split, device, test_embeddings if name == "test" else None, progress)
        labels = torch.from_numpy(split.labels)
        chosen = torch.from_numpy(balanced_pairs(split.labels, pairs, rng, fill=False))
        announce(f"embedding metrics: scoring {len(chosen)} {name} pairs", progress)
        scores[name] = metrics.pair_scores(embeddings, labels, distance=distance, pairs=chosen)
        if name == "test":
            test_embeddings, test_labels = embeddings, labels
    threshold = metrics.choose_threshold(*scores["val"], criterion="eer")
    test_scores, test_same = scores["test"]
    eer, _ = metrics.equal_error_rate(test_scores, test_same)
    announce(f"embedding metrics: retrieval over {len(test_labels)} test images", progress)
    retrieval = {
        "items": int(len(test_labels)),
        "recall_at_1": metrics.recall_at_k(test_embeddings, test_labels, k=1, distance=distance),
        "r_precision": metrics.r_precision(test_embeddings, test_labels, distance=distance),
        "map_at_r": metrics.map_at_r(test_embeddings, test_labels, distance=distance),
    }
    announce(f"embedding metrics: k-means clustering of {len(test_labels)} test images into {test.num_classes} "
             "clusters", progress)
    return {
        "verification": {
            "pairs": int(len(test_scores)),
            "roc_auc": metrics.roc_auc(test_scores, test_same),
            "eer": eer,
            "tar_at_far": {str(f): metrics.tar_at_far(test_scores, test_same, f) for f in far},
            "threshold_from_val": float(threshold),
            "accuracy_at_val_threshold": metrics.verification_accuracy(test_scores, test_same, threshold),
        },
        "retrieval": retrieval,
        "clustering": _clustering(model, test_embeddings, test, seed),
    }


def _clustering(model: FewShotModel, embeddings: torch.Tensor, split: ClassSplit, seed: int) -> dict[str, Any]:
    """NMI and AMI of seeded k-means (k = the split's classes) on the split's embeddings."""
    # Cosine-scored models (cosine distance, the cosine-softmax losses' CosineScore) see only directions.
    cosine = model.spec.metric == "cosine"
    clusters = metrics.kmeans_clusters(embeddings, split.num_classes, seed=seed, normalize=cosine)
    scores = metrics.clustering_scores(split.labels, clusters)
    return {"method": "k-means", "k": split.num_classes, "seed": seed, "normalized": cosine,
            "items": int(len(split.labels)), "nmi": scores.nmi, "ami": scores.ami}
