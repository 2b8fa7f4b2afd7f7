"""Triplet miners: pick (anchor, positive, negative) index triplets from a batch.

A miner sees the batch's ``[n, n]`` matrix of (Euclidean) distances and its ``[n]`` labels, and
returns three equally long LongTensors. Positives share the anchor's label (and are not the
anchor); negatives do not. Randomness comes only from the ``generator`` passed in, so training
is reproducible and resumable. Triplets come out sorted by (anchor, positive).

Triplet miners register by name in ``MINERS`` (``@MINERS.register("name")``), like learners; the triplet
learner's ``miner`` argument and the CLI's ``--miner`` choices read it.
"""

from __future__ import annotations

import torch

from fewshot.registry import Registry

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, n]`` boolean masks of positive pairs (same label, i != j) and negative pairs."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


class Miner:
    """Base class: checks the inputs, then calls ``mine``."""

    def __call__(
        self,
        dist: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None = None,
        embedding_dim: int | None = None,
    ) -> Triplets:
        """Mine triplets; ``embedding_dim`` is only used by ``DistanceWeightedMiner``."""
        if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
            raise ValueError(f"dist must be a square [n, n] matrix, got shape {tuple(dist.shape)}")
        if labels.shape != (dist.shape[0],):
            raise ValueError(
                f"labels must have shape ({dist.shape[0]},) to match dist, got {tuple(labels.shape)}"
            )
        return self.mine(dist.detach(), labels, generator, embedding_dim)

    def mine(
        self,
        dist: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None,
        embedding_dim: int | None,
    ) -> Triplets:
        raise NotImplementedError


#: Triplet miners by name; registration order is the order the CLI and error messages list them in.
MINERS: Registry[type[Miner]] = Registry("miner")


@MINERS.register("batch-all")
class BatchAllMiner(Miner):
    """Every valid triplet in the batch (Hermans et al., 2017, "batch all")."""

    def mine(self, dist, labels, generator, embedding_dim) -> Triplets:
        positive, negative = _masks(labels)
        valid = positive[:, :, None] & negative[:, None, :]
        anchor, pos, neg = valid.nonzero(as_tuple=True)
        return anchor, pos, neg


@MINERS.register("batch-hard")
class BatchHardMiner(Miner):
    """Per anchor, its farthest positive and nearest negative (Hermans et al., 2017, "batch hard").

    Anchors with no positive or no negative in the batch give no triplet; ties go to the lowest index.
    """

    def mine(self, dist, labels, generator, embedding_dim) -> Triplets:
        positive, negative = _masks(labels)
        anchor = (positive.any(1) & negative.any(1)).nonzero(as_tuple=True)[0]
        hardest_positive = dist.masked_fill(~positive, float("-inf")).argmax(1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).argmin(1)
        return anchor, hardest_positive[anchor], hardest_negative[anchor]


@MINERS.register("semi-hard")
class SemiHardMiner(Miner):
    """Per (anchor, positive) pair, the hardest semi-hard negative (Schroff et al., 2015, FaceNet).

    Semi-hard negatives are farther than the positive but inside the margin,
    ``d(a, p) < d(a, n) < d(a, p) + margin``, so their triplet loss lies in ``(0, margin)``; the one
    nearest the anchor is taken. Pairs without a semi-hard negative give no triplet (their loss is
    either zero already, or every negative is closer than the positive).
    """

    def __init__(self, margin: float = 0.2) -> None:
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin

    def mine(self, dist, labels, generator, embedding_dim) -> Triplets:
        positive, negative = _masks(labels)
        anchor, pos = positive.nonzero(as_tuple=True)
        d_ap = dist[anchor, pos][:, None]
        d_an = dist[anchor]  # [pairs, n]
        semi_hard = negative[anchor] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        keep = semi_hard.any(1)
        neg = d_an.masked_fill(~semi_hard, float("inf")).argmin(1)
        return anchor[keep], pos[keep], neg[keep]


