"""A contact sheet: each query beside its nearest neighbours, as a PNG (matplotlib)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fewshot.inference.index import SearchResult

#: Queries drawn on one contact sheet (a sheet of more is too tall to read).
SHEET_ROWS = 24


def _thumbnail(item: str) -> np.ndarray | None:
    path = Path(item)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception:  # a file that changed or went bad since indexing: drawn as missing, not fatal
        return None


def write_contact_sheet(result: SearchResult, path: str | Path, query_labels: Sequence[Hashable] | None = None,
                        title: str | None = None) -> Path:
    """A PNG with one row per query (at most `SHEET_ROWS`): the query, then its neighbours nearest first, each
    captioned with its rank, distance and label. With `query_labels`, a neighbour of the query's label is framed
    green and another red. Items that are not readable files (a tensor gallery) are drawn as grey squares."""
    from matplotlib.figure import (
        Figure,  # no pyplot: a figure of its own, whatever backend the caller uses
    )

    rows = min(len(result), SHEET_ROWS)
    k = result.indices.shape[1]
    fig = Figure(figsize=(1.7 * (k + 1), 2.0 * rows + (0.4 if title else 0)))
    axes = fig.subplots(rows, k + 1, squeeze=False)

    def show(ax: Any, item: str, caption: str, colour: str | None) -> None:
        picture = _thumbnail(item)
        if picture is None:
            ax.imshow(np.full((8, 8, 3), 200, np.uint8))
            ax.text(0.5, 0.5, "no file", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        else:
            ax.imshow(picture)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(colour is not None)
            if colour is not None:
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
        ax.set_title(caption, fontsize=8)

    def short(text: Any, width: int = 26) -> str:
        text = str(text)
        return text if len(text) <= width else "…" + text[-(width - 1):]

    for row in range(rows):
        query_label = None if query_labels is None else query_labels[row]
        caption = f"query {short(Path(result.queries[row]).name, 16)}"
        if query_label is not None:
            caption += f"\n{short(query_label)}"
        show(axes[row][0], result.queries[row], caption, "black")
        for rank, (item, label, distance) in enumerate(result.neighbours(row), start=1):
            colour = None if query_label is None or label is None else ("tab:green" if label == query_label else "tab:red")
            shown = f"{distance:.3f}" if abs(distance) < 1000 else f"{distance:.3g}"
            caption = f"#{rank}  d={shown}\n{short(label if label is not None else Path(item).name)}"
            show(axes[row][rank], item, caption, colour)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
