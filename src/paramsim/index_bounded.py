"""Exact top-k over an IVF index that skips the cells which cannot hold an answer.

Each cell of an inverted file is held in a cone: a unit direction u and the widest angle r
between u and a vector stored in the cell. For a unit query q at angle t from u, no vector of
the cell scores above cos(max(0, t - r)): angles on the sphere obey the triangle inequality.
Cells are scanned in order of that bound, a few at first and twice as many each round, until
the k-th best score found is at least the bound of every cell left. The answer is then the
exhaustive scan's.

How much it skips depends on the data, never the answer. Cells tighter than the distance to
the k-th neighbour (many cells, or few well-separated clusters: same-task LPS embeddings) are
skipped nearly all; on structureless data, or with cells that mix clusters, nearly every cell
is read, as slow as a flat scan (docs/SCALING.md has both, measured).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# float32 inner products of unit vectors of length d are within this many units of d of
# the true value (Higham's gamma_d with a margin); every angle below is widened by it
_F32_DOT_ERROR = 1.2e-7
# (queries x cells) entries per chunk of queries: a few float64 temporaries of 8 MB each
_CHUNK_ENTRIES = 1 << 20


@dataclass(frozen=True)
class Cones:
    """Per cell: a unit direction, the cosine of its half-angle (a lower bound), its size."""

    directions: np.ndarray  # (nlist, d) float32
    min_cos: np.ndarray  # (nlist,) float64; +inf for an empty cell
    sizes: np.ndarray  # (nlist,) int64

    @property
    def slack(self) -> float:
        """How far a float32 inner product of unit vectors may be from the true one."""
        return _F32_DOT_ERROR * self.directions.shape[1] + 1e-6


def cell_cones(index) -> Cones:
    """The cone of every cell of a faiss IndexIVFFlat, from the vectors stored in it (read
    once: 0.3 s for a million vectors in 20,000 cells). A cell's direction is its centroid;
    any direction gives a valid bound, the centroid a tight one."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    nlist, d = ivf.nlist, ivf.d
    # an output array keeps faiss.contrib.torch_utils (pytorch-metric-learning imports it)
    # from answering with a torch tensor
    centroids = ivf.quantizer.reconstruct_n(0, nlist, x=np.empty((nlist, d), np.float32))
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    directions = np.where(norms > 0, centroids / np.where(norms > 0, norms, 1), 0)
    directions = np.ascontiguousarray(directions, dtype=np.float32)
    lists = ivf.invlists
    sizes = np.array([lists.list_size(c) for c in range(nlist)], dtype=np.int64)
    min_cos = np.full(nlist, np.inf)
    for c in np.flatnonzero(sizes):
        raw = faiss.rev_swig_ptr(lists.get_codes(int(c)), int(sizes[c]) * ivf.code_size)
        vectors = np.frombuffer(raw, dtype=np.float32).reshape(-1, d)
        min_cos[c] = float((vectors @ directions[c]).min())
    return Cones(directions, min_cos, sizes)


def upper_bounds(cones: Cones, q: np.ndarray) -> np.ndarray:
    """(n_queries, nlist): no vector of a cell scores above its entry; -inf for empty cells.
    Queries and stored rows are unit (or zero) vectors.

    Both angles are widened by the float32 error of the inner products they come from, so
    the bound holds for the stored float32 vectors, not only for exact arithmetic."""
    slack = cones.slack
    cos_t = np.clip((q @ cones.directions.T).astype(np.float64) + slack, -1.0, 1.0)
    cos_r = np.clip(cones.min_cos - slack, -1.0, 1.0)
    sin_r = np.sqrt(1.0 - cos_r**2)
    # cos(t - r) = cos t cos r + sin t sin r (both angles in [0, pi]); 1 where t <= r
    cos_gap = np.where(cos_t >= cos_r, 1.0, cos_t * cos_r + np.sqrt(1.0 - cos_t**2) * sin_r)
    # rows are unit to float32 precision, not exactly: allow their lengths the same slack
    bound = np.where(cos_gap >= 0, cos_gap * (1 + slack), cos_gap * (1 - slack))
    bound[:, cones.sizes == 0] = -np.inf
    return bound


