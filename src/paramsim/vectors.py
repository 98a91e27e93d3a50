"""Unit vectors and cosine similarity: the one place rows are scaled to unit length, for
numpy arrays (embeddings, the index) and torch tensors (features, the LPS network) alike."""

from __future__ import annotations

from typing import TypeVar

import numpy as np

Rows = TypeVar("Rows")

EPS = 1e-12  # norms below this count as zero: a zero row stays zero instead of NaN


def unit_rows(x: Rows, dim: int = -1, eps: float = EPS) -> Rows:
    """`x` scaled to unit L2 norm along `dim` (default the last); zero rows stay zero.

    Works on numpy arrays and torch tensors (differentiably), keeping the type and dtype.
    """
    if isinstance(x, np.ndarray):
        return x / np.maximum(np.linalg.norm(x, axis=dim, keepdims=True), eps)
    return x / x.norm(dim=dim, keepdim=True).clamp_min(eps)  # type: ignore[attr-defined]


def cosine_matrix(emb: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """(n, m) cosine similarity of the rows of `emb` with those of `other` (default `emb`)."""
    a = unit_rows(np.asarray(emb, dtype=np.float64))
    b = a if other is None else unit_rows(np.asarray(other, dtype=np.float64))
    return a @ b.T


def first_nonfinite_row(x: np.ndarray) -> int | None:
    """Index of the first row of `x` holding a NaN or an infinity, or None: a result that
    would rank as a silently wrong similarity."""
    bad = ~np.isfinite(np.asarray(x).reshape(len(x), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None
