"""Learnable parameter similarity: a network that reads trained networks' weights and maps
them to embeddings whose cosine says how alike their tasks are (Wang et al. 2019, extended
with a function-space branch of learned probe inputs)."""

from paramsim.lps.config import FORMAT_VERSION, FitConfig, LPSConfig
from paramsim.lps.fit import LPS, filter_extra, relation_loss, retrieval_map
from paramsim.lps.method import VARIANTS, LPSMethod, variant_configs
from paramsim.lps.model import LPSNet

__all__ = [
    "FORMAT_VERSION",
    "LPS",
    "LPSConfig",
    "LPSMethod",
    "LPSNet",
    "VARIANTS",
    "FitConfig",
    "filter_extra",
    "relation_loss",
    "variant_configs",
    "retrieval_map",
]
