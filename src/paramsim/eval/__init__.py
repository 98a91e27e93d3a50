"""Evaluation: task splits (`splits`), metrics on similarity matrices (`metrics`), scores of a
split (`scoring`), the loop over methods and splits (`protocol`), the same on a zoo
(`on_zoo`) and the report (`report`)."""

from paramsim.eval.metrics import (
    RetrievalScores,
    average_precision,
    classification_accuracy,
    relation_spearman,
    retrieval,
    task_similarity,
    verification_auc,
)
from paramsim.eval.on_zoo import evaluate_zoo
from paramsim.eval.protocol import evaluate
from paramsim.eval.report import format_table, write_report
from paramsim.eval.splits import Split, index_tasks, make_class_splits, make_splits

__all__ = [
    "RetrievalScores",
    "Split",
    "average_precision",
    "classification_accuracy",
    "evaluate",
    "evaluate_zoo",
    "format_table",
    "index_tasks",
    "make_class_splits",
    "make_splits",
    "relation_spearman",
    "retrieval",
    "task_similarity",
    "verification_auc",
    "write_report",
]
