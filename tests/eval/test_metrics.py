import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from paramsim.eval import metrics


def _with_scores(query_scores: list[float], labels: list[int]):
    """S where model 0 is the query and models 1.. score `query_scores` against it."""
    n = len(labels)
    S = np.zeros((n, n))
    S[0, 1:] = query_scores
    S[1:, 0] = query_scores
    return S, np.asarray(labels)


def test_hand_worked_ap_and_cmc():
    # ranked: rel, irr, rel, irr -> AP = (1/1 + 2/3) / 2
    S, lab = _with_scores([0.9, 0.8, 0.7, 0.1], [0, 0, 1, 0, 1])
    r = metrics.retrieval(S, lab, [0], [1, 2, 3, 4])
    assert r.map == pytest.approx((1 + 2 / 3) / 2)
    assert r.rank(1) == 1.0
    # ranked: irr, rel, irr, rel -> AP = (1/2 + 2/4) / 2, first hit at 2
    S, lab = _with_scores([0.9, 0.8, 0.7, 0.1], [0, 1, 0, 1, 0])
    r = metrics.retrieval(S, lab, [0], [1, 2, 3, 4])
    assert r.map == pytest.approx(0.5)
    assert list(r.cmc) == [0.0, 1.0, 1.0, 1.0]
    assert r.rank(5) == 1.0  # beyond the gallery length: the last value


def test_query_never_retrieves_itself():
    S = np.eye(3) * 10 + 0.1
    lab = np.array([0, 0, 1])
    r = metrics.retrieval(S, lab, [0, 1, 2], [0, 1, 2])
    # model 2 has no relevant item and is left out; 0 and 1 see each other at 0.1 vs 0.1
    assert r.n_queries == 2
    assert len(r.cmc) == 2


def test_ties_constant_similarity_is_chance():
    S, lab = _with_scores([0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1, 1])
    r = metrics.retrieval(S, lab, [0], [1, 2, 3, 4])
    assert r.map == pytest.approx(0.25)
    assert r.cmc == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_partial_tie_expected_rank():
    # one irrelevant strictly above, then a block of 1 relevant + 2 irrelevant
    S, lab = _with_scores([0.9, 0.5, 0.5, 0.5], [0, 1, 0, 1, 1])
    r = metrics.retrieval(S, lab, [0], [1, 2, 3, 4])
    assert r.cmc == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


def test_nan_scores_rank_last():
    S, lab = _with_scores([np.nan, 0.1, 0.2], [0, 0, 1, 1])
    r = metrics.retrieval(S, lab, [0], [1, 2, 3])
    assert r.rank(1) == 0.0
    assert r.map == pytest.approx(1 / 3)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_ap_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 30))
    scores = np.round(rng.standard_normal(n), 1)  # rounding makes ties
    rel = rng.random(n) < 0.4
    if not rel.any():
        rel[0] = True
    expected = average_precision_score(rel, scores)
    assert metrics.average_precision(scores, rel) == pytest.approx(expected)


def test_map_and_rank1_match_pytorch_metric_learning():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from paramsim.features.base import cosine_matrix

    rng = np.random.default_rng(0)
    lab = np.repeat(np.arange(4), 5)
    emb = rng.standard_normal((20, 6)) + 1.5 * rng.standard_normal((4, 6))[lab]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # L2 ranking == cosine ranking
    S = cosine_matrix(emb)
    include = ("mean_average_precision", "precision_at_1")
    # disjoint query / gallery; k = the whole gallery makes PML's AP the full AP
    q, g = np.arange(0, 20, 3), np.setdiff1d(np.arange(20), np.arange(0, 20, 3))
    calc = AccuracyCalculator(include=include, k=len(g), device=torch.device("cpu"))
    acc = calc.get_accuracy(emb[q], lab[q], emb[g], lab[g], ref_includes_query=False)
    r = metrics.retrieval(S, lab, q, g)
    assert r.map == pytest.approx(acc["mean_average_precision"], abs=1e-6)
    assert r.rank(1) == pytest.approx(acc["precision_at_1"], abs=1e-6)
    # every model queries all others
    calc = AccuracyCalculator(include=include, k=19, device=torch.device("cpu"))
    acc = calc.get_accuracy(emb, lab)
    r = metrics.retrieval(S, lab, np.arange(20), np.arange(20))
    assert r.map == pytest.approx(acc["mean_average_precision"], abs=1e-6)
    assert r.rank(1) == pytest.approx(acc["precision_at_1"], abs=1e-6)


