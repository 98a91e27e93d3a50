"""Learnable parameter similarity: a network that reads trained networks' weights and maps
them to embeddings whose cosine says how alike their tasks are (Wang et al. 2019, extended
with a function-space branch of learned probe inputs)."""

from paramsim.lps.config import FORMAT_VERSION, FitConfig, LPSConfig
from paramsim.lps.fit import LPS, filter_extra, relation_loss, retrieval_map, task_key
from paramsim.lps.method import LPS_METHODS, VARIANTS, LPSMethod, get_method
from paramsim.lps.model import LPSNet

__all__ = [
    "FORMAT_VERSION",
    "LPS",
    "LPSConfig",
    "LPSMethod",
    "LPSNet",
    "LPS_METHODS",
    "VARIANTS",
    "FitConfig",
    "filter_extra",
    "get_method",
    "relation_loss",
    "retrieval_map",
    "task_key",
]


def _register() -> None:
    """Make every variant resolvable by name in paramsim.eval, when it is installed."""
    try:
        from paramsim.eval.protocol import register_method
    except Exception:  # the eval package is optional for LPS itself
        return
    for name, factory in LPS_METHODS.items():
        register_method(name, factory)


_register()
