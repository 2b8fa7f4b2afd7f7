"""episodes: a standalone, seeded, random-access episodic sampler (numpy core).

Episode i of seed s is a pure function of (s, i): exact resume, disjoint shards, vectorised draws.
Class-balanced batches (M items from each of P classes, `batches`) come from the same machinery.
Meta-Dataset's variable, imbalanced episodes come from `metadataset`; episodes over several sources from
`sources`, and episodes whose classes share a parent (one alphabet, one sub-tree) from `hierarchy`. The core
(`sampler`, `metadataset`, `sources`, `hierarchy`, `batches`, `pairs`, `lists`) needs numpy only;
`episodes.torch` and `episodes.learn2learn` hold the optional PyTorch and learn2learn adapters and are
imported explicitly.
"""

from .batches import ClassBalancedSampler, ClassBatch
from .hierarchy import HierarchySampler, ParentEpisode, ancestors, parents_from_names, within_parent_episodes
from .lists import load_episodes, read_episode_list, save_episodes
from .metadataset import MetaDatasetDraw, MetaDatasetSampler
from .pairs import PairBatch, PairSampler, TripletBatch, TripletSampler
from .sampler import Episode, EpisodeDraw, EpisodeSampler
from .sources import ChoiceDraw, MultiSourceSampler, SourceEpisode, fixed_shape

__all__ = [
    "ClassBalancedSampler",
    "ClassBatch",
    "ChoiceDraw",
    "Episode",
    "EpisodeDraw",
    "EpisodeSampler",
    "HierarchySampler",
    "MetaDatasetDraw",
    "MetaDatasetSampler",
    "MultiSourceSampler",
    "PairBatch",
    "PairSampler",
    "ParentEpisode",
    "SourceEpisode",
    "TripletBatch",
    "TripletSampler",
    "ancestors",
    "fixed_shape",
    "load_episodes",
    "parents_from_names",
    "read_episode_list",
    "save_episodes",
    "within_parent_episodes",
]
