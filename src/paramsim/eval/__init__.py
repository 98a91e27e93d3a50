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
    known_method_names,
    make_splits,
    open_zoo,
    parse_method_names,
    register_method,
    resolve_method,
    unregister_method,
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
    "known_method_names",
    "make_splits",
    "open_zoo",
    "parse_method_names",
    "register_method",
    "relation_spearman",
    "resolve_method",
    "retrieval",
    "task_similarity",
    "unregister_method",
    "verification_auc",
    "write_report",
]
