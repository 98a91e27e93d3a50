"""Probe-to-model similarities within a memory budget.

Most methods embed a network in a few hundred numbers, but the Gram methods on wide inputs
do not: chain on a 784-32-32-2 MLP is two 784 x 784 Gram blocks, about 615,000 numbers, so
the embeddings of 540 probes and 495 stored models take 5 GB in float64. When the
embeddings would not fit the budget, the stored models are embedded once, in chunks, into a
float64 file on disk (what an index is), and the probes are compared with it chunk by
chunk. The numbers are those of the in-memory path: the same unit rows, the same products.
Methods embed each network on its own, so chunking does not change an embedding (a method
whose embedding depends on the set, like `stats`, is narrow and never reaches this path).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paramsim.features.base import Context
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


def bounded_cross_similarity(
    method, queries: Sequence, gallery: Sequence, context: Context, budget_bytes: int
) -> np.ndarray:
    """(len(queries), len(gallery)) similarity, as `cross_similarity`, in bounded memory."""
    if fits(method, gallery, len(queries) + len(gallery), budget_bytes, context):
        return cross_similarity(method, queries, gallery, context)
    width = embedding_width(method, gallery, context)
    chunk = max(1, budget_bytes // (4 * width * 8))
    out = np.empty((len(queries), len(gallery)))
    with tempfile.TemporaryDirectory(prefix="paramsim-index-") as tmp:
        index = np.lib.format.open_memmap(
            Path(tmp) / "gallery.npy", mode="w+", dtype=np.float64, shape=(len(gallery), width)
        )
        for s in range(0, len(gallery), chunk):
            index[s : s + chunk] = _unit(
                embed_or_none(method, list(gallery[s : s + chunk]), context)
            )
        for q in range(0, len(queries), chunk):
            eq = _unit(embed_or_none(method, list(queries[q : q + chunk]), context))
            for s in range(0, len(gallery), chunk):
                out[q : q + chunk, s : s + chunk] = eq @ np.asarray(index[s : s + chunk]).T
        del index
    return out
