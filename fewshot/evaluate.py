"""Evaluation CLI: novel-class accuracy with 95% intervals, paired comparison, verification and retrieval.

    python -m fewshot.evaluate runs/proto/best.pt --ways 5 20 --shots 1 5 --episodes 1000

Episodes come from a seed (or a saved episode list), and the JSON report records which, with the
checkpoint's SHA-256, so any number can be reproduced exactly. The training CLI's final evaluation
calls `evaluate_checkpoint` too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from episodes.lists import load_episodes, save_episodes
from episodes.sampler import Episode, EpisodeSampler
from fewshot import metrics
from fewshot.checkpoint import file_sha256, model_from_checkpoint
from fewshot.data.splits import SPLIT_SCHEMES, DatasetSplits, load_splits
from fewshot.data.store import ClassSplit, atomic_write
from fewshot.model import FewShotModel

EVAL_SPLITS = ("test", "val", "train")



def evaluation_episodes(split: ClassSplit, ways: int, shots: int, queries: int, episodes: int, seed: int) -> list[Episode]:
    """The `episodes` evaluation episodes of a split for a seed: the same list for every model."""
    sampler = EpisodeSampler(split.labels, ways, shots, queries, seed=seed, num_episodes=episodes)
    return sampler.episodes(np.arange(episodes))


@torch.no_grad()
def evaluate_model(
    model: FewShotModel | list[FewShotModel],
    split: ClassSplit,
    ways: int,
    shots: int,
    queries: int,
    episodes: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    episode_list: list[Episode] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Per-episode nearest-prototype accuracy of `model` (or of each model, on identical episodes).

    Returns [episodes] (or [models, episodes]) accuracies. Models are put in eval mode and restored.
    """
    models = model if isinstance(model, list) else [model]
    device = torch.device(device)
    chosen = episode_list if episode_list is not None else evaluation_episodes(split, ways, shots, queries, episodes, seed)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    accuracies = np.zeros((len(models), len(chosen)))
    try:
        for e, episode in enumerate(tqdm(chosen, desc=f"{ways}-way {shots}-shot", disable=not progress, leave=False)):
            support_x, support_y, query_x, query_y = split.episode_tensors(episode, device)
            for m_index, m in enumerate(models):
                logits = m.logits(support_x, support_y, query_x)
                accuracies[m_index, e] = metrics.episode_accuracy(logits, query_y)
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    return accuracies if isinstance(model, list) else accuracies[0]


def check_novel(state: dict[str, Any], dataset: str, split: ClassSplit, split_name: str, allow_seen: bool) -> None:
    """Refuse to report 'novel-class' accuracy on classes the checkpoint was trained on."""
    if state.get("dataset") != dataset:
        return  # another dataset's class names cannot overlap
    seen = set(state.get("train_classes", []))
    overlap = [name for name in split.class_names if name in seen]
    if overlap and not allow_seen:
        raise ValueError(
            f"{len(overlap)} of the {split.num_classes} classes of the {dataset} '{split_name}' split were seen in "
            f"training by this checkpoint (e.g. {', '.join(overlap[:3])}); accuracy on them is not few-shot accuracy "
            "on novel classes. Pass --allow-seen-classes to evaluate anyway."
        )


def _interval_dict(interval: metrics.Interval) -> dict[str, Any]:
    return {"mean": interval.mean, "half_width": interval.half_width, "low": interval.low, "high": interval.high,
            "method": interval.method, "n": interval.n, "confidence": interval.confidence}


