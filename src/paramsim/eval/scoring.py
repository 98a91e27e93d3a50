"""Scores of one split and their summary over splits (mean, sample std, mean CMC curve)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from paramsim.eval import metrics
from paramsim.eval.splits import Split

SCORES = ("map", "rank1", "rank5", "rank10", "auc", "relation_spearman", "classification")
CMC_RANKS = 20  # length of the stored CMC curve


def score_split(
    S: np.ndarray,
    labels: np.ndarray,
    split: Split,
    relation: np.ndarray,
    local: Mapping[int, int] | None = None,
    classification_rule: str = "mean",
) -> dict[str, Any]:
    """All scores of one split. `local` maps model ids to rows of S when S covers a subset."""

    def ix(ids: Sequence[int]) -> np.ndarray:
        if local is None:
            return np.asarray(ids, dtype=np.int64)
        return np.asarray([local[i] for i in ids], dtype=np.int64)

    if local is None:
        lab = labels
    else:
        lab = np.empty(len(S), dtype=np.int64)
        for model, row in local.items():
            lab[row] = labels[model]
    ret = metrics.retrieval(S, lab, ix(split.query_ids), ix(split.gallery_ids), CMC_RANKS)
    test = ix(split.test_ids)
    out: dict[str, Any] = {
        "map": ret.map,
        "rank1": ret.rank(1),
        "rank5": ret.rank(5),
        "rank10": ret.rank(10),
        "auc": metrics.verification_auc(S, lab, test),
        "relation_spearman": metrics.relation_spearman(S, lab, test, relation),
        "classification": (
            metrics.classification_accuracy(
                S, lab, ix(split.seen_ids), ix(split.train_ids), classification_rule
            )
            if split.seen_ids and split.train_ids
            else float("nan")
        ),
        "n_queries": ret.n_queries,
        "cmc": ret.cmc.tolist(),
        "task_ap": ret.task_ap(),  # task label -> mean AP of its queries
    }
    return out


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; NaN for one split) ignoring NaN."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan")}
    std = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "std": std}


def mean_task_ap(
    per_split: Sequence[Mapping[int, float]], task_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per task, its mean AP over the splits where it had a query with a same-task partner
    (every split that held it out, unless it has a single model there), and how many."""
    collected: dict[int, list[float]] = {}
    for split in per_split:
        for task, ap in split.items():
            collected.setdefault(int(task), []).append(ap)
    return {
        task_names[t]: {"mean": float(np.mean(v)), "splits": len(v)}
        for t, v in sorted(collected.items())
    }


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    n = min((len(c) for c in curves), default=0)
    if n == 0:
        return []
    return np.mean([np.asarray(c[:n]) for c in curves], axis=0).tolist()
