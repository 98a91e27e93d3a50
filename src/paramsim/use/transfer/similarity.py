"""Probe-to-model similarities within a memory budget.

Most methods embed a network in a few hundred numbers, but the Gram methods on wide inputs
do not: chain on a 784-32-32-2 MLP is two 784 x 784 Gram blocks, about 615,000 numbers, so
the embeddings of 540 probes and 495 stored models take 5 GB in float64. When the
embeddings would not fit the budget:

- a Gram method (gram1, chain, e2e) is compared from its factors instead: the inner product
  of two Gram blocks is ||X_a^T X_b||_F^2 plus a diagonal term, so no Gram is formed and a
  chunk of probes meets a chunk of stored models within the budget
  (`paramsim.features.gram.factored_cross_similarity`; equal to the embeddings' cosine up to
  float32 rounding of the Grams, about 1e-7);
- any other method (or a Gram method with more units than rows) embeds the stored models
  once, in chunks, into a float64 file on disk (what an index is), and the probes are
  compared with it chunk by chunk, read with plain reads (a memory map would count every
  page of the file it touched as resident: 2.4 GB for chain on the Fashion-MNIST zoo). The
  numbers are those of the in-memory path: the same unit rows, the same products.

Methods embed each network on its own, so chunking does not change an embedding (a method
whose embedding depends on the set, like `stats`, is narrow and never reaches this path).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paramsim.features.base import Context
from paramsim.features.gram import factored_cross_similarity, factoring_pays
from paramsim.use._common import cross_similarity, embed_or_none


def embedding_width(method, networks: Sequence, context: Context) -> int | None:
    """How many numbers the method embeds one network in (None: it compares pairs only)."""
    try:
        e = embed_or_none(method, list(networks[:1]), context)
    except Exception:  # a set-dependent method may not embed a set of one: treat as narrow
        return 0
    return None if e is None else int(e.shape[1])


def fits(method, networks: Sequence, n_rows: int, budget_bytes: int, context: Context) -> bool:
    """Whether n_rows float64 embeddings of this method fit the budget."""
    width = embedding_width(method, networks, context)
    return width is None or n_rows * width * 8 <= budget_bytes


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# The in-memory path holds the embeddings about three times over: the float32 ones a method
# computes, their float64 copy and the unit rows `cosine_matrix` makes of it. Counting them
# once let gram1 at a 2 GB budget take 3.2 GB on the Fashion-MNIST zoo.
DENSE_COPIES = 3


def bounded_cross_similarity(
    method, queries: Sequence, gallery: Sequence, context: Context, budget_bytes: int
) -> np.ndarray:
    """(len(queries), len(gallery)) similarity, as `cross_similarity`, in bounded memory."""
    n_rows = len(queries) + len(gallery)
    if fits(method, gallery, n_rows, budget_bytes // DENSE_COPIES, context):
        return cross_similarity(method, queries, gallery, context)
    if factoring_pays(method, list(gallery[:1])):
        return factored_cross_similarity(method, queries, gallery, budget_bytes)
    return disk_index_similarity(method, queries, gallery, context, budget_bytes)


def disk_index_similarity(
    method, queries: Sequence, gallery: Sequence, context: Context, budget_bytes: int
) -> np.ndarray:
    """The gallery's unit embeddings in a file on disk, compared with chunks of queries."""
    width = embedding_width(method, gallery, context)
    chunk = max(1, budget_bytes // (4 * width * 8))
    row = width * 8
    out = np.empty((len(queries), len(gallery)))
    with tempfile.TemporaryDirectory(prefix="paramsim-index-") as tmp:
        path = Path(tmp) / "gallery.f64"
        with open(path, "wb") as fh:
            for s in range(0, len(gallery), chunk):
                e = _unit(embed_or_none(method, list(gallery[s : s + chunk]), context))
                fh.write(np.ascontiguousarray(e).tobytes())
        with open(path, "rb") as fh:
            for q in range(0, len(queries), chunk):
                eq = _unit(embed_or_none(method, list(queries[q : q + chunk]), context))
                fh.seek(0)
                for s in range(0, len(gallery), chunk):
                    n = min(chunk, len(gallery) - s)
                    block = np.frombuffer(fh.read(n * row), dtype=np.float64)
                    out[q : q + chunk, s : s + chunk] = eq @ block.reshape(n, width).T
    return out
