"""An evaluation report as JSON, as a table and as a plot."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def default_report_path(checkpoint: str | Path, eval_split: str = "test", compare: str | Path | None = None,
                        ensemble: Sequence[str | Path] = (), shift: int = 0, rotations: bool = False,
                        mirror: bool = False, episode_kind: str = "fixed", query_dirichlet: float | None = None,
                        heads: Sequence[str] = ()) -> Path:
    """The report written beside `checkpoint` when none is named: `eval_<stem>_<split>.json`, with the mode in
    the name (`_vs-<other stem>`, `_ensemble<n>`, `_shift<k>`, `_rotations`, `_mirror`, `_within-parent`,
    `_meta-dataset`, `_dirichlet<alpha>`, `_heads-<name>+<name>` for test-time heads), so that a comparison, an
    ensemble, test-time views, test-time heads or another kind of episodes never overwrite the plain evaluation's
    report (or each other's)."""
    checkpoint = Path(checkpoint)
    parts = [f"eval_{checkpoint.stem}_{eval_split}"]
    if compare is not None:
        parts.append(f"vs-{Path(compare).parent.name or 'run'}-{Path(compare).stem}")
    if ensemble:
        parts.append(f"ensemble{len(ensemble) + 1}")
    if shift:
        parts.append(f"shift{shift}")
    parts += [name for name, on in (("rotations", rotations), ("mirror", mirror)) if on]
    if episode_kind != "fixed":
        parts.append(episode_kind)
    if query_dirichlet is not None:
        parts.append(f"dirichlet{query_dirichlet:g}")
    if heads:
        parts.append("heads-" + "+".join(dict.fromkeys(heads)))
    return checkpoint.with_name("_".join(parts) + ".json")


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


def episode_source_text(source: dict[str, Any]) -> str:
    """Where a report's episodes came from, in words: a seed, a saved list, or a named kind of episodes."""
    if source["kind"] == "seed" and source.get("query_dirichlet") is not None:
        return f"seed {source['seed']}, Dirichlet({source['query_dirichlet']:g}) query counts per class"
    if source["kind"] == "seed":
        return f"seed {source['seed']}"
    if source["kind"] == "list":
        return f"list {source['path']}"
    if source["kind"] == "within-parent":
        rotations = source.get("rotations", "none")
        return f"seed {source['seed']}, within one alphabet (parent) each (rotated classes: {rotations})"
    return f"seed {source['seed']}, {source['kind']} episodes"


def format_table(report: dict[str, Any]) -> str:
    """The report's accuracy table as text."""
    lines = [f"{report['dataset']} ({report['split']}) {report['eval_split']} classes: {report['classes']}, "
             f"{report['queries']} queries per class, episodes from "
             + episode_source_text(report["episode_source"]),
             f"{'ways':>5} {'shots':>5} {'episodes':>8} {'accuracy':>9} {'±95% normal':>12} {'±95% t':>8}"]
    for source, record in report.get("dropped_classes", {}).items():
        why = "the data's min_images option" if source == "dataset" else "--min-images-per-class"
        lines.insert(1, f"left out: {len(record['classes'])} {report['eval_split']} classes of fewer than "
                        f"{record['min_images']} images ({why}; listed in the report)")
    if members := report.get("ensemble"):
        lines.insert(1, f"an ensemble of {len(members)} models: " + ", ".join(m["checkpoint"] for m in members))
    if shift := report.get("test_time_shift"):
        lines.insert(1, f"test-time shift averaging: {len(shift['views'])} views (shifts up to {shift['max_shift']} px)")
    if turned := report.get("test_time_turns"):
        kinds = " and ".join(k for k, on in (("quarter turns", turned.get("rotations")),
                                              ("mirrored", turned.get("mirror"))) if on)
        lines.insert(1, f"test-time turned copies: {len(turned['copies'])} ({kinds}), scores summed over the copies")
    compared = {(r["ways"], r["shots"]): r for r in report.get("compare", {}).get("results", [])}
    if compared:
        lines[-1] += f" {'other':>8} {'difference (95% CI)':>22} {'p (t)':>8}"
    if adaptation := report.get("input_adaptation"):
        lines.insert(1, f"cross-domain: trained on {adaptation['trained_on']}, evaluated on "
                        f"{adaptation['evaluated_on']}; images adapted: {'; '.join(adaptation['steps'])}")
    for row in report["results"]:
        # Variable episodes print "var" in the ways and shots columns, their distribution on the next line.
        ways, shots = ("var" if not isinstance(v, int) else v for v in (row["ways"], row["shots"]))
        line = (f"{ways:>5} {shots:>5} {row['episodes']:>8} {100 * row['accuracy']:>8.2f}% "
                f"{100 * row['normal']['half_width']:>11.2f}% {100 * row['t']['half_width']:>7.2f}%")
        other = compared.get((row["ways"], row["shots"]))
        if other:
            d = other["difference"]
            line += (f" {100 * other['accuracy']:>7.2f}% {100 * d['mean']:>+8.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
                     f" {other['p_value']:>8.3g}")
        lines.append(line)
        if (spread := row.get("distribution")) is not None and not isinstance(row["shots"], int):
            lines.append("      " + ", ".join(f"{name.replace('_', ' ')} {d['mean']:.1f} "
                                              f"(min {d['min']:g}, max {d['max']:g})" for name, d in spread.items()))
        if excluded := row.get("parents", {}).get("excluded_parents"):
            lines.append(f"      excluded parents (fewer classes than ways): "
                         + ", ".join(f"{name} ({n})" for name, n in excluded.items()))
    if heads := report.get("heads"):
        lines += head_table(heads, report.get("base_mean"))
    if "embedding_metrics" in report:
        v, r = report["embedding_metrics"]["verification"], report["embedding_metrics"]["retrieval"]
        lines.append(f"verification: ROC-AUC {v['roc_auc']:.4f}, EER {100 * v['eer']:.2f}%, "
                     + ", ".join(f"TAR@FAR={k} {100 * t:.2f}%" for k, t in v["tar_at_far"].items())
                     + f", accuracy at the val-chosen threshold {100 * v['accuracy_at_val_threshold']:.2f}%")
        # Reports written before R-precision and clustering were added lack them: print what there is.
        r_precision = f", R-precision {100 * r['r_precision']:.2f}%" if "r_precision" in r else ""
        lines.append(f"retrieval: Recall@1 {100 * r['recall_at_1']:.2f}%{r_precision}, MAP@R {100 * r['map_at_r']:.2f}% "
                     f"({r['items']} items)")
        if (c := report["embedding_metrics"].get("clustering")) is not None:
            normalized = ", L2-normalised" if c["normalized"] else ""
            lines.append(f"clustering: k-means (k={c['k']}, seed {c['seed']}{normalized}) NMI {c['nmi']:.4f}, "
                         f"AMI {c['ami']:.4f} ({c['items']} items)")
    return "\n".join(lines)


def head_table(heads: list[dict[str, Any]], base_mean: dict[str, Any] | None = None) -> list[str]:
    """The lines of a report's test-time heads: one row per head and setting, its accuracy, the paired difference
    from the prototype head on the same episodes, and its time per 1,000 episodes; transductive heads marked."""
    width = max(len(h["head"]) + (len(" (transductive)") if h["transductive"] else 0) for h in heads)
    lines = ["test-time heads on identical episodes (difference: head - prototype, paired; time: the head alone, "
             "on the embeddings, per 1,000 episodes)",
             f"{'head':<{width}} {'ways':>5} {'shots':>5} {'accuracy':>9} {'±95%':>6} "
             f"{'difference (95% CI)':>24} {'p (t)':>8} {'s/1000 ep':>10}"]
    settings = len(heads[0]["results"])
    for position in range(settings):  # grouped by setting: the heads of one setting scored identical episodes
        for head in heads:
            name = head["head"] + (" (transductive)" if head["transductive"] else "")
            row = head["results"][position]
            ways, shots = ("var" if not isinstance(v, int) else v for v in (row["ways"], row["shots"]))
            line = (f"{name:<{width}} {ways:>5} {shots:>5} {100 * row['accuracy']:>8.2f}% "
                    f"{100 * row['ci95']:>5.2f}%")
            if "difference" in row:
                d = row["difference"]
                line += (f" {100 * d['mean']:>+7.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
                         f" {row['p_value']:>8.3g}")
            else:
                line += f" {'(reference)':>24} {'':>8}"
            lines.append(line + f" {row['seconds_per_1000_episodes']:>10.2f}")
    if base_mean is not None:
        lines.append(f"base-class mean (centring): {base_mean['images']} of the {base_mean['of']} training images "
                     f"({base_mean['classes']} classes), seed {base_mean['seed']}")
    return lines


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Accuracy against shots, one line per ways, with 95% CI bars; when every setting has one shot count
    (a single setting, or several ways at one shot), one bar per setting instead of lone points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    fig, ax = plt.subplots(figsize=(5, 4))
    if len({r["shots"] for r in results}) == 1:  # a line needs two shot counts: bars, labelled by setting
        rows = sorted(results, key=lambda r: r["ways"])
        labels = [f"{r['ways']}-way {r['shots']}-shot" for r in rows]
        heights = [100 * r["accuracy"] for r in rows]
        ax.bar(labels, heights, width=0.5, yerr=[100 * r["ci95"] for r in rows], capsize=4, color="tab:blue")
        for position, (height, row) in enumerate(zip(heights, rows)):
            ax.annotate(f"{height:.2f}% ± {100 * row['ci95']:.2f}", (position, height), ha="center",
                        va="bottom", xytext=(0, 8), textcoords="offset points")
        ax.set(ylabel="accuracy (%)", ylim=(0, 105))
    else:
        for ways in sorted({r["ways"] for r in results}):
            rows = sorted((r for r in results if r["ways"] == ways), key=lambda r: r["shots"])
            ax.errorbar([r["shots"] for r in rows], [100 * r["accuracy"] for r in rows],
                        yerr=[100 * r["ci95"] for r in rows], fmt="o-", capsize=3, label=f"{ways}-way")
        ax.set(xlabel="shots", ylabel="accuracy (%)")
        ax.set_xticks(sorted({r["shots"] for r in results}))  # whole shot counts, never a fractional axis
        ax.legend()
    ax.set_title(f"{report['dataset']} {report['eval_split']} classes (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
