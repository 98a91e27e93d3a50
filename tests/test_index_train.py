"""Two-level k-means cells for large ivf indexes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paramsim.index_train import split_counts, two_level_centroids


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.integers(0, 300), min_size=1, max_size=40), data=st.data())
def test_split_counts_sum_to_the_total_within_each_clusters_room(points, data):
    points = np.array(points)
    live = int((points > 0).sum())
    if live == 0:
        return
    total = data.draw(st.integers(live, int(points.sum())))
    counts = split_counts(points, total)
    assert counts.sum() == total
    assert (counts[points == 0] == 0).all()
    assert ((counts[points > 0] >= 1) & (counts[points > 0] <= points[points > 0])).all()
    # proportional where no bound binds: never more than one cell from its share, plus the
    # cells the floor of one takes from the others
    share = total * points / points.sum()
    assert (np.abs(counts - share) <= 1 + (points > 0).sum()).all()


def test_split_counts_refuses_what_cannot_be_split():
    with pytest.raises(ValueError, match="cannot split"):
        split_counts(np.array([5, 5, 0]), 1)  # two non-empty clusters, one cell
    with pytest.raises(ValueError, match="cannot split"):
        split_counts(np.array([2, 3]), 6)  # more cells than points


def test_two_level_centroids_on_duplicate_heavy_data():
    """Mostly one repeated row: a proportional split rounded down would give a small coarse
    cluster no cell (faiss refuses k = 0) or more cells than points."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    x = centres[rng.integers(0, 20, 3000)] + 0.1 * rng.normal(size=(3000, 16))
    x[:2700] = x[0]  # one model copied 2,700 times (faiss's own two-level split fails here)
    x = x.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = two_level_centroids(x, 60)
    assert c.shape == (60, 16) and np.isfinite(c).all()
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(two_level_centroids(x, 60), c)  # seeded: the same cells
