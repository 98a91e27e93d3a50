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
    """log p(target | features, alpha, beta) of Bayesian linear regression (You et al. 2021).

    The model: w ~ N(0, alpha^-1 I_d), target = features w + N(0, beta^-1 I_n). The evidence
    integrates w out:
        n/2 log beta + d/2 log alpha - n/2 log 2pi - beta/2 |F m - t|^2 - alpha/2 |m|^2
        - 1/2 log |A|,   A = alpha I + beta F^T F,   m = beta A^-1 F^T t.
    Computed through the SVD of F, so it costs O(n^2 d) for n < d.
    """
    f = np.asarray(features, dtype=np.float64)[None]
    t = np.asarray(target, dtype=np.float64)[:, None]
    sigma, z, outside = _spectrum(f, t)
    a = np.full((1, 1), float(alpha))
    b = np.full((1, 1), float(beta))
    return float(_evidence(sigma, z, outside, f.shape[1], f.shape[2], a, b)[0, 0])


def _spectrum(f: np.ndarray, t: np.ndarray):
    """Eigenvalues sigma (M, r, 1) of F^T F, the targets' coordinates z (M, r, C) on F's left
    singular vectors, and the squared norm of what lies outside them (M, C)."""
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    z = np.einsum("mnr,nc->mrc", u, t)
    outside = np.maximum((t**2).sum(0)[None] - (z**2).sum(1), 0.0)
    return (s**2)[:, :, None], z, outside


def _evidence(sigma, z, outside, n, d, alpha, beta) -> np.ndarray:
    """The evidence (M, C) at alpha, beta (M, C); the d - r eigenvalues past sigma are zero."""
    a, b = alpha[:, None, :], beta[:, None, :]
    denom = a + b * sigma  # (M, r, C)
    m2 = np.sum(b**2 * sigma * z**2 / denom**2, 1)  # |m|^2
    res2 = np.sum((a / denom) ** 2 * z**2, 1) + outside  # |F m - t|^2
    logdet = np.sum(np.log(denom), 1) + (d - sigma.shape[1]) * np.log(alpha)
    return (
        0.5 * n * np.log(beta)
        + 0.5 * d * np.log(alpha)
        - 0.5 * n * LOG_2PI
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * logdet
    )


def _logme_batch(f: np.ndarray, t: np.ndarray, tol: float = 1e-7, max_iter: int = 300):
    """(evidence, alpha, beta), each (M, C), at the fixed point of MacKay's updates (You et al.
    2021, Alg. 1): gamma = sum beta sigma_i / (alpha + beta sigma_i), alpha = gamma / |m|^2,
    beta = (n - gamma) / |F m - t|^2; each update does not decrease the evidence.

    A problem stops when alpha and beta change by less than `tol` (relative); the evidence is
    then within O(tol^2) of its maximum. With fewer shots than feature dimensions the labels
    can be fitted exactly and beta drifts towards infinity (the evidence approaches a finite
    supremum); `max_iter` stops that drift, 300 updates leave the score within 0.006 of it.
    """
    _, n, d = f.shape
    sigma, z, outside = _spectrum(f, t)
    m_, c_ = f.shape[0], t.shape[1]
    # one flat problem per (source, label column): sigma (P, r), z (P, r), outside (P,)
    sig = np.repeat(sigma[:, :, 0], c_, axis=0)
    zz = z.transpose(0, 2, 1).reshape(m_ * c_, -1) ** 2
    out = outside.reshape(-1)
    alpha = np.ones(m_ * c_)
    beta = np.ones(m_ * c_)
    lo, hi = 1e-12, 1e12  # a source whose features carry nothing drives alpha to infinity
    live = np.arange(m_ * c_)
    for _ in range(max_iter):
        a, b = alpha[live, None], beta[live, None]
        sg, z2 = sig[live], zz[live]
        denom = a + b * sg
        gamma = np.sum(b * sg / denom, 1)
        m2 = np.sum(b**2 * sg * z2 / denom**2, 1)
        res2 = np.sum((a / denom) ** 2 * z2, 1) + out[live]
        new_alpha = np.clip(gamma / np.maximum(m2, 1e-300), lo, hi)
        new_beta = np.clip((n - gamma) / np.maximum(res2, 1e-300), lo, hi)
        moved = (np.abs(new_alpha - a[:, 0]) > tol * a[:, 0]) | (
            np.abs(new_beta - b[:, 0]) > tol * b[:, 0]
        )
        alpha[live], beta[live] = new_alpha, new_beta
        live = live[moved]
        if len(live) == 0:
            break
    alpha, beta = alpha.reshape(m_, c_), beta.reshape(m_, c_)
    return _evidence(sigma, z, outside, n, d, alpha, beta), alpha, beta