@MINERS.register("distance-weighted")
class DistanceWeightedMiner(Miner):
    """Distance-weighted negative sampling (Wu et al., 2017, "Sampling Matters in Deep Embedding Learning").

    Needs L2-normalised embeddings: distances must lie in [0, 2]. On the unit sphere in R^k,
    pairwise distances have density ``q(d) ∝ d^(k-2) (1 - d^2/4)^((k-3)/2)``; each anchor samples a
    negative with probability ∝ ``1 / q(max(d, cutoff))``, which spreads negatives over all
    distances instead of the crowd near sqrt(2). The clip at ``cutoff`` stops near-duplicates from
    dominating; negatives at ``d >= nonzero_loss_cutoff`` get weight zero (they give no loss). An
    anchor whose negatives are all that far samples one uniformly among them instead.
    One negative is drawn per (anchor, positive) pair, with the given generator.
    """

    def __init__(
        self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, embedding_dim: int | None = None
    ) -> None:
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ValueError(
                f"need 0 < cutoff < nonzero_loss_cutoff, got cutoff={cutoff}, "
                f"nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        self.cutoff = cutoff
        self.nonzero_loss_cutoff = nonzero_loss_cutoff
        self.embedding_dim = embedding_dim

    def negative_probabilities(
        self, dist: torch.Tensor, labels: torch.Tensor, embedding_dim: int
    ) -> torch.Tensor:
        """``[n, n]`` matrix: row ``a`` is the distribution of the negative sampled for anchor ``a``
        (all zeros for an anchor without negatives)."""
        if embedding_dim < 2:
            raise ValueError(f"embedding_dim must be at least 2, got {embedding_dim}")
        if dist.numel() and dist.max() > 2.0 + 1e-4:
            raise ValueError(
                f"distance-weighted mining needs L2-normalised embeddings (distances in [0, 2]), "
                f"got a distance of {dist.max().item():.4f}"
            )
        _, negative = _masks(labels)
        d = dist.clamp_min(self.cutoff)
        # Work in logs: q(d) spans many orders of magnitude for large embedding_dim.
        log_q = (embedding_dim - 2) * d.log() + (embedding_dim - 3) / 2 * (
            1 - d.pow(2) / 4
        ).clamp_min(1e-8).log()
        weighted = negative & (dist < self.nonzero_loss_cutoff)
        # Anchors with no negative below nonzero_loss_cutoff fall back to uniform over negatives.
        fallback = ~weighted.any(1, keepdim=True)
        log_w = torch.where(weighted, -log_q, torch.zeros_like(log_q))
        allowed = weighted | (fallback & negative)
        log_w = log_w.masked_fill(~allowed, float("-inf"))
        has_negative = allowed.any(1, keepdim=True)
        probabilities = torch.softmax(log_w.masked_fill(~has_negative, 0.0), dim=1)
        return probabilities * has_negative

    def mine(self, dist, labels, generator, embedding_dim) -> Triplets:
        dim = embedding_dim if embedding_dim is not None else self.embedding_dim
        if dim is None:
            raise ValueError(
                "DistanceWeightedMiner needs the embedding dimension: pass embedding_dim to the "
                "constructor or to the call"
            )
        probabilities = self.negative_probabilities(dist, labels, dim)
        positive, _ = _masks(labels)
        anchor, pos = positive.nonzero(as_tuple=True)
        keep = probabilities[anchor].sum(1) > 0
        anchor, pos = anchor[keep], pos[keep]
        if len(anchor) == 0:
            return anchor, pos, pos.clone()
        # Sample on the generator's device (e.g. a CPU generator while training on a GPU).
        weights = probabilities[anchor]
        if generator is not None:
            weights = weights.to(generator.device)
        neg = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        return anchor, pos, neg.to(anchor.device)


class MultiSimilarityMiner:
    """Pair mining of the multi-similarity loss (Wang et al., 2019, "Multi-Similarity Loss with General
    Pair Weighting for Deep Metric Learning", section 4.1).

    A pair miner, not a triplet `Miner`: it sees an ``[n, n]`` *similarity* matrix (larger = closer,
    the cosine for the multi-similarity loss) and returns boolean ``[n, n]`` masks of the kept positive
    and negative pairs. With ``S`` the similarities and ``epsilon`` the mining margin, for anchor ``i``:

    - a negative pair ``(i, k)`` is kept if ``S_ik + epsilon > min_{j positive} S_ij`` (it is more
      similar than the hardest positive, up to ``epsilon``);
    - a positive pair ``(i, j)`` is kept if ``S_ij - epsilon < max_{k negative} S_ik``.

    An anchor without positives keeps no negative, and one without negatives keeps no positive.
    Deterministic (no generator); the similarities are detached.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 <= epsilon < float("inf"):
            raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        self.epsilon = float(epsilon)

    def __call__(self, similarity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positive, negative)`` masks of the kept pairs of the ``[n, n]`` `similarity`."""
        if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"similarity must be a square [n, n] matrix, got shape {tuple(similarity.shape)}")
        if labels.shape != (similarity.shape[0],):
            raise ValueError(
                f"labels must have shape ({similarity.shape[0]},) to match similarity, got {tuple(labels.shape)}"
            )
        similarity = similarity.detach()
        positive, negative = _masks(labels)
        hardest_positive = similarity.masked_fill(~positive, float("inf")).min(1, keepdim=True).values
        hardest_negative = similarity.masked_fill(~negative, float("-inf")).max(1, keepdim=True).values
        kept_negative = negative & (similarity + self.epsilon > hardest_positive)
        kept_positive = positive & (similarity - self.epsilon < hardest_negative)
        return kept_positive, kept_negative


def build_miner(name: str, **kwargs) -> Miner:
    """Build the miner called ``name`` (one of ``MINERS``); keyword arguments go to its constructor."""
    return MINERS.build(name, **kwargs)
