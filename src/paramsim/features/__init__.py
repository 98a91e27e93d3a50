"""Similarity methods: the fixed (non-learned) baselines and the interface they share.

from paramsim.features import get_method
sim = get_method("chain").similarity(networks)   # (n, n), larger is more alike
"""

from __future__ import annotations

from typing import Any

from paramsim.errors import ParamsimError
from paramsim.features.base import Context, Method, cosine_matrix, embed_jointly
from paramsim.features.function import (
    CKAMethod,
    OutputsMethod,
    ProbesMethod,
    linear_cka,
    synthetic_probes,
)
from paramsim.features.gram import ChainMethod, E2EMethod, Gram1Method, chain_maps
from paramsim.features.match import MatchMethod
from paramsim.features.simple import FlatMethod, StatsMethod
from paramsim.methods import FIXED_METHODS, make_method


def get_method(name: str, **kwargs: Any) -> Method:
    """A fixed method by name, with its options as keyword arguments (see paramsim.methods)."""
    if name not in FIXED_METHODS:
        raise ParamsimError(f"unknown method {name!r}; choose one of {', '.join(FIXED_METHODS)}")
    return make_method(name, **kwargs)


__all__ = [
    "FIXED_METHODS",
    "CKAMethod",
    "ChainMethod",
    "Context",
    "E2EMethod",
    "FlatMethod",
    "Gram1Method",
    "MatchMethod",
    "Method",
    "OutputsMethod",
    "ProbesMethod",
    "StatsMethod",
    "chain_maps",
    "cosine_matrix",
    "embed_jointly",
    "get_method",
    "linear_cka",
    "synthetic_probes",
]
