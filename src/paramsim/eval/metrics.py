"""Scores of a similarity matrix against task labels: retrieval, verification, relation,
classification. Pure numpy; every function reads `S[i, j]` (larger = more alike) and integer
task labels per model, so any method, fixed or learned, is scored the same way.

Ties. A method may give equal scores (constant similarity, duplicated models), and a score
must not reward it for the order in which numpy happens to sort them:

- average precision follows scikit-learn's `average_precision_score`: tied scores form one
  threshold, so their relevant and irrelevant items enter precision together (the one
  definition in `paramsim.ranking`, which LPS early stopping uses too);
- CMC rank-k is the expectation over a uniformly random order of tied items (a constant
  similarity scores chance, neither 0 nor 1);
- NaN scores rank below every number (a broken method scores badly instead of crashing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from paramsim.ranking import average_precision
from paramsim.ranking import clean_scores as _clean

RANKS = (1, 5, 10)


@dataclass
class RetrievalScores:
    """Mean AP over queries and the CMC curve; `cmc[k-1]` is the rank-k value."""

    map: float
    cmc: np.ndarray
    n_queries: int  # queries that had at least one relevant gallery item
    ap: np.ndarray = field(repr=False)  # per valid query
    query_labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))

    def task_ap(self) -> dict:
        """Mean AP of each task's queries (by label): which tasks a method confuses, not
        only how much."""
        return {
            t.item(): float(self.ap[self.query_labels == t].mean())
            for t in np.unique(self.query_labels)
        }

    def rank(self, k: int) -> float:
        if len(self.cmc) == 0:
            return float("nan")
        return float(self.cmc[min(k, len(self.cmc)) - 1])


def first_hit_cmc(scores: np.ndarray, relevant: np.ndarray, max_rank: int) -> np.ndarray:
    """P(first relevant item within the top k) for k = 1..max_rank, ties in random order.

    With `a` irrelevant items strictly above the best relevant score and a tied block of
    `r` relevant and `m` irrelevant items at that score, the first hit lands at a + J where
    P(J > j) = C(m, j) / C(m + r, j): the first j of the block are all irrelevant.
    """
    rel = np.asarray(relevant, dtype=bool)
    out = np.zeros(max_rank)
    if not rel.any():
        return out
    s = _clean(scores)
    best = s[rel].max()
    above = int(np.sum(~rel & (s > best)))
    tied = s == best
    r = int(np.sum(tied & rel))
    m = int(np.sum(tied & ~rel))
    for k in range(1, max_rank + 1):
        j = k - above
        if j <= 0:
            continue
        if j > m:
            out[k - 1] = 1.0
            continue
        i = np.arange(j)
        out[k - 1] = 1.0 - float(np.prod((m - i) / (m + r - i)))
    return out


def retrieval(
    S: np.ndarray,
    labels: np.ndarray,
    queries: Sequence[int],
    gallery: Sequence[int],
    max_rank: int | None = None,
) -> RetrievalScores:
    """mAP and CMC of `queries` against `gallery` (model indices into S and labels).

    Query and gallery may overlap (every held-out model querying all the others); a query
    never retrieves itself. Queries without any relevant gallery item are left out and not
    counted in `n_queries`.
    """
    S = np.asarray(S)
    labels = np.asarray(labels)
    q = np.asarray(queries, dtype=np.int64)
    g = np.asarray(gallery, dtype=np.int64)
    longest = len(g) - (1 if np.intersect1d(q, g).size else 0)
    max_rank = longest if max_rank is None else min(max_rank, longest)
    max_rank = max(max_rank, 0)
    aps, cmcs, kept = [], [], []
    for qi in q:
        keep = g != qi
        cand = g[keep]
        rel = labels[cand] == labels[qi]
        if not rel.any():
            continue
        scores = S[qi, cand]
        aps.append(average_precision(scores, rel))
        cmcs.append(first_hit_cmc(scores, rel, max_rank))
        kept.append(labels[qi])
    if not aps:
        return RetrievalScores(float("nan"), np.zeros(0), 0, np.zeros(0))
    return RetrievalScores(
        float(np.mean(aps)),
        np.mean(cmcs, axis=0),
        len(aps),
        np.asarray(aps, dtype=np.float64),
        np.asarray(kept),
    )


def verification_auc(S: np.ndarray, labels: np.ndarray, indices: Sequence[int]) -> float:
    """ROC-AUC of same-task against different-task pairs, over all pairs i < j of `indices`.

    Asymmetric similarities are averaged over both directions first. NaN when only one kind
    of pair exists.
    """
    from sklearn.metrics import roc_auc_score

    idx = np.asarray(indices, dtype=np.int64)
    sub = np.asarray(S, dtype=np.float64)[np.ix_(idx, idx)]
    sub = 0.5 * (sub + sub.T)
    lab = np.asarray(labels)[idx]
    iu = np.triu_indices(len(idx), k=1)
    same = lab[iu[0]] == lab[iu[1]]
    if same.all() or not same.any():
        return float("nan")
    scores = np.nan_to_num(sub[iu], nan=-np.inf)
    # roc_auc_score rejects infinities; rank-preserving replacement keeps the AUC identical
    finite = np.isfinite(scores)
    if not finite.all():
        low = scores[finite].min() - 1.0 if finite.any() else 0.0
        scores = np.where(finite, scores, low)
    return float(roc_auc_score(same, scores))


def task_similarity(
    S: np.ndarray, labels: np.ndarray, indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Tasks present among `indices` (sorted) and their (T, T) mean similarity.

    Diagonal blocks leave out each model's similarity to itself; the matrix is symmetrised.
    """
    idx = np.asarray(indices, dtype=np.int64)
    sub = np.asarray(S, dtype=np.float64)[np.ix_(idx, idx)]
    sub = 0.5 * (sub + sub.T)
    lab = np.asarray(labels)[idx]
    tasks = np.unique(lab)
    out = np.full((len(tasks), len(tasks)), np.nan)
    for a, ta in enumerate(tasks):
        ia = lab == ta
        for b in range(a, len(tasks)):
            ib = lab == tasks[b]
            block = sub[np.ix_(ia, ib)]
            if a == b:
                n = block.shape[0]
                vals = block[~np.eye(n, dtype=bool)]
                out[a, a] = vals.mean() if vals.size else np.nan
            else:
                out[a, b] = out[b, a] = block.mean()
    return tasks, out


