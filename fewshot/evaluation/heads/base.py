"""Test-time classifiers ("heads"): how a novel episode's queries are classified from its embeddings.

A head takes an episode's support and query embeddings (from any trained checkpoint) and returns scores
``[n_query, ways]``; the evaluator scores several heads on identical episodes. To add one, write one file with
a subclass of :class:`Head`, decorate it with ``@register_head("name")``; ``--head NAME --head-arg k=v`` on
``fewshot evaluate`` then builds it from its constructor's arguments.

A head is *inductive* when each query's scores depend on the support set and that query alone, and
*transductive* (``transductive = True``) when they use the whole query set; reports mark the latter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fewshot.learners.base import Learner
from fewshot.registry import Registry

#: Heads by name.
HEADS: Registry = Registry("head")
register_head = HEADS.register


@dataclass
class HeadContext:
    """What a head may use beyond the episode's embeddings.

    Attributes:
        learner: the checkpoint's learner: its ``scoring_distance`` and its own test-time rule
            (``episode_logits``).
        generator: a CPU generator seeded from (evaluation seed, episode index): a head that draws random
            numbers (an initialisation, a data order) draws them from it, so results do not depend on which
            process scores the episode or in which order.
        base_mean: a callable returning the mean embedding ``[d]`` of the training (base) classes' images,
            computed once on first call (SimpleShot's centring); None where the base classes are unknown.
        model: the model itself, for heads that adapt the backbone on the support images
            (``needs_images = True``).
    """

    learner: Learner
    generator: torch.Generator
    base_mean: Callable[[], torch.Tensor] | None = None
    model: Any = None


class Head:
    """Base class of a test-time classifier.

    Subclasses implement :meth:`logits` (on embeddings), or set ``needs_images = True`` and implement
    :meth:`logits_from_images` (on the episode's images, with the model), and may set:

    - ``transductive``: the scores of a query use the other queries;
    - ``needs_base_mean``: the head needs ``context.base_mean`` (the evaluator then provides it).
    """

    transductive: ClassVar[bool] = False
    needs_images: ClassVar[bool] = False
    #: A plain attribute, not a ClassVar: whether a head needs the mean may depend on its arguments (SimpleShot's
    #: ``norm``), so an instance may set it.
    needs_base_mean: bool = False

    def logits(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
               context: HeadContext) -> torch.Tensor:
        """``[n_query, ways]`` scores (larger is more likely) of float32 ``query`` ``[n_query, d]`` given
        ``support`` ``[n_support, d]`` with labels ``0..ways-1``."""
        raise NotImplementedError

    def logits_from_images(self, support_x: torch.Tensor, support_labels: torch.Tensor, query_x: torch.Tensor,
                           ways: int, context: HeadContext) -> torch.Tensor:
        """``[n_query, ways]`` scores from the episode's images (for heads with ``needs_images``); the model is
        ``context.model`` and must come back unchanged."""
        raise NotImplementedError


def episode_logits(learner: Learner, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                   ways: int, head: Head | None, context: HeadContext | None) -> torch.Tensor:
    """``[n_query, ways]`` scores of an episode's embedded queries: ``head``'s, given its ``context``, or without a
    head the learner's own test-time rule (``Learner.episode_logits``, the numbers of an evaluation without heads)."""
    if head is None:
        return learner.episode_logits(support, support_labels, query, ways)
    if context is None:
        raise ValueError(f"head {type(head).__name__} needs its HeadContext, got None")
    return head.logits(support, support_labels, query, ways, context)


def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The CPU generator of `HeadContext.generator` for episode number `episode` of an evaluation seeded `seed`: a
    pure function of the pair (mixed by numpy's SeedSequence), so a head's random draws do not depend on which
    process scores the episode, in which order, or which other heads run."""
    state = np.random.SeedSequence([seed, episode]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def head_label(name: str, arguments: Mapping[str, Any]) -> str:
    """How a head built from `name` and `arguments` is named in reports: ``simpleshot`` or
    ``simpleshot(norm=L2N)``."""
    if not arguments:
        return name
    return f"{name}({', '.join(f'{k}={v}' for k, v in arguments.items())})"


def build_head(name: str, **kwargs: Any) -> Head:
    """Build the head called ``name`` (one of ``HEADS``) with its keyword arguments, checked by name."""
    factory = HEADS.get_or_raise(name)
    HEADS.check_arguments(name, kwargs, "--head-arg")
    return factory(**kwargs)