def test_verification_auc_hand_worked():
    lab = np.array([0, 0, 1, 1])
    S = np.full((4, 4), 0.1)
    S[0, 1] = S[1, 0] = 0.9
    S[2, 3] = S[3, 2] = 0.2
    S[0, 2] = S[2, 0] = 0.5
    # same-task 0.9 beats all 4 cross pairs, 0.2 beats 3 of them
    assert metrics.verification_auc(S, lab, range(4)) == pytest.approx(7 / 8)
    assert np.isnan(metrics.verification_auc(S, lab, [0, 1]))


def test_relation_spearman_and_task_similarity():
    from paramsim.data import Task, relation_matrix

    tasks = [Task(((0,), (1,))), Task(((0,), (2,))), Task(((3,), (4,))), Task(((5,), (6,)))]
    rel = relation_matrix(tasks).numpy()
    lab = np.repeat(np.arange(4), 2)
    emb_task = np.array([[1.0, 0.3, 0], [0.3, 1.0, 0], [0, 0, 1.0], [0, -1.0, 0.2]])
    S = emb_task[lab] @ emb_task[lab].T
    order, tsim = metrics.task_similarity(S, lab, range(8))
    assert list(order) == [0, 1, 2, 3]
    assert tsim[0, 1] == pytest.approx(S[0, 2])
    # the sharing pair (0, 1) is the most similar of the six pairs -> positive rho
    rho = metrics.relation_spearman(S, lab, range(8), rel)
    from scipy.stats import spearmanr

    iu = np.triu_indices(4, 1)
    assert rho == pytest.approx(spearmanr(tsim[iu], rel[iu]).statistic)
    assert rho > 0


def test_classification_rules():
    lab = np.array([0, 0, 1, 1, 0, 1])
    S = np.zeros((6, 6))
    # query 4 (task 0): nearest single reference is 2 (task 1) but task 0 wins on the mean
    S[4, :4] = [0.6, 0.6, 0.9, 0.0]
    S[5, :4] = [0.0, 0.1, 0.5, 0.5]
    assert metrics.classification_accuracy(S, lab, [4, 5], [0, 1, 2, 3], "mean") == 1.0
    assert metrics.classification_accuracy(S, lab, [4, 5], [0, 1, 2, 3], "1nn") == 0.5
    with pytest.raises(ValueError):
        metrics.classification_accuracy(S, lab, [4], [0], "knn")
    # exact ties go to the lowest task label under both rules, whatever the reference order
    tie = np.ones((6, 6))
    for rule in ("mean", "1nn"):
        assert metrics.classification_accuracy(tie, lab, [4, 5], [3, 2, 1, 0], rule) == 0.5
        assert metrics.classification_accuracy(tie, lab, [4], [3, 2, 1, 0], rule) == 1.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_scores_invariant_to_model_order_and_affine_rescaling(seed):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 4, size=16)
    lab[:4] = np.arange(4)
    S = rng.standard_normal((16, 16))
    S = S + S.T
    perm = rng.permutation(16)
    inv = np.argsort(perm)
    S2, lab2 = 3.0 * S[np.ix_(perm, perm)] + 1.0, lab[perm]
    idx, idx2 = np.arange(16), inv[np.arange(16)]
    a = metrics.retrieval(S, lab, idx, idx)
    b = metrics.retrieval(S2, lab2, idx2, idx2)
    assert a.map == pytest.approx(b.map)
    assert a.cmc == pytest.approx(b.cmc)
    assert metrics.verification_auc(S, lab, idx) == pytest.approx(
        metrics.verification_auc(S2, lab2, idx2)
    )
    rel = (np.add.outer(np.arange(4), np.arange(4)) % 3).astype(float)
    r1 = metrics.relation_spearman(S, lab, idx, rel)
    r2 = metrics.relation_spearman(S2, lab2, idx2, rel)
    assert (np.isnan(r1) and np.isnan(r2)) or r1 == pytest.approx(r2)


