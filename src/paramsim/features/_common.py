"""Helpers shared by the fixed methods: grouping by architecture, stacking, checks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from paramsim.errors import ParamsimError
from paramsim.features.base import Context, Method, cosine_matrix
from paramsim.weights import Network, NetworkStack, group_by_signature


class FixedMethod(Method):
    """A non-learned method; `context` may be omitted for weights-only methods."""

    def similarity(self, networks: Sequence[Network], context: Context | None = None) -> np.ndarray:
        return cosine_matrix(self.embed(networks, context_or_default(context)))


def ensure(method: Method, networks: Sequence[Network]) -> None:
    """Raise the method's own reason when it cannot compare these networks."""
    if not networks:
        raise ParamsimError(f"{method.name}: no networks given")
    reason = method.check(networks)
    if reason:
        raise ParamsimError(f"{method.name}: {reason}")


def context_or_default(context: Context | None) -> Context:
    return context if context is not None else Context()


def stacks(networks: Sequence[Network]) -> list[tuple[list[int], NetworkStack]]:
    """One stack per architecture, with the indices of its networks."""
    return [
        (idx, NetworkStack.from_networks([networks[i] for i in idx]))
        for idx in group_by_signature(networks)
    ]


def per_group(
    networks: Sequence[Network], fn: Callable[[NetworkStack], torch.Tensor]
) -> np.ndarray:
    """Run `fn` (a stack -> (M, D) features) per architecture and put rows back in order."""
    out: np.ndarray | None = None
    for idx, stack in stacks(networks):
        with torch.no_grad():
            feats = fn(stack).reshape(len(idx), -1).double().numpy()
        if out is None:
            out = np.zeros((len(networks), feats.shape[1]))
        elif feats.shape[1] != out.shape[1]:
            raise ParamsimError(
                f"features of different sizes ({out.shape[1]} vs {feats.shape[1]}); "
                "these architectures cannot be compared by this method"
            )
        out[idx] = feats
    assert out is not None
    return out


def interleaved(stack: NetworkStack) -> list[torch.Tensor]:
    """W_1, b_1, W_2, b_2, ... of a stack, each (M, ...)."""
    return [t for pair in zip(stack.weights, stack.biases, strict=True) for t in pair]


def triu(g: torch.Tensor) -> torch.Tensor:
    """Upper triangle (diagonal included) of a batch of symmetric (M, d, d) matrices."""
    d = g.shape[-1]
    r, c = torch.triu_indices(d, d)
    return g[..., r, c]


def same_signature_reason(networks: Sequence[Network], what: str) -> str | None:
    sigs = {n.signature() for n in networks}
    if len(sigs) > 1:
        return f"{what} needs one architecture, got {len(sigs)}; use gram1, chain or e2e"
    return None


def logit_features(logits: torch.Tensor) -> torch.Tensor:
    """(M, N, K) logits -> (M, N * ...) features: out1 - out0 for two classes, else centred.

    Differences do not saturate the way softmax outputs do, and they drop the logit offset
    that every class shares.
    """
    if logits.shape[-1] == 2:
        return logits[..., 1] - logits[..., 0]
    return (logits - logits.mean(dim=-1, keepdim=True)).flatten(-2)
