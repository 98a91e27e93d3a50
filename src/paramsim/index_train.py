"""Cells for a large ivf index: k-means in two levels.

One k-means over nlist centroids costs samples x nlist per iteration: hours on two cores at a
million models and 20,000 cells. Two levels cost about samples x 2 sqrt(nlist): a coarse
k-means of sqrt(nlist) cells, then each coarse cell split by its own k-means into a share of
the nlist cells proportional to its points (at least one, at most its point count, so
duplicate-heavy data never asks k-means for more centroids than points).
"""

from __future__ import annotations

import numpy as np


def split_counts(points: np.ndarray, total: int) -> np.ndarray:
    """Cells per coarse cluster: proportional to `points`, summing to `total`, at least 1
    and at most the points for every non-empty cluster, 0 for an empty one (largest
    remainder). Needs non-empty clusters <= total <= points.sum()."""
    points = np.asarray(points, dtype=np.int64)
    live = points > 0
    if not live.sum() <= total <= points.sum():
        raise ValueError(f"cannot split {total} cells over clusters of {points.tolist()} points")
    share = total * points / points.sum()
    counts = np.where(live, np.clip(np.floor(share), 1, points), 0).astype(np.int64)
    remainder = share - counts
    while counts.sum() < total:  # one more cell to the largest remainder that has room
        room = np.where(counts < points, remainder, -np.inf)
        c = int(np.argmax(room))
        counts[c] += 1
        remainder[c] -= 1
    while counts.sum() > total:  # one fewer from the smallest remainder that keeps one
        spare = np.where(counts > 1, remainder, np.inf)
        c = int(np.argmin(spare))
        counts[c] -= 1
        remainder[c] += 1
    return counts


def two_level_centroids(sample: np.ndarray, nlist: int, seed: int = 1234) -> np.ndarray:
    """(nlist, d) float32 unit centroids from a sample of at least nlist unit rows (spherical
    k-means: an ivf index assigns by inner product)."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    d = sample.shape[1]
    args = {"seed": seed, "spherical": True, "min_points_per_centroid": 1}
    k = max(1, int(round(np.sqrt(nlist))))
    coarse = faiss.Kmeans(d, k, niter=20, max_points_per_centroid=2000, **args)
    coarse.train(sample)
    _, assign = coarse.index.search(sample, 1)
    assign = assign[:, 0]
    counts = split_counts(np.bincount(assign, minlength=coarse.k), nlist)
    parts = []
    for c in np.flatnonzero(counts):
        members = sample[assign == c]
        if counts[c] == 1:
            centre = members.mean(axis=0, keepdims=True)
            parts.append(centre / max(float(np.linalg.norm(centre)), 1e-12))
            continue
        fine = faiss.Kmeans(d, int(counts[c]), niter=20, **args)
        fine.train(members)
        parts.append(fine.centroids)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
