"""Evaluation as library code: per-episode accuracy, checkpoint reports, embedding metrics.
The CLI is `fewshot.cli.evaluate`."""

from fewshot.evaluation.embedding_metrics import embed_split, embedding_metrics
from fewshot.evaluation.episodes import evaluate_model, evaluation_episodes
from fewshot.evaluation.checkpoints import EVAL_SPLITS, check_novel, checkpoint_splits, evaluate_checkpoint
from fewshot.evaluation.report import format_table, plot_report, report_json

__all__ = [
    "EVAL_SPLITS",
    "check_novel",
    "checkpoint_splits",
    "embed_split",
    "embedding_metrics",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluation_episodes",
    "format_table",
    "plot_report",
    "report_json",
]