def bounded_search(
    index, cones: Cones, q: np.ndarray, k: int, *, first: int = 16, selector=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The exact top-k of unit queries `q` by inner product: (scores, positions, cells
    scanned, vectors in them), best first, position -1 where fewer than k vectors pass.

    `first` cells are scanned in the first round; a faiss ID `selector`, when given, is
    honoured in every round. The bound is over every stored vector, so
    it stays valid for any subset a selector keeps."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    if not len(q):
        none = np.zeros(0, np.int64)
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), none, none
    rows = max(1, _CHUNK_ENTRIES // max(len(cones.sizes), 2 * k, 1))
    if len(q) <= rows:
        return _bounded_chunk(index, cones, q, k, first, selector)
    parts = [
        _bounded_chunk(index, cones, q[i : i + rows], k, first, selector)
        for i in range(0, len(q), rows)
    ]
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def _bounded_chunk(index, cones: Cones, q: np.ndarray, k: int, first: int, selector):
    """`bounded_search` of one chunk of queries: its (queries, cells) arrays fit in memory."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    nq, nlist = len(q), len(cones.sizes)
    bound = upper_bounds(cones, q)  # empty cells are -inf: never eligible
    margin = 2 * cones.slack  # a cell within this of the k-th score is scanned: ties read alike
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_p = np.full((nq, k), -1, np.int64)
    scanned = np.zeros((nq, nlist), dtype=bool)
    step = max(1, int(first))
    while True:
        kth = best_s[:, -1:].astype(np.float64) - margin
        eligible = (bound >= kth) & (bound > -np.inf) & ~scanned
        width = int(min(eligible.sum(axis=1).max(), step))
        if width == 0:
            return best_s, best_p, scanned.sum(axis=1), scanned @ cones.sizes
        # each query's `width` highest eligible bounds, in no order (a full sort of every
        # cell's bound cost more than the scan itself at 20,000 cells)
        masked = np.where(eligible, bound, -np.inf)
        picks = (
            np.argpartition(-masked, width - 1, axis=1)[:, :width]
            if width < nlist
            else np.broadcast_to(np.arange(nlist), (nq, nlist))
        )
        ok = np.take_along_axis(eligible, picks, axis=1)
        np.put_along_axis(scanned, picks, ok | np.take_along_axis(scanned, picks, 1), axis=1)
        scores, pos = _search_cells(ivf, q, k, np.where(ok, picks, -1), selector)
        scores = np.where(pos >= 0, scores, -np.inf)
        all_s = np.concatenate([best_s, scores], axis=1)
        all_p = np.concatenate([best_p, pos], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(all_s, top, axis=1)
        best_p = np.take_along_axis(all_p, top, axis=1)
        step *= 2


def _search_cells(ivf, q: np.ndarray, k: int, assign: np.ndarray, selector):
    """faiss's scan of the given cells per query (-1: none), through the selector if any."""
    import faiss

    width = assign.shape[1]
    run = faiss.SearchParametersIVF(nprobe=width)
    if selector is not None:
        run.sel = selector
    assign = np.ascontiguousarray(assign, dtype=np.int64)
    centroid_dis = np.zeros(assign.shape, np.float32)  # unused by a flat IVF scan
    scores = np.empty((len(q), k), np.float32)
    pos = np.empty((len(q), k), np.int64)
    ivf.search_preassigned_c(
        len(q),
        faiss.swig_ptr(q),
        k,
        faiss.swig_ptr(assign),
        faiss.swig_ptr(centroid_dis),
        faiss.swig_ptr(scores),
        faiss.swig_ptr(pos),
        False,
        run,
    )
    return scores, pos