@torch.no_grad()
def embed_split(model: FewShotModel, split: ClassSplit, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings [len(split), d] of every item of a split (eval mode)."""
    model.eval()
    chunks = []
    for start in range(0, len(split), batch_size):
        indices = np.arange(start, min(start + batch_size, len(split)))
        chunks.append(model.embed(split.to_float(split.gather(indices)).to(device)).cpu())
    return torch.cat(chunks)


@torch.no_grad()
def embedding_metrics(model: FewShotModel, val: ClassSplit, test: ClassSplit, device: torch.device,
                      pairs: int = 100_000, seed: int = 0, far: tuple[float, ...] = (1e-3, 1e-2, 1e-1)) -> dict[str, Any]:
    """Verification (threshold chosen on validation classes) and retrieval metrics on the test classes."""
    def balanced_pairs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Half same-class pairs (anchor, another item of its class), half different-class pairs.
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty_like(order)
        rank[order] = np.arange(len(labels)) - starts[labels[order]]
        anchor = rng.integers(0, len(labels), pairs // 2)
        size = counts[labels[anchor]]
        partner = order[starts[labels[anchor]] + (rank[anchor] + rng.integers(1, size)) % size]
        first, second = rng.integers(0, len(labels), (2, pairs - pairs // 2))
        different = labels[first] != labels[second]
        return np.stack([np.concatenate([anchor, first[different]]), np.concatenate([partner, second[different]])], axis=1)

    rng = np.random.default_rng(seed)
    distance = model.learner.distance
    scores = {}
    for name, split in (("val", val), ("test", test)):
        embeddings = embed_split(model, split, device)
        labels = torch.from_numpy(split.labels)
        chosen = torch.from_numpy(balanced_pairs(split.labels, rng))
        scores[name] = metrics.pair_scores(embeddings, labels, distance=distance, pairs=chosen)
        if name == "test":
            test_embeddings, test_labels = embeddings, labels
    threshold = metrics.choose_threshold(*scores["val"], criterion="eer")
    test_scores, test_same = scores["test"]
    eer, _ = metrics.equal_error_rate(test_scores, test_same)
    return {
        "verification": {
            "pairs": int(len(test_scores)),
            "roc_auc": metrics.roc_auc(test_scores, test_same),
            "eer": eer,
            "tar_at_far": {str(f): metrics.tar_at_far(test_scores, test_same, f) for f in far},
            "threshold_from_val": float(threshold),
            "accuracy_at_val_threshold": metrics.verification_accuracy(test_scores, test_same, threshold),
        },
        "retrieval": {
            "items": int(len(test_labels)),
            "recall_at_1": metrics.recall_at_k(test_embeddings, test_labels, k=1, distance=distance),
            "map_at_r": metrics.map_at_r(test_embeddings, test_labels, distance=distance),
        },
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    dataset: str | None = None,
    split: str | None = None,
    eval_split: str = "test",
    settings: list[tuple[int, int]] = ((5, 1),),
    queries: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    data_root: str | None = None,
    device: str = "cpu",
    compare: str | Path | None = None,
    allow_seen: bool = False,
    with_embedding_metrics: bool = False,
    episode_list: str | Path | None = None,
    save_episode_lists: str | Path | None = None,
    splits: DatasetSplits | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint (and optionally a second one on identical episodes); return the report dict.

    Episodes come from `seed`, or from a saved `episode_list` (then `settings`, `queries` and
    `episodes` are those of the list). `save_episode_lists` writes each setting's seeded episodes
    as an episode list `<stem>_<ways>way<shots>shot.json`, for other models or libraries.
    """
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"unknown evaluation split {eval_split!r}; expected one of {', '.join(EVAL_SPLITS)}")
    device_t = torch.device(device)
    model, state = model_from_checkpoint(checkpoint, device_t)
    dataset = dataset or state.get("dataset", "omniglot")
    split = split or (state.get("split_scheme") if dataset == state.get("dataset") else None)
    if splits is None:
        splits = load_splits(dataset, split, data_root, model.spec.image_size)
    target = splits.get(eval_split)
    check_novel(state, dataset, target, eval_split, allow_seen)
    models = [model]
    other_state = None
    if compare is not None:
        other, other_state = model_from_checkpoint(compare, device_t)
        check_novel(other_state, dataset, target, eval_split, allow_seen)
        models.append(other)

    fixed: list[Episode] | None = None
    if episode_list is not None:
        fixed = load_episodes(episode_list, target)
        shapes = sorted({(e.ways, e.shots, e.queries) for e in fixed})
        if len(shapes) != 1:
            raise ValueError(f"{episode_list} mixes episode shapes (ways, shots, queries) {shapes}; evaluate one shape per list")
        (ways, shots, queries), = shapes
        settings, episodes = [(ways, shots)], len(fixed)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
        "spec": model.spec.to_dict(), "dataset": dataset, "split": splits.scheme, "eval_split": eval_split,
        "classes": target.num_classes, "queries": queries,
        "episode_source": ({"kind": "seed", "seed": seed, "sampler": "episodes.EpisodeSampler"} if fixed is None else
                           {"kind": "list", "path": str(episode_list), "sha256": file_sha256(episode_list)}),
        "results": [],
    }
    if compare is not None:
        report["compare"] = {"checkpoint": str(compare), "checkpoint_sha256": file_sha256(compare),
                             "spec": other_state["spec"], "results": []}
    smallest = int(np.bincount(target.labels).min())
    for ways, shots in settings:  # every setting checked before any is evaluated
        if ways > target.num_classes:
            raise ValueError(f"--ways {ways} exceeds the {target.num_classes} classes of the {dataset} {eval_split} split")
        if shots + queries > smallest:
            raise ValueError(f"--shots {shots} + --queries {queries} needs {shots + queries} images per class, but classes "
                             f"of the {dataset} {eval_split} split have as few as {smallest}")
    for ways, shots in settings:
        chosen = fixed if fixed is not None else evaluation_episodes(target, ways, shots, queries, episodes, seed)
        if save_episode_lists is not None and fixed is None:
            base = Path(save_episode_lists)
            path = base.with_name(f"{base.stem}_{ways}way{shots}shot.json")
            save_episodes(path, chosen, target, metadata={"dataset": dataset, "split": splits.scheme, "eval_split": eval_split,
                                                          "seed": seed, "ways": ways, "shots": shots, "queries": queries})
            report.setdefault("saved_episode_lists", []).append(str(path))
        accuracies = evaluate_model(models, target, ways, shots, queries, episode_list=chosen, device=device_t, progress=progress)
        normal = metrics.confidence_interval(accuracies[0], "normal")
        student = metrics.confidence_interval(accuracies[0], "t")
        report["results"].append({
            "ways": ways, "shots": shots, "episodes": episodes, "accuracy": normal.mean, "ci95": normal.half_width,
            "normal": _interval_dict(normal), "t": _interval_dict(student),
            "per_episode": accuracies[0].tolist(),
        })
        if compare is not None:
            other_interval = metrics.confidence_interval(accuracies[1], "normal")
            paired = metrics.paired_comparison(accuracies[0], accuracies[1])
            report["compare"]["results"].append({
                "ways": ways, "shots": shots, "accuracy": other_interval.mean, "ci95": other_interval.half_width,
                "difference": _interval_dict(paired.difference), "t_statistic": paired.t_statistic,
                "p_value": paired.p_value, "wilcoxon_p_value": paired.wilcoxon_p_value,
            })
    if with_embedding_metrics:
        report["embedding_metrics"] = embedding_metrics(model, splits.val, target, device_t, seed=seed)
    return report


