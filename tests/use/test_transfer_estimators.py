"""Each estimator against a case worked by hand or an independent formula."""

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from paramsim.use.transfer.estimators import (
    ESTIMATORS,
    knn,
    leep,
    logme,
    logme_evidence,
    logme_fit,
    nce,
)


def _direct_evidence(f: np.ndarray, t: np.ndarray, alpha: float, beta: float) -> float:
    """The marginal likelihood written the other way: t ~ N(0, F F^T / alpha + I / beta)."""
    cov = f @ f.T / alpha + np.eye(len(t)) / beta
    return float(multivariate_normal(np.zeros(len(t)), cov).logpdf(t))


@pytest.fixture
def small():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(7, 4))
    t = (f @ np.array([1.0, -0.5, 0.0, 0.3]) + 0.4 * rng.normal(size=7) > 0).astype(float)
    return f, t


def test_logme_evidence_equals_the_gaussian_marginal(small):
    f, t = small
    for alpha, beta in [(0.1, 3.0), (2.0, 0.5), (40.0, 10.0)]:
        assert logme_evidence(f, t, alpha, beta) == pytest.approx(
            _direct_evidence(f, t, alpha, beta), abs=1e-9
        )
    wide = np.random.default_rng(0).normal(size=(3, 10))  # n < d, as with K = 1 or 5 shots
    assert logme_evidence(wide, np.array([1.0, 0, 1]), 0.7, 2.0) == pytest.approx(
        _direct_evidence(wide, np.array([1.0, 0, 1]), 0.7, 2.0), abs=1e-9
    )


def test_logme_fixed_point_is_the_brute_force_maximum(small):
    from scipy.optimize import minimize

    f, t = small
    best, alpha, beta = logme_fit(f, t)
    grid = np.exp(np.linspace(-6, 6, 121))
    values = np.array([[_direct_evidence(f, t, a, b) for b in grid] for a in grid])
    i, j = np.unravel_index(values.argmax(), values.shape)
    assert values.max() <= best + 1e-9  # the fixed point is at least as good as every grid point
    # polish the grid's best point with a generic optimiser: the same maximum, found another way
    res = minimize(
        lambda v: -_direct_evidence(f, t, math.exp(v[0]), math.exp(v[1])),
        [math.log(grid[i]), math.log(grid[j])],
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 4000},
    )
    assert -res.fun == pytest.approx(best, abs=1e-9)
    assert math.log(alpha) == pytest.approx(res.x[0], abs=1e-4)
    assert math.log(beta) == pytest.approx(res.x[1], abs=1e-4)


def test_logme_averages_the_one_hot_columns_per_example(small):
    f, t = small
    y = t.astype(int)
    expected = (logme_fit(f, 1.0 - t)[0] + logme_fit(f, t)[0]) / 2 / len(y)
    assert logme(f, None, y) == pytest.approx(expected, abs=1e-12)
    # features that carry the label beat features that do not
    rng = np.random.default_rng(1)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    good = np.c_[y * 3.0 + 0.1 * rng.normal(size=8), rng.normal(size=8)]
    bad = rng.normal(size=(8, 2))
    assert logme(good, None, y) > logme(bad, None, y)


def test_leep_equals_a_direct_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 2))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([0, 1, 1, 0, 1, 0])
    n = len(y)
    joint = [
        [sum(probs[i, z] for i in range(n) if y[i] == c) / n for z in range(2)] for c in (0, 1)
    ]
    marg = [joint[0][z] + joint[1][z] for z in range(2)]
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[y[i]][z] / marg[z] * probs[i, z] for z in range(2)))
    assert leep(None, probs, y) == pytest.approx(total / n, abs=1e-12)
    # a source whose output already is the target label scores near 0, the maximum
    sure = np.eye(2)[y] * 0.98 + 0.01
    assert leep(None, sure, y) > leep(None, probs, y)


def test_nce_by_hand():
    # z = [0, 0, 1, 1], y = [0, 1, 1, 1]: H(Y | Z=0) = log 2, H(Y | Z=1) = 0, P(Z=0) = 1/2
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    assert nce(None, probs, np.array([0, 1, 1, 1])) == pytest.approx(-0.5 * math.log(2))
    assert nce(None, probs, np.array([0, 0, 1, 1])) == pytest.approx(0.0)  # Z determines Y


def test_knn_leave_one_out_by_hand():
    # points on a line; k = 3. Labels: 0 0 0 1 1 1, but the point at 2.9 is labelled 0.
    f = np.array([[0.0], [1.0], [2.9], [3.0], [4.0], [5.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    # x=0: nn 1, 2.9, 3 -> votes 0,0,1 -> 0 (hit); x=1: 0, 2.9, 3 -> 0 (hit);
    # x=2.9: 3, 1, 4 -> 1,0,1 -> 1 (miss); x=3: 2.9, 4, 1/5 tie at distance 2 -> stable order
    # picks index 1 (x=1): votes 0,1,0 -> 0 (miss); x=4: 3, 5, 2.9 -> 1,1,0 -> 1 (hit);
    # x=5: 4, 3, 2.9 -> 1 (hit). 4 of 6.
    assert knn(f, None, y) == pytest.approx(4 / 6)
    # two shots per class: k = 1 (a 3-vote would always lose to the other class's two)
    assert knn(f[[0, 1, 3, 4]], None, y[[0, 1, 3, 4]]) == pytest.approx(1.0)
    assert knn(f[[0, 2, 1, 3]], None, np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_knn_with_one_shot_per_class_scores_the_angle_between_them():
    y = np.array([0, 1])
    assert knn(np.array([[1.0, 0.0], [0.0, 2.0]]), None, y) == pytest.approx(1.0)
    assert knn(np.array([[1.0, 0.0], [3.0, 0.0]]), None, y) == pytest.approx(0.0)
    assert knn(np.array([[1.0, 0.0], [-1.0, 0.0]]), None, y) == pytest.approx(2.0)
    assert knn(np.zeros((2, 3)), None, y) == pytest.approx(0.0)  # dead features separate nothing
    assert set(ESTIMATORS) == {"logme", "leep", "nce", "knn"}


@pytest.mark.parametrize("name", ["logme", "leep", "nce", "knn"])
@pytest.mark.parametrize("per_class", [1, 2, 4])
def test_a_stack_of_sources_scores_each_as_alone(name, per_class):
    rng = np.random.default_rng(per_class)
    y = np.repeat([0, 1], per_class)
    feats = rng.normal(size=(3, len(y), 5))
    feats[2] = 0.0  # a dead source
    logits = rng.normal(size=(3, len(y), 2))
    probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    score = ESTIMATORS[name].score
    together = score(feats, probs, y)
    alone = [score(feats[i], probs[i], y) for i in range(3)]
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(together))
