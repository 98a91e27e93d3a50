"""The one small interface every similarity method implements, fixed or learned."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paramsim.data import Dataset, Task
from paramsim.vectors import cosine_matrix
from paramsim.weights import Network

__all__ = ["Context", "Method", "cosine_matrix"]


@dataclass
class Context:
    """What a method may use beyond the weights. Weights-only methods ignore `dataset`."""

    dataset: Dataset | None = None
    seed: int = 0


class Method:
    """A similarity between trained networks.

    Embedding methods implement `embed`; similarity is then the cosine of embeddings.
    Pairwise methods (e.g. weight matching) override `similarity` instead. Learned methods
    set `learned = True` and are trained by `fit` on training tasks only.
    """

    name: str = "method"
    weights_only: bool = True
    learned: bool = False

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
