"""The one small interface every similarity method implements, fixed or learned."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paramsim.data import Dataset, Task
from paramsim.vectors import cosine_matrix
from paramsim.weights import Network

__all__ = ["Context", "Method", "cosine_matrix", "embed_jointly"]


@dataclass
class Context:
    """What a method may use beyond the weights. Weights-only methods ignore `dataset`.

    `zoo` is the directory the models came from, when they came from one: a learned method
    may build and cache training material beside it (LPS's auxiliary group-task zoo).
    """

    dataset: Dataset | None = None
    seed: int = 0
    zoo: str | Path | None = None


class Method:
    """A similarity between trained networks.

    Embedding methods implement `embed`; similarity is then the cosine of embeddings.
    Pairwise methods (e.g. weight matching) override `similarity` instead. Learned methods
    set `learned = True` and are trained by `fit` on training tasks only.

    `set_dependent` is True when a model's embedding depends on the other models embedded
    with it (`stats` z-scores over the set; `match` in reference mode aligns to the set's
    mean). Embeddings of such a method are comparable only within one call, so queries and
    a gallery must be embedded together: see `embed_jointly`.
    """

    name: str = "method"
    weights_only: bool = True
    learned: bool = False
    set_dependent: bool = False

    def check(self, networks: Sequence[Network]) -> str | None:
        """Why this method cannot handle these networks, or None when it can."""
        return None

    def fit(self, networks: Sequence[Network], tasks: Sequence[Task], context: Context) -> Method:
        return self

    def embed(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        raise NotImplementedError(f"{self.name} compares pairs; it has no embedding")

    def similarity(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        """(n, n) similarity, larger is more alike."""
        return cosine_matrix(self.embed(networks, context))


def embed_jointly(
    method: Method,
    queries: Sequence[Network],
    gallery: Sequence[Network],
    context: Context | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of `queries` and `gallery` that may be compared with each other.

    A set-dependent method embeds the union in one call, so both sides are normalised or
    aligned against the same set; any other method embeds each side alone (the same result
    for it, and no work on rows it does not need twice).
    """
    context = context or Context()
    if method.set_dependent:
        both = np.asarray(method.embed([*queries, *gallery], context))
        return both[: len(queries)], both[len(queries) :]
    return np.asarray(method.embed(queries, context)), np.asarray(method.embed(gallery, context))
