"""`python -m fewshot.evaluate`: the evaluation command line (`fewshot.cli.evaluate`).

The library lives in `fewshot.evaluation`; the names below are re-exported so that
`from fewshot.evaluate import evaluate_model, evaluate_checkpoint` keeps working.
"""

from __future__ import annotations

import sys

from fewshot.cli.evaluate import build_parser, main
from fewshot.evaluation import (
    EVAL_SPLITS,
    check_novel,
    embed_split,
    embedding_metrics,
    evaluate_checkpoint,
    evaluate_model,
    evaluation_episodes,
    format_table,
    plot_report,
    report_json,
)

__all__ = ["EVAL_SPLITS", "build_parser", "check_novel", "embed_split", "embedding_metrics", "evaluate_checkpoint",
           "evaluate_model", "evaluation_episodes", "format_table", "main", "plot_report", "report_json"]

if __name__ == "__main__":
    sys.exit(main())