def report_json(report: dict[str, Any]) -> bytes:
    """The report as strict JSON: non-finite numbers (an infinite t statistic) become strings."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(report), indent=2, allow_nan=False).encode()


def format_table(report: dict[str, Any]) -> str:
    """The report's accuracy table as text."""
    lines = [f"{report['dataset']} ({report['split']}) {report['eval_split']} classes: {report['classes']}, "
             f"{report['queries']} queries per class, episodes from "
             + (f"seed {source['seed']}" if (source := report["episode_source"])["kind"] == "seed" else f"list {source['path']}"),
             f"{'ways':>5} {'shots':>5} {'episodes':>8} {'accuracy':>9} {'±95% normal':>12} {'±95% t':>8}"]
    compared = {(r["ways"], r["shots"]): r for r in report.get("compare", {}).get("results", [])}
    if compared:
        lines[-1] += f" {'other':>8} {'difference (95% CI)':>22} {'p (t)':>8}"
    for row in report["results"]:
        line = (f"{row['ways']:>5} {row['shots']:>5} {row['episodes']:>8} {100 * row['accuracy']:>8.2f}% "
                f"{100 * row['normal']['half_width']:>11.2f}% {100 * row['t']['half_width']:>7.2f}%")
        other = compared.get((row["ways"], row["shots"]))
        if other:
            d = other["difference"]
            line += (f" {100 * other['accuracy']:>7.2f}% {100 * d['mean']:>+8.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
                     f" {other['p_value']:>8.3g}")
        lines.append(line)
    if "embedding_metrics" in report:
        v, r = report["embedding_metrics"]["verification"], report["embedding_metrics"]["retrieval"]
        lines.append(f"verification: ROC-AUC {v['roc_auc']:.4f}, EER {100 * v['eer']:.2f}%, "
                     + ", ".join(f"TAR@FAR={k} {100 * t:.2f}%" for k, t in v["tar_at_far"].items())
                     + f", accuracy at the val-chosen threshold {100 * v['accuracy_at_val_threshold']:.2f}%")
        lines.append(f"retrieval: Recall@1 {100 * r['recall_at_1']:.2f}%, MAP@R {100 * r['map_at_r']:.2f}% ({r['items']} items)")
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Accuracy against shots, one line per ways, with 95% CI bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for ways in sorted({r["ways"] for r in report["results"]}):
        rows = sorted((r for r in report["results"] if r["ways"] == ways), key=lambda r: r["shots"])
        ax.errorbar([r["shots"] for r in rows], [100 * r["accuracy"] for r in rows],
                    yerr=[100 * r["ci95"] for r in rows], fmt="o-", capsize=3, label=f"{ways}-way")
    ax.set(xlabel="shots", ylabel="accuracy (%)", title=f"{report['dataset']} {report['eval_split']} classes (95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fewshot.evaluate", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by fewshot.train (best.pt)")
    p.add_argument("--dataset", choices=sorted(SPLIT_SCHEMES), default=None, help="default: the checkpoint's")
    p.add_argument("--split", default=None, help="split scheme (default: the checkpoint's)")
    p.add_argument("--eval-split", choices=EVAL_SPLITS, default="test", help="which classes to evaluate on")
    p.add_argument("--ways", type=int, nargs="+", default=[5])
    p.add_argument("--shots", type=int, nargs="+", default=[1])
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="episodes are a pure function of the seed")
    p.add_argument("--episode-list", default=None, help="evaluate on a saved episode list (JSON, episodes.lists) instead of seeded episodes")
    p.add_argument("--save-episodes", default=None, help="write the seeded episodes as episode lists PATH_<ways>way<shots>shot.json")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare", default=None, help="a second checkpoint, evaluated on identical episodes")
    p.add_argument("--allow-seen-classes", action="store_true", help="evaluate even on classes seen in training")
    p.add_argument("--embedding-metrics", action="store_true", help="also verification (ROC-AUC, EER, TAR@FAR) and retrieval (Recall@1, MAP@R)")
    p.add_argument("--report", default=None, help="JSON report path (default: beside the checkpoint)")
    p.add_argument("--plot", default=None, help="PNG plot path (default: beside the report)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fewshot.train import resolve_device

    try:
        report = evaluate_checkpoint(
            args.checkpoint, dataset=args.dataset, split=args.split, eval_split=args.eval_split,
            settings=[(w, s) for w in args.ways for s in args.shots], queries=args.queries, episodes=args.episodes,
            seed=args.seed, data_root=args.data_root, device=str(resolve_device(args.device)), compare=args.compare,
            allow_seen=args.allow_seen_classes, with_embedding_metrics=args.embedding_metrics,
            episode_list=args.episode_list, save_episode_lists=args.save_episodes,
            progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report_path = Path(args.report or Path(args.checkpoint).with_name(f"eval_{Path(args.checkpoint).stem}_{args.eval_split}.json"))
    plot_path = Path(args.plot or report_path.with_suffix(".png"))
    atomic_write(report_path, lambda f: f.write(report_json(report)))
    plot_report(report, plot_path)
    print(format_table(report))
    print(f"report: {report_path}\nplot: {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
