"""Test-time classifiers ("heads") of novel episodes: `HEADS` by name, the `Head` interface (`base`), one module per
head. Importing this package registers every built-in head: the inductive ones, then the transductive ones."""

from fewshot.evaluation.heads import (  # noqa: F401  (imported to register)
    nearest_prototype,
    simpleshot,
    logistic,
    finetune,
    finetune_backbone,
    bd_cspn,
    laplacianshot,
    tim,
    pt_map,
    transductive_finetuning,
)
from fewshot.evaluation.heads.base import (HEADS, Head, HeadContext, build_head, episode_generator, episode_logits,
                                           head_label, register_head)

__all__ = ["HEADS", "Head", "HeadContext", "build_head", "episode_generator", "episode_logits", "head_label",
           "register_head"]
