"""Transferability estimators: score a source model from its outputs on the target's K shots.

These are what a user holding K labelled examples per class would reach for instead of a
weights-only selector. Each reads one forward pass of the candidate over the shots (and
nothing else): `features` are the inputs of the source's output layer (penultimate
activations, shape (n, d)), `probs` the source's own softmax outputs (n, Z) over its Z
output units (Z = 2 for the zoo's binary models: the 2-way "dummy label" of LEEP), `y` the
target labels (n,) in 0..C-1. A higher score predicts a better source.

Implemented from the papers (no code taken from anywhere):

- LogME: You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
  Transfer Learning", ICML 2021.
- LEEP: Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
  Transferability of Learned Representations", ICML 2020.
- NCE: Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification
  Tasks", ICCV 2019.
- k-NN: leave-one-out nearest-neighbour accuracy in the source's feature space, the plain
  baseline that Sorkhei et al. (2025) found hard to beat among 23 estimators.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LOG_2PI = math.log(2 * math.pi)


# ----------------------------------------------------------------------------- LogME


def logme_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """log p(target | features, alpha, beta) of Bayesian linear regression (You et al. 2021, eq. 2).

    The model: w ~ N(0, alpha^-1 I_d), target = features w + N(0, beta^-1 I_n). The evidence
    integrates w out:
        n/2 log beta + d/2 log alpha - n/2 log 2pi - beta/2 |F m - t|^2 - alpha/2 |m|^2
        - 1/2 log |A|,   A = alpha I + beta F^T F,   m = beta A^-1 F^T t.
    Computed through the SVD of F, so it costs O(n^2 d) for n < d.
    """
    f = np.asarray(features, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    z = u.T @ t
    return _evidence(sigma, z, float(t @ t) - float(z @ z), n, d, alpha, beta)


def _evidence(sigma, z, outside, n, d, alpha, beta) -> float:
    """The evidence from the eigenvalues `sigma` of F^T F (r of them, the rest zero), the
    target's coordinates z on F's left singular vectors and its squared norm `outside` them."""
    denom = alpha + beta * sigma
    m2 = float(np.sum(beta**2 * sigma * z**2 / denom**2))  # |m|^2
    res2 = float(np.sum((alpha / denom) ** 2 * z**2)) + max(outside, 0.0)  # |F m - t|^2
    logdet = float(np.sum(np.log(denom))) + (d - len(sigma)) * math.log(alpha)
    return (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * LOG_2PI
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * logdet
    )


def logme_fit(
    features: np.ndarray, target: np.ndarray, tol: float = 1e-10, max_iter: int = 1000
) -> tuple[float, float, float]:
    """(evidence, alpha, beta) at the fixed point of MacKay's updates (You et al. 2021, Alg. 1):
    gamma = sum beta sigma_i / (alpha + beta sigma_i), alpha = gamma / |m|^2,
    beta = (n - gamma) / |F m - t|^2; each update does not decrease the evidence."""
    f = np.asarray(features, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    z = u.T @ t
    outside = float(t @ t) - float(z @ z)
    alpha, beta = 1.0, 1.0
    lo, hi = 1e-12, 1e12  # a source whose features carry nothing drives alpha to infinity
    for _ in range(max_iter):
        denom = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / denom))
        m2 = float(np.sum(beta**2 * sigma * z**2 / denom**2))
        res2 = float(np.sum((alpha / denom) ** 2 * z**2)) + max(outside, 0.0)
        new_alpha = min(max(gamma / max(m2, 1e-300), lo), hi)
        new_beta = min(max((n - gamma) / max(res2, 1e-300), lo), hi)
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _evidence(sigma, z, outside, n, d, alpha, beta), alpha, beta


def logme(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> float:
    """LogME: the maximum evidence per example, averaged over the one-hot label columns."""
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    columns = max(int(y.max()) + 1, 2)
    total = 0.0
    for c in range(columns):
        total += logme_fit(features, (y == c).astype(np.float64))[0] / n
    return total / columns


# ----------------------------------------------------------------------------- LEEP / NCE


def leep(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> float:
    """LEEP: the mean log-likelihood of the target labels under the "expected empirical
    predictor" sum_z P(y | z) theta(x)_z, where P(y | z) is the empirical conditional of target
    labels given the source's (soft) dummy labels z over the shots (Nguyen et al. 2020)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, _ = p.shape
    onehot = np.eye(max(int(y.max()) + 1, 2))[y]  # (n, C)
    joint = onehot.T @ p / n  # P(y, z), (C, Z)
    cond = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    eep = np.einsum("nz,nz->n", p, cond[y])  # sum_z P(y_i | z) theta(x_i)_z
    return float(np.mean(np.log(np.maximum(eep, 1e-300))))