def test_lps_early_stopping_and_the_protocol_share_one_average_precision():
    from paramsim.lps import retrieval_map
    from paramsim.vectors import cosine_matrix

    # ties everywhere: a constant embedding gets chance-level AP under sklearn's tie rule,
    # where a stable sort would have rewarded the order of the models
    labels = np.array([0, 0, 1, 1, 1])
    emb = np.ones((5, 3))
    S = cosine_matrix(emb)
    protocol_map = metrics.retrieval(S, labels, range(5), range(5)).map
    assert retrieval_map(emb, labels) == pytest.approx(protocol_map)
    # query 0 has 1 relevant of 4 tied, query 2 has 2 of 4: chance precision 1/4 and 2/4
    assert protocol_map == pytest.approx((2 * 0.25 + 3 * 0.5) / 5)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12, 4))
    labels = np.repeat(np.arange(4), 3)
    assert retrieval_map(emb, labels) == pytest.approx(
        metrics.retrieval(cosine_matrix(emb), labels, range(12), range(12)).map
    )


# --- mean and std over splits: one usable split has no spread to report


def test_std_of_one_split_is_undefined_not_zero():
    import math

    from paramsim.eval.scoring import mean_std

    assert math.isnan(mean_std([0.7])["std"])


def test_std_when_all_but_one_split_is_nan_is_undefined():
    import math

    from paramsim.eval.scoring import mean_std

    got = mean_std([0.7, float("nan"), float("nan")])

    from paramsim.eval.scoring import mean_std

    assert got["mean"] == 0.7 and math.isnan(got["std"])


def test_task_ap_names_the_confused_task():
    # tasks 0 and 1 (two models each) are separated perfectly; task 2's models each rank a
    # task-1 model first: AP 1/2 for both of them
    lab = np.array([0, 0, 1, 1, 2, 2])
    S = np.full((6, 6), 0.0)
    for a, b in ((0, 1), (2, 3)):
        S[a, b] = S[b, a] = 1.0
    S[4, 5] = S[5, 4] = 0.5
    S[4, 2] = S[2, 4] = S[5, 3] = S[3, 5] = 0.8
    r = metrics.retrieval(S, lab, range(6), range(6))
    assert r.task_ap() == pytest.approx({0: 1.0, 1: 1.0, 2: 0.5})
    assert np.mean(list(r.task_ap().values())) == pytest.approx(r.map)  # equal query counts


def test_task_ap_leaves_out_queries_without_a_partner():
    lab = np.array([0, 0, 1])
    S = np.eye(3) + 0.1
    S[0, 1] = S[1, 0] = 0.9
    assert metrics.retrieval(S, lab, range(3), range(3)).task_ap() == pytest.approx({0: 1.0})


def test_task_ap_keeps_the_callers_labels():
    lab = np.array(["a", "a", "b", "b"])
    S = np.array([[1, 0.9, 0.1, 0.2], [0.9, 1, 0.3, 0.1], [0.1, 0.3, 1, 0.25], [0.2, 0.1, 0.25, 1]])
    got = metrics.retrieval(S, lab, range(4), range(4)).task_ap()
    assert got.keys() == {"a", "b"} and got["a"] == pytest.approx(1.0)
    assert got["b"] == pytest.approx((0.5 + 1.0) / 2)  # model 2 ranks model 1 above model 3
