"""episodes: a standalone, seeded, random-access episodic sampler (numpy core).

Episode i of seed s is a pure function of (s, i): exact resume, disjoint shards, vectorised draws.
Class-balanced batches (M items from each of P classes, `batches`) come from the same machinery.
Meta-Dataset's variable, imbalanced episodes come from `metadataset`. The core (`sampler`, `metadataset`,
`batches`, `pairs`, `lists`) needs numpy only; `episodes.torch` and `episodes.learn2learn`
hold the optional PyTorch and learn2learn adapters and are imported explicitly.
"""

from .batches import ClassBalancedSampler, ClassBatch
from .lists import load_episodes, read_episode_list, save_episodes
from .metadataset import MetaDatasetDraw, MetaDatasetSampler
from .pairs import PairBatch, PairSampler, TripletBatch, TripletSampler
from .sampler import Episode, EpisodeDraw, EpisodeSampler

__all__ = [
    "ClassBalancedSampler",
    "ClassBatch",
    "Episode",
    "EpisodeDraw",
    "EpisodeSampler",
    "MetaDatasetDraw",
    "MetaDatasetSampler",
    "PairBatch",
    "PairSampler",
    "TripletBatch",
    "TripletSampler",
    "load_episodes",
    "read_episode_list",
    "save_episodes",
]
