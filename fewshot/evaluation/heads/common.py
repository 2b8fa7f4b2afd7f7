"""Shared pieces of the transductive heads: argument checks, class means, cosine scores, and a guard that lets a
head optimise under the evaluator's ``no_grad``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def positive_int(head: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming the head, the argument and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{head}: {name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def positive_float(head: str, name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float > 0 (>= 0 with ``allow_zero``), or a ValueError naming the head, argument and value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{head}: {name} must be a number, got {value!r}")
    value = float(value)
    if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
        raise ValueError(f"{head}: {name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def choice(head: str, name: str, value: Any, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``, else a ValueError listing them."""
    if value not in options:
        raise ValueError(f"{head}: unknown {name} {value!r}; expected one of {', '.join(options)}")
    return value


def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean ``[ways, d]`` of each class's rows; a class with no row is an error (a head cannot place it)."""
    counts = torch.bincount(labels, minlength=ways)
    if len(counts) > ways or bool((counts[:ways] == 0).any()):
        raise ValueError(f"support labels must cover 0..{ways - 1} with at least one item each, got counts "
                         f"{counts.tolist()}")
    sums = torch.zeros(ways, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return sums / counts.to(features.dtype)[:, None]


def cosine(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[n, k]`` of every row of ``features`` with every row of ``centres``."""
    return F.normalize(features, dim=1) @ F.normalize(centres, dim=1).T


def trainable(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Float32 copies of ``tensors`` that autograd may use, even when made under ``torch.inference_mode``
    (call under ``torch.inference_mode(False)``)."""
    return tuple(t.detach().float().clone() for t in tensors)


def prepared(support: torch.Tensor, query: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`trainable` copies of an episode's support and query embeddings, L2-normalised when `normalize` (the
    start of every head that fits parameters by gradient descent; call under ``torch.inference_mode(False)``)."""
    support, query = trainable(support, query)
    if normalize:
        support, query = F.normalize(support, dim=1), F.normalize(query, dim=1)
    return support, query
