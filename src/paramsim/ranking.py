"""Average precision: the one definition every part of paramsim ranks with (the evaluation
protocol, LPS early stopping, the benchmarks), so a score means the same thing everywhere.

Ties follow scikit-learn's `average_precision_score`: tied scores form one threshold, so
their relevant and irrelevant items enter precision together (a method gains nothing from
the order in which numpy happens to sort equal scores). NaN scores rank below every number.
"""

from __future__ import annotations

import numpy as np

from paramsim.vectors import cosine_matrix


def clean_scores(scores: np.ndarray) -> np.ndarray:
    """float64 scores with NaN replaced by -inf (a broken score ranks last, never crashes)."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(s), -np.inf, s)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranked list, equal to sklearn's `average_precision_score(relevant, scores)`.

    NaN when nothing is relevant.
    """
    rel = np.asarray(relevant, dtype=bool)
    if not rel.any():
        return float("nan")
    s = clean_scores(scores)
    order = np.argsort(-s, kind="stable")
    s, rel = s[order], rel[order]
    # last index of each block of equal scores
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
    tp = np.cumsum(rel)[ends]
    precision = tp / (ends + 1)
    recall_step = np.diff(np.r_[0, tp]) / tp[-1]
    return float(np.sum(recall_step * precision))


def mean_average_precision(
    S: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    exclude: np.ndarray | None = None,
) -> float:
    """Mean AP of each row of `S` (queries x gallery, larger = more alike); a gallery item is
    relevant when its label equals the query's. `exclude[i, j]` True leaves pair (i, j) out
    (a query's own entry when queries and gallery are one set). Queries without a relevant
    item are left out; NaN when none is left."""
    S = np.asarray(S)
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    aps = []
    for i in range(S.shape[0]):
        keep = np.ones(len(g), dtype=bool) if exclude is None else ~np.asarray(exclude[i])
        rel = g[keep] == q[i]
        if rel.any():
            aps.append(average_precision(S[i, keep], rel))
    return float(np.mean(aps)) if aps else float("nan")


def all_vs_all_map(emb: np.ndarray, labels: np.ndarray) -> float:
    """mAP by cosine with every embedding querying all the others (never itself)."""
    lab = np.asarray(labels)
    S = cosine_matrix(emb)
    return mean_average_precision(S, lab, lab, exclude=np.eye(len(lab), dtype=bool))