def logme_fit(features: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """(maximum evidence, alpha, beta) for one feature matrix (n, d) and one target (n,)."""
    f = np.asarray(features, dtype=np.float64)[None]
    t = np.asarray(target, dtype=np.float64)[:, None]
    ev, alpha, beta = _logme_batch(f, t)
    return float(ev[0, 0]), float(alpha[0, 0]), float(beta[0, 0])


def _one_hot(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.int64)
    return np.eye(max(int(y.max()) + 1, 2))[y]


def _batched(fn):
    """Let an estimator written for a stack (M, n, ...) take one source (n, ...) as well."""

    def wrapper(features, probs, y):
        single = (features if features is not None else probs).ndim == 2
        if single:
            features = None if features is None else np.asarray(features)[None]
            probs = None if probs is None else np.asarray(probs)[None]
        out = fn(features, probs, np.asarray(y, dtype=np.int64))
        return float(out[0]) if single else out

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_batched
def logme(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LogME: the maximum evidence per example, averaged over the one-hot label columns."""
    f = np.asarray(features, dtype=np.float64)
    ev, _, _ = _logme_batch(f, _one_hot(y))
    return ev.mean(1) / f.shape[1]


# ----------------------------------------------------------------------------- LEEP / NCE


@_batched
def leep(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LEEP: the mean log-likelihood of the target labels under the "expected empirical
    predictor" sum_z P(y | z) theta(x)_z, where P(y | z) is the empirical conditional of target
    labels given the source's (soft) dummy labels z over the shots (Nguyen et al. 2020)."""
    p = np.asarray(probs, dtype=np.float64)
    n = p.shape[1]
    joint = np.einsum("nc,mnz->mcz", _one_hot(y), p) / n  # P(y, z)
    cond = joint / np.maximum(joint.sum(1, keepdims=True), 1e-300)  # P(y | z)
    eep = np.einsum("mnz,mnz->mn", p, cond[:, y, :])  # sum_z P(y_i | z) theta(x_i)_z
    return np.mean(np.log(np.maximum(eep, 1e-300)), 1)


@_batched
def nce(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """NCE: minus the conditional entropy H(Y | Z) of the target labels given the source's
    hard predicted labels Z = argmax theta(x), over the shots (Tran et al. 2019), in nats."""
    p = np.asarray(probs)
    z = p.argmax(2)  # (M, n)
    onehot_y = _one_hot(y)  # (n, C)
    onehot_z = np.eye(p.shape[2])[z]  # (M, n, Z)
    joint = np.einsum("nc,mnz->mcz", onehot_y, onehot_z) / len(y)
    cond = joint / np.maximum(joint.sum(1, keepdims=True), 1e-300)
    terms = np.where(joint > 0, joint * np.log(np.where(joint > 0, cond, 1.0)), 0.0)
    return terms.sum((1, 2))


# ----------------------------------------------------------------------------- k-NN


@_batched
def knn(features: np.ndarray, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
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
    n = len(y)
    classes = np.unique(y)
    smallest = int(np.bincount(y)[classes].min())
    if smallest < 2:
        return _class_separation(f, y, classes)
    k = min(3, n - 1, 2 * smallest - 3)
    sq = np.sum(f**2, 2)
    dist = np.maximum(sq[:, :, None] + sq[:, None, :] - 2 * f @ f.transpose(0, 2, 1), 0.0)
    dist[:, np.arange(n), np.arange(n)] = np.inf
    near = np.argsort(dist, axis=2, kind="stable")[:, :, :k]  # (M, n, k)
    labels = y[near]
    votes = (labels[..., None] == classes).sum(2)  # (M, n, C)
    top = votes.max(2, keepdims=True)
    unique_winner = (votes == top).sum(2) == 1
    pred = np.where(unique_winner, classes[votes.argmax(2)], labels[:, :, 0])  # tie: nearest
    return (pred == y[None]).mean(1)


def _class_separation(f: np.ndarray, y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(f, axis=2)
    alive = norm > 0
    unit = f / np.maximum(norm, 1e-300)[:, :, None]
    dists = []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ia, ib = y == classes[a], y == classes[b]
            cos = np.einsum("mad,mbd->mab", unit[:, ia], unit[:, ib])
            both = alive[:, ia][:, :, None] & alive[:, ib][:, None, :]
            cos = np.where(both, cos, 1.0)  # a zero vector: no distance
            dists.append(np.mean(1.0 - cos, (1, 2)))
    return np.mean(dists, 0) if dists else np.zeros(len(f))


# ----------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Estimator:
    """A transferability estimator: a name, its score function, and what it reads.

    `score(features (M, n, d), probs (M, n, Z), y (n,))` gives one score per source (M,)."""

    name: str
    score: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
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
