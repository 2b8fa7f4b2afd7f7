"""Evaluation as library code: per-episode accuracy of named models (`Candidate`, `Ensemble`) under one
`EvaluationSettings`, test-time views as plug-ins, checkpoint reports, embedding metrics.
The CLI is `fewshot.cli.evaluate`."""

from fewshot.evaluation.embedding_metrics import embed_split, embedding_metrics
from fewshot.evaluation.episodes import Candidate, Ensemble, evaluate_model, evaluation_episodes, score_episodes
from fewshot.evaluation.checkpoints import check_novel, checkpoint_splits, evaluate_checkpoint
from fewshot.evaluation.report import default_report_path, format_table, plot_report, report_json
from fewshot.evaluation.settings import EVAL_SPLITS, EvaluationSettings
from fewshot.evaluation.views import VIEWS, ViewKind, ViewSet, compose_views

__all__ = [
    "EVAL_SPLITS",
    "VIEWS",
    "Candidate",
    "Ensemble",
    "EvaluationSettings",
    "ViewKind",
    "ViewSet",
    "check_novel",
    "checkpoint_splits",
    "compose_views",
    "default_report_path",
    "embed_split",
    "embedding_metrics",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluation_episodes",
    "format_table",
    "plot_report",
    "report_json",
    "score_episodes",
]
