"""Checkpoints of any supported kind, read into one canonical layered form."""

from paramsim.weights.network import Layer, Network, NetworkStack, apply_layers, group_by_signature

__all__ = ["Layer", "Network", "NetworkStack", "apply_layers", "group_by_signature"]