def nce(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> float:
    """NCE: minus the conditional entropy H(Y | Z) of the target labels given the source's
    hard predicted labels Z = argmax theta(x), over the shots (Tran et al. 2019), in nats."""
    z = np.asarray(probs).argmax(1)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    joint = np.zeros((max(int(y.max()) + 1, 2), np.asarray(probs).shape[1]))
    np.add.at(joint, (y, z), 1.0 / n)
    pz = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.maximum(pz, 1e-300))[nz])))


# ----------------------------------------------------------------------------- k-NN


def knn(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out k-NN accuracy of the shots in feature space (Euclidean).

    k = min(3, n - 1, 2m - 3) for m shots in the smallest class: 3 as the issue's rule
    min(3, n - 1) gives from K = 3 on, but 1 at K = 2, where a held-out point has one
    same-class neighbour and a 3-vote would always go to the other class.

    With one shot per class (K = 1) leave-one-out is degenerate: each example's only other
    same-task neighbour is of the other class, so every source would score 0. The rule then
    scores how far apart the source puts the classes instead: the mean over class pairs of
    the cosine distance 1 - cos(f_a, f_b) between their examples' features, in [0, 2] (0 for a
    source that maps them to the same direction or to zero). Scores are only ever compared
    among the candidates of one draw, so the two regimes never meet.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if smallest < 2:
        return _class_separation(f, y)
    k = min(3, n - 1, 2 * smallest - 3)
    sq = np.sum(f**2, 1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    hits = 0
    for i in range(n):
        near = np.argsort(dist[i], kind="stable")[:k]
        votes = np.bincount(y[near], minlength=int(y.max()) + 1)
        best = np.flatnonzero(votes == votes.max())
        label = best[0] if len(best) == 1 else y[near[0]]  # a tie: the nearest one decides
        hits += int(label == y[i])
    return hits / n


def _class_separation(f: np.ndarray, y: np.ndarray) -> float:
    norm = np.linalg.norm(f, axis=1)
    alive = norm > 0
    unit = f / np.maximum(norm, 1e-300)[:, None]
    classes = np.unique(y)
    dists = []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ia, ib = y == classes[a], y == classes[b]
            cos = unit[ia] @ unit[ib].T
            cos[~(alive[ia][:, None] & alive[ib][None, :])] = 1.0  # a zero vector: no distance
            dists.append(float(np.mean(1.0 - cos)))
    return float(np.mean(dists)) if dists else 0.0


# ----------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Estimator:
    """A transferability estimator: a name, its score function, and what it reads."""

    name: str
    score: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    reads: str  # for reports: two sentences on what it reads


ESTIMATORS: dict[str, Estimator] = {
    "logme": Estimator(
        "logme",
        logme,
        "LogME reads the source's penultimate features of the K shots and the one-hot target "
        "labels. It scores the maximum marginal likelihood (evidence) of a Bayesian linear "
        "regression of the labels on those features, so a source whose features explain the "
        "labels linearly, without overfitting, scores high.",
    ),
    "leep": Estimator(
        "leep",
        leep,
        "LEEP reads only the source's output probabilities on the K shots (for a binary source, "
        "a 2-way dummy label) and the target labels. It is the mean log-likelihood of the "
        "labels under the empirical conditional P(target | source's label), so a source whose "
        "own outputs already split the target's classes scores high.",
    ),
    "nce": Estimator(
        "nce",
        nce,
        "NCE reads the source's hard predicted labels on the K shots and the target labels. It "
        "is minus the conditional entropy H(target | source's label): high when the source's "
        "own decision already determines the target label.",
    ),
    "knn": Estimator(
        "knn",
        knn,
        "k-NN reads the source's penultimate features of the K shots and their labels. It is "
        "the leave-one-out accuracy of a 3-nearest-neighbour vote (1 at K = 2; at K = 1, where "
        "leave-one-out is always wrong, the cosine distance between the two classes' features).",
    ),
}


def is_estimator(name: str) -> bool:
    return name in ESTIMATORS
