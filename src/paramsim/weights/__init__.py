"""Checkpoints of any supported kind, read into one canonical layered form."""

from paramsim.weights.arch import ArchSpec
from paramsim.weights.load import from_module, from_state_dict, load
from paramsim.weights.network import (
    Layer,
    Network,
    NetworkStack,
    apply_layers,
    group_by_signature,
    hidden_units_view,
    permute_hidden,
)

__all__ = [
    "ArchSpec",
    "Layer",
    "Network",
    "NetworkStack",
    "apply_layers",
    "from_module",
    "from_state_dict",
    "group_by_signature",
    "hidden_units_view",
    "load",
    "permute_hidden",
]
