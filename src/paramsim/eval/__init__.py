"""Evaluation: task splits, metrics on similarity matrices, the protocol and its report."""

from paramsim.eval.metrics import (
    RetrievalScores,
    average_precision,
    classification_accuracy,
    relation_spearman,
    retrieval,
    task_similarity,
    verification_auc,
)
from paramsim.eval.protocol import (
    Split,
    evaluate,
    evaluate_zoo,
    index_tasks,
    make_splits,
)
from paramsim.eval.report import format_table, write_report

__all__ = [
    "RetrievalScores",
    "Split",
    "average_precision",
    "classification_accuracy",
    "evaluate",
    "evaluate_zoo",
    "format_table",
    "index_tasks",
    "make_splits",
    "relation_spearman",
    "retrieval",
    "task_similarity",
    "verification_auc",
    "write_report",
]
