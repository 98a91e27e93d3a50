import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from paramsim.data import relation_matrix
from paramsim.errors import ParamsimError
from paramsim.use._common import load_similarity
from paramsim.use.relate import classical_mds, relate, summary_lines, write_relation


def test_classical_mds_recovers_planar_distances():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(12, 2))
    D = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    got = classical_mds(D)
    D2 = np.linalg.norm(got[:, None] - got[None], axis=-1)
    np.testing.assert_allclose(D2, D, atol=1e-8)


def test_relate_matches_truth_layout_and_writes_files(use_zoo, tmp_path):
    res = relate(use_zoo, load_similarity(method="gram1"))
    T = np.asarray(res["task_similarity"])
    n = len(use_zoo.tasks)
    assert T.shape == (n, n)
    np.testing.assert_allclose(T, T.T)
    np.testing.assert_array_equal(res["relation"], relation_matrix(use_zoo.tasks).numpy())
    iu = np.triu_indices(n, k=1)  # rho is the rank correlation of T with the truth
    want = spearmanr(T[iu], np.asarray(res["relation"])[iu]).statistic
    assert res["spearman"] == pytest.approx(want)
    sims = [p["similarity"] for p in res["most_related"]]
    assert sims == sorted(sims, reverse=True)
    low = [p["similarity"] for p in res["least_related"]]
    assert low == sorted(low) and low[0] <= sims[-1]
    assert len(res["map"]["x"]) == len(use_zoo)
    written = write_relation(res, tmp_path / "rel", key="k1")
    assert set(written) == {"relation.json", "relation_matrix.png", "dendrogram.png", "map.png"}
    doc = json.loads((tmp_path / "rel" / "relation.json").read_text())
    assert doc["settings_key"] == "k1" and doc["tasks"] == [t.name for t in use_zoo.tasks]
    assert not list((tmp_path / "rel").glob("*.tmp"))
    assert "Spearman" in summary_lines(res)[0]


def test_gram1_relates_tasks_that_share_classes(use_zoo):
    """Two class triangles: tasks sharing a class should be more alike than the rest."""
    res = relate(use_zoo, load_similarity(method="gram1"))
    by = res["mean_similarity_by_shared_classes"]
    assert by["1"] > by["0"]


@dataclass
class _Reordered:
    """A zoo whose models come in another order (same tasks)."""

    base: object
    order: list[int]
    path: str = "reordered"
    tasks: list = field(init=False)

    def __post_init__(self):
        self.tasks = list(self.base.tasks)

    @property
    def task_ids(self):
        return np.asarray(self.base.task_ids)[self.order]

    def networks(self):
        nets = self.base.networks()
        return [nets[i] for i in self.order]


@settings(max_examples=5, deadline=None)
@given(st.randoms(use_true_random=False))
def test_relation_does_not_depend_on_model_order(use_zoo_cached, rnd):
    zoo, ref = use_zoo_cached
    order = list(range(len(zoo)))
    rnd.shuffle(order)
    res = relate(_Reordered(zoo, order), load_similarity(method="gram1"))
    np.testing.assert_allclose(res["task_similarity"], ref["task_similarity"], atol=1e-10)
    assert res["spearman"] == pytest.approx(ref["spearman"])


@pytest.fixture(scope="module")
def use_zoo_cached(use_zoo):
    return use_zoo, relate(use_zoo, load_similarity(method="gram1"))


def test_relate_needs_three_tasks(use_zoo):
    small = _Reordered(use_zoo, [0, 1, 2, 3, 4, 5])
    small.tasks = small.tasks[:2]
    with pytest.raises(ParamsimError, match="at least 3 tasks"):
        relate(small, load_similarity(method="gram1"))


def test_load_similarity_needs_exactly_one_source():
    with pytest.raises(ParamsimError, match="either --model"):
        load_similarity()
    with pytest.raises(ParamsimError, match="unknown method"):
        load_similarity(method="nosuch")
