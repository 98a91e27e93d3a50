"""Exact search on an IVF index by cell bounds: the exhaustive answer, reading fewer cells."""

from __future__ import annotations

import faiss
import faiss.contrib.torch_utils  # noqa: F401  as in use: pytorch-metric-learning imports it
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramsim.errors import ParamsimError
from paramsim.index import EmbeddingIndex
from paramsim.index_bounded import bounded_search, cell_cones, upper_bounds


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def _data(seed: int, n: int, dim: int, clusters: int, spread: float, zeros: int, dups: int):
    """Unit rows around `clusters` centres (uniform on the sphere when spread is large), with
    some zero rows and exact duplicates (ties) mixed in."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    x[rng.choice(n, dups, replace=False)] = x[0]
    x[rng.choice(n, zeros, replace=False)] = 0
    q = centres[rng.integers(0, clusters, 7)] + spread * rng.normal(size=(7, dim))
    q[0] = x[1]  # a stored vector: its own score is the maximum
    return _unit(x), _unit(q)


def _ivf(x: np.ndarray, nlist: int) -> faiss.Index:
    """A faiss IVF index with as many cells as asked, even for a handful of vectors."""
    index = faiss.IndexIVFFlat(
        faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.min_points_per_centroid = 1
    index.cp.seed = 3
    index.train(x)
    index.add(x)
    return index


def _assert_exhaustive(x, q, k, scores, pos):
    """The scores are the true top k, each position scores what is reported for it."""
    true = q.astype(np.float64) @ x.T.astype(np.float64)
    want = -np.sort(-true, axis=1)[:, :k]
    np.testing.assert_allclose(scores, want, atol=2e-6)
    assert (pos >= 0).all()
    np.testing.assert_allclose(np.take_along_axis(true, pos, axis=1), want, atol=2e-6)
    assert all(len(set(row)) == k for row in pos)  # no vector twice


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(20, 400),
    dim=st.integers(2, 24),
    clusters=st.integers(1, 12),
    spread=st.sampled_from([0.05, 0.3, 1.0, 10.0]),
    nlist=st.integers(1, 20),
    k=st.integers(1, 15),
    first=st.integers(1, 4),
)
def test_the_answer_is_the_exhaustive_scans(seed, n, dim, clusters, spread, nlist, k, first):
    x, q = _data(seed, n, dim, clusters, spread, zeros=n // 20, dups=n // 10)
    index = _ivf(x, min(nlist, n))
    cones = cell_cones(index)
    scores, pos, scanned, read = bounded_search(index, cones, q, k, first=first)
    _assert_exhaustive(x, q, k, scores, pos)
    assert (scanned >= 1).all() and (scanned <= index.nlist).all()
    assert (read >= k).all() and (read <= n).all()


def test_many_queries_are_answered_in_chunks_alike(monkeypatch):
    import paramsim.index_bounded as bounded

    x, q = _data(4, 500, 8, 6, 0.2, zeros=1, dups=5)
    q = np.concatenate([q] * 3)
    index = _ivf(x, 10)
    whole = bounded_search(index, cell_cones(index), q, 4)
    monkeypatch.setattr(bounded, "_CHUNK_ENTRIES", 25)  # two queries a chunk
    chunked = bounded_search(index, cell_cones(index), q, 4)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)
    _assert_exhaustive(x, q, 4, *chunked[:2])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    dim=st.integers(2, 64),
    spread=st.sampled_from([0.01, 0.3, 3.0]),
    nlist=st.integers(1, 16),
)
def test_no_stored_vector_scores_above_its_cells_bound(seed, dim, spread, nlist):
    x, q = _data(seed, 300, dim, 5, spread, zeros=3, dups=10)
    index = _ivf(x, nlist)
    cones = cell_cones(index)
    bound = upper_bounds(cones, q)
    _, cell = index.quantizer.search(x, 1)  # where faiss stored each vector
    scores = q.astype(np.float64) @ x.T.astype(np.float64)
    for c in range(index.nlist):
        members = cell[:, 0] == c
        if members.any():
            assert (scores[:, members].max(axis=1) <= bound[:, c]).all()
        else:
            assert (bound[:, c] == -np.inf).all()


def test_tight_cells_are_skipped_and_structureless_data_reads_every_cell():
    """The counter-test of the first: a bound of 1 everywhere would pass it, and skip nothing."""
    x, q = _data(0, 4000, 32, 40, 0.1, zeros=0, dups=0)
    index = _ivf(x, 80)
    *_, scanned, read = bounded_search(index, cell_cones(index), q, 10, first=2)
    assert scanned.max() <= 8 and read.max() < 0.15 * len(x)  # a query's own cluster's cells, of 80
    rng = np.random.default_rng(1)
    u, uq = _unit(rng.normal(size=(4000, 64))), _unit(rng.normal(size=(7, 64)))
    index = _ivf(u, 80)
    *_, scanned, read = bounded_search(index, cell_cones(index), uq, 10, first=2)
    assert scanned.min() >= 70 and read.min() > 0.8 * len(u)


def _clustered_index(kind="ivf", n=3000, **params):
    x, q = _data(5, n, 16, 30, 0.2, zeros=2, dups=20)
    idx = EmbeddingIndex(16, kind=kind, params=params or None)
    idx.add(x, np.arange(n) + 500, tasks=[f"{i % 5} vs {i % 5 + 1}" for i in range(n)])
    return idx, x, q


def test_index_exact_search_equals_the_flat_index_and_survives_save_and_add(tmp_path):
    idx, x, q = _clustered_index()
    flat = EmbeddingIndex(16)
    flat.add(x, np.arange(len(x)) + 500)
    s_flat, i_flat = flat.search(q, 10)
    s, i = idx.search(q, 10, exact=True)
    np.testing.assert_allclose(s, s_flat, atol=1e-6)
    assert 0 < idx.exact_read_share < 0.5  # clustered: most cells skipped
    idx.search(q, 10)
    assert idx.exact_read_share is None  # only an exact search reports what it read
    _, approx = idx.search(q, 10, nprobe=1)
    assert (approx != i_flat).any()  # one cell is not enough here: exact did more
    idx.save(tmp_path / "ivf")
    back = EmbeddingIndex.load(tmp_path / "ivf")
    np.testing.assert_allclose(back.search(q, 10, exact=True)[0], s_flat, atol=1e-6)
    # vectors added after the cells' cones were read must be found too
    extra = _unit(q[1:] + 1e-3)
    for index in (back, flat):
        index.add(extra, np.arange(len(extra)) + 10_000)
    s2, i2 = back.search(q, 3, exact=True)
    assert (i2[1:, 0] == np.arange(len(extra)) + 10_000).all()
    np.testing.assert_allclose(s2, flat.search(q, 3)[0], atol=1e-6)


def test_exact_filtered_search_through_a_selector(monkeypatch):
    import paramsim.index as index_mod

    monkeypatch.setattr(index_mod, "EXACT_SUBSET", 10)  # the filter goes to faiss's selector
    idx, x, q = _clustered_index()
    keep = np.array([i % 5 in (1, 3) for i in range(len(x))])
    s, i = idx.search(q, 10, tasks=["1 vs 2", "3 vs 4"], exact=True)
    assert keep[i - 500].all()
    _assert_exhaustive(x[keep], q, 10, s, np.searchsorted(np.flatnonzero(keep), i - 500))


def test_two_level_cells_for_large_nlist(monkeypatch):
    import paramsim.index as index_mod

    monkeypatch.setattr(index_mod, "TWO_LEVEL_CELLS", 16)
    idx, x, q = _clustered_index(nlist=60)
    assert idx._index.nlist == 60 and idx._index.quantizer.ntotal == 60
    s, i = idx.search(q, 10, exact=True)
    _assert_exhaustive(x, q, 10, s, i - 500)
    assert idx.search(q, 10, nprobe=60)[0] == pytest.approx(s, abs=1e-6)  # every cell: exact


def test_exact_search_of_no_queries_is_empty_as_the_approximate_one():
    idx, _, q = _clustered_index()
    s, i = idx.search(q[:0], 5, exact=True)
    assert s.shape == i.shape == (0, 5) == idx.search(q[:0], 5)[0].shape


def test_exact_is_refused_on_hnsw_and_changes_nothing_on_exact():
    idx, _, q = _clustered_index(kind="hnsw", n=500)
    with pytest.raises(ParamsimError, match="hnsw index cannot search exactly"):
        idx.search(q, 5, exact=True)
    flat, _, q = _clustered_index(kind="exact", n=500)
    np.testing.assert_array_equal(flat.search(q, 5, exact=True)[1], flat.search(q, 5)[1])
