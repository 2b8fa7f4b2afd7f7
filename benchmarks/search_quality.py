"""Verification, open-set identification, anomaly scores and clustering of a trained checkpoint on Omniglot novel
(test) classes, with the thresholds chosen on its validation classes (the figures of docs/search.md).

    FEWSHOT_DATA=/path/to/data python -m benchmarks.search_quality runs/proto/best.pt [--far 0.001 0.01 0.1]

- Verification: 100,000 balanced pairs of novel-class images; at each threshold chosen on validation classes for a
  false accept rate (FAR), the FAR and true accept rate (TAR) measured on the novel pairs, with the 95% binomial
  half-width of the measured FAR.
- Open set: half the novel classes known (`--shots` support images each, their other images known queries), half
  unknown (all their images queries); AUROC of known versus unknown (score: -distance to the nearest prototype),
  closed-set accuracy on known queries, and at each calibrated threshold the unknowns accepted and the known queries
  accepted with the right class. Known / unknown are drawn per class (a rotation of a character is a class, as in
  the Vinyals split) and, as a harder-to-cheat variant, per character (all four rotations on one side).
- Anomaly scores: the same AUROC with the distance to the nearest support image instead of the nearest prototype.
- Clustering: `model.cluster` on 20 random novel classes (400 images), the number of clusters estimated by the
  silhouette and given, scored by adjusted Rand index and NMI against the classes.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fewshot import metrics
from fewshot.api import calibrate, load, operating_point
from fewshot.evaluation import check_novel, checkpoint_splits, embed_split
from fewshot.learners.base import prototypes
from fewshot.metrics.verification import balanced_pairs


def open_set_split(labels: np.ndarray, groups: np.ndarray, shots: int, rng: np.random.Generator, inside: np.ndarray):
    """Known / unknown halves of the groups (classes, or characters) of the items `inside`, support and query rows."""
    chosen = rng.permutation(np.unique(groups[inside]))
    known_groups = set(chosen[: len(chosen) // 2].tolist())
    class_group = {c: g for c, g in zip(labels, groups)}
    known = np.array(sorted(c for c in np.unique(labels[inside]) if class_group[c] in known_groups))
    support, known_queries = [], []
    for c in known:
        rows = rng.permutation(np.flatnonzero(labels == c))
        support.append(rows[:shots])
        known_queries.append(rows[shots:])
    unknown_queries = np.flatnonzero(inside & ~np.isin(labels, known))
    return known, np.concatenate(support), np.concatenate(known_queries), unknown_queries


def nearest(distance, queries: torch.Tensor, centres: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    best, which = [], []
    with torch.no_grad():
        for start in range(0, len(queries), 4096):
            d, i = distance(queries[start:start + 4096], centres).min(dim=1)
            best.append(d)
            which.append(i)
    return torch.cat(best).double().numpy(), torch.cat(which).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--far", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON of every figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"checkpoint": args.checkpoint, "shots": args.shots, "seed": args.seed}

    model = load(args.checkpoint)
    started = time.perf_counter()
    calibration = calibrate(model, far=args.far[0], pairs=args.pairs, shots=args.shots, seed=args.seed)
    report["calibration_seconds"] = time.perf_counter() - started
    splits = checkpoint_splits(model.state_info, image_size=model.model.spec.image_size)
    test = splits.test
    check_novel(model.state_info, splits.dataset, test, "test", allow_seen=False)
    embeddings = embed_split(model.model, test, model.device)
    labels = test.labels
    distance = model.model.learner.scoring_distance
    data = calibration["data"]
    print(f"{args.checkpoint}: thresholds chosen on {data['classes']} validation classes ({data['items']} images) in "
          f"{report['calibration_seconds']:.1f} s; novel classes: {test.num_classes} ({len(test)} images)\n")

    # ---- verification -------------------------------------------------------------------------
    rng = np.random.default_rng(args.seed + 1)  # other pairs than calibration drew
    pairs = torch.from_numpy(balanced_pairs(labels, args.pairs, rng))
    scores, same = metrics.pair_scores(embeddings, torch.from_numpy(labels), distance=distance, pairs=pairs)
    negatives, positives = scores[~same], scores[same]
    rows = []
    print("| FAR chosen (val) | FAR on val | FAR on novel (95% half-width) | novel / chosen | TAR on novel |")
    print("|---|---|---|---|---|")
    for far in args.far:
        point = operating_point(calibration, "pair", far)
        novel_far = float(np.mean(negatives >= point["threshold"]))
        half = 1.96 * np.sqrt(max(novel_far * (1 - novel_far), 1e-12) / len(negatives))
        tar = float(np.mean(positives >= point["threshold"]))
        rows.append({"far": far, "val_far": point["far_measured"], "novel_far": novel_far, "novel_far_ci95": half,
                     "novel_tar": tar, "val_tar": point["tar"], "threshold": point["threshold"]})
        print(f"| {far:g} | {point['far_measured']:.4f} | {novel_far:.4f} ± {half:.4f} | {novel_far / far:.2f} | "
              f"{tar:.4f} |")
    report["verification"] = {"pairs": int(len(scores)), "roc_auc": metrics.roc_auc(scores, same),
                              "eer": metrics.equal_error_rate(scores, same)[0], "operating_points": rows}
    print(f"\nnovel pairs: {len(scores)}, ROC-AUC {report['verification']['roc_auc']:.4f}, "
          f"EER {report['verification']['eer']:.4f}\n")

    # ---- open set and anomaly scores ----------------------------------------------------------
    characters = np.array(["/".join(name.split("/")[:2]) for name in test.class_names])
    report["open_set"] = []
    print("| known / unknown drawn by | known classes | AUROC (prototype) | AUROC (nearest item) | closed-set acc. | "
          + " | ".join(f"FAR {f:g}: unknowns accepted / known right" for f in args.far) + " |")
    print("|---|---|---|---|---|" + "---|" * len(args.far))
    matched = 2 * calibration["open_set"]["known_classes"]
    subset = np.sort(np.random.default_rng(args.seed + 4).choice(test.num_classes, min(matched, test.num_classes),
                                                                   replace=False))
    variants = (("class", np.arange(test.num_classes), np.arange(test.num_classes)),
                ("character", characters, np.arange(test.num_classes)),
                (f"class, {len(subset)} novel classes (as many as calibrated on)", np.arange(test.num_classes), subset))
    for grouping, groups, classes in variants:
        rng = np.random.default_rng(args.seed + 2)
        inside = np.isin(labels, classes)
        known, support, known_q, unknown_q = open_set_split(labels, groups[labels], args.shots, rng, inside)
        relabel = np.full(test.num_classes, -1)
        relabel[known] = np.arange(len(known))
        centres = prototypes(embeddings[torch.from_numpy(support)], torch.from_numpy(relabel[labels[support]]),
                             len(known))
        known_d, known_pred = nearest(distance, embeddings[torch.from_numpy(known_q)], centres)
        unknown_d, _ = nearest(distance, embeddings[torch.from_numpy(unknown_q)], centres)
        correct = known_pred == relabel[labels[known_q]]
        is_known = np.r_[np.ones(len(known_d), bool), np.zeros(len(unknown_d), bool)]
        auroc = metrics.roc_auc(-np.r_[known_d, unknown_d], is_known)
        item_known, _ = nearest(distance, embeddings[torch.from_numpy(known_q)], embeddings[torch.from_numpy(support)])
        item_unknown, _ = nearest(distance, embeddings[torch.from_numpy(unknown_q)], embeddings[torch.from_numpy(support)])
        item_auroc = metrics.roc_auc(-np.r_[item_known, item_unknown], is_known)
        points = []
        for far in args.far:
            point = operating_point(calibration, "open_set", far)
            limit = -point["threshold"]
            points.append({"far": far, "max_distance": limit, "val_unknown_accepted": point["far_measured"],
                           "unknown_accepted": float(np.mean(unknown_d <= limit)),
                           "known_accepted": float(np.mean(known_d <= limit)),
                           "known_accuracy": float(np.mean((known_d <= limit) & correct))})
        entry = {"grouping": grouping, "known_classes": int(len(known)),
                 "unknown_classes": int(len(np.unique(labels[unknown_q]))), "known_queries": int(len(known_q)),
                 "unknown_queries": int(len(unknown_q)), "auroc": auroc, "auroc_nearest_item": item_auroc,
                 "closed_set_accuracy": float(correct.mean()), "operating_points": points}
        if grouping == "class":  # the public API on the same images gives the same answers
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                support_images = test.gather(support)
                support_labels = [int(c) for c in labels[support]]
                answer = model.identify(support_images, support_labels, test.gather(known_q[:2000]))
            same_class = np.array(answer.nearest) == known[known_pred[:2000]]
            same_decision = answer.accepted.numpy() == (known_d[:2000] <= answer.max_distance)
            entry["identify_agrees"] = float(np.mean(same_class & same_decision))
        report["open_set"].append(entry)
        cells = " | ".join(f"{p['unknown_accepted']:.4f} / {p['known_accuracy']:.4f}" for p in points)
        print(f"| {grouping} | {len(known)} | {auroc:.4f} | {item_auroc:.4f} | {correct.mean():.4f} | {cells} |")
    open_cal = calibration["open_set"]
    print(f"\n(open-set thresholds chosen on {open_cal['known_classes']} known / {open_cal['unknown_classes']} unknown "
          f"validation classes, {open_cal['shots']} shots; unknowns accepted on validation: "
          + ", ".join(f"{p['val_unknown_accepted']:.4f}" for p in report['open_set'][0]['operating_points'])
          + f"; identify() agrees with this script on {report['open_set'][0]['identify_agrees']:.2%} of queries)\n")

    # ---- clustering ---------------------------------------------------------------------------
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    report["clustering"] = []
    print("| draw | classes | estimated k | ARI (estimated) | NMI (estimated) | ARI (k given) | NMI (k given) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed + 3)
    for draw in range(3):
        chosen = rng.choice(test.num_classes, 20, replace=False)
        rows = np.flatnonzero(np.isin(labels, chosen))
        started = time.perf_counter()
        estimated = model.cluster(test.gather(rows), seed=draw)
        given = model.cluster(test.gather(rows), n_clusters=20, seed=draw)
        seconds = time.perf_counter() - started
        truth = labels[rows]
        entry = {"classes": 20, "images": int(len(rows)), "estimated_k": estimated.n_clusters,
                 "ari_estimated": adjusted_rand_score(truth, estimated.labels),
                 "nmi_estimated": normalized_mutual_info_score(truth, estimated.labels),
                 "ari_given": adjusted_rand_score(truth, given.labels),
                 "nmi_given": normalized_mutual_info_score(truth, given.labels), "seconds": seconds}
        report["clustering"].append(entry)
        print(f"| {draw} | 20 | {entry['estimated_k']} | {entry['ari_estimated']:.3f} | {entry['nmi_estimated']:.3f} | "
              f"{entry['ari_given']:.3f} | {entry['nmi_given']:.3f} | {seconds:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
        print(f"\nreport: {args.out}")


if __name__ == "__main__":
    main()