def relation_spearman(
    S: np.ndarray, labels: np.ndarray, indices: Sequence[int], relation: np.ndarray
) -> float:
    """Spearman rho between task-pair similarity and the ground-truth relation.

    `relation[a, b]` (e.g. shared classes, `paramsim.data.relation_matrix`) is indexed by the
    task labels. Only off-diagonal pairs a < b count. NaN when either side is constant.
    """
    from scipy.stats import spearmanr

    tasks, sim = task_similarity(S, labels, indices)
    if len(tasks) < 3:
        return float("nan")
    rel = np.asarray(relation, dtype=np.float64)[np.ix_(tasks, tasks)]
    iu = np.triu_indices(len(tasks), k=1)
    x, y = sim[iu], rel[iu]
    ok = np.isfinite(x)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def classification_accuracy(
    S: np.ndarray,
    labels: np.ndarray,
    queries: Sequence[int],
    references: Sequence[int],
    rule: str = "mean",
) -> float:
    """Top-1 accuracy of predicting each query's task from reference models of known tasks.

    rule "mean" (nearest class mean in similarity): the task whose references have the
    highest mean similarity to the query; rule "1nn": the task of the most similar reference.
    Exact ties go to the lowest task label (deterministic).
    """
    q = np.asarray(queries, dtype=np.int64)
    r = np.asarray(references, dtype=np.int64)
    if len(q) == 0 or len(r) == 0:
        return float("nan")
    labels = np.asarray(labels)
    r = r[np.argsort(labels[r], kind="stable")]  # argmax takes the first: the lowest label
    sim = _clean(np.asarray(S)[np.ix_(q, r)])
    ref_lab = labels[r]
    if rule == "1nn":
        pred = ref_lab[np.argmax(sim, axis=1)]
    elif rule == "mean":
        tasks = np.unique(ref_lab)
        means = np.stack([sim[:, ref_lab == t].mean(axis=1) for t in tasks], axis=1)
        means = np.where(np.isnan(means), -np.inf, means)
        pred = tasks[np.argmax(means, axis=1)]
    else:
        raise ValueError(f"unknown classification rule {rule!r}; use 'mean' or '1nn'")
    return float(np.mean(pred == labels[q]))
