"""Wrapping objects that compare networks but are not `Method` subclasses (a saved LPS model,
a user's own class), so the protocol and the use stage can treat them as methods."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from paramsim.features.base import Context, Method, cosine_matrix
from paramsim.weights import Network


def accepts_val(fit: Callable) -> bool:
    """Whether a fit function names a `val` parameter (validation tasks for early stopping)."""
    try:
        return "val" in inspect.signature(fit).parameters
    except (TypeError, ValueError):
        return False


def _call_with_optional(fn: Callable, *args: Any, **optional: Any) -> Any:
    """Call `fn(*args)` passing only the optional keywords its signature accepts."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in optional.items() if var_kw or k in params}
    return fn(*args, **kw)


class MethodAdapter(Method):
    """Wrap an object with fit/embed (or similarity) that is not a `Method` subclass.

    `embed` and `similarity` may or may not take a context; `fit` may or may not take one
    or a `val` argument. The wrapped object is deep-copied with the adapter, so every split
    still fits a fresh copy.
    """

    def __init__(self, obj: Any, name: str, learned: bool | None = None) -> None:
        self.obj = obj
        self.name = name
        self.learned = bool(
            getattr(obj, "learned", hasattr(obj, "fit")) if learned is None else learned
        )
        self.weights_only = bool(getattr(obj, "weights_only", True))
        self.set_dependent = bool(getattr(obj, "set_dependent", False))

    def check(self, networks: Sequence[Network]) -> str | None:
        fn = getattr(self.obj, "check", None)
        return fn(networks) if callable(fn) else None

    def fit(self, networks, tasks, context, val=None) -> MethodAdapter:
        if val is not None and not accepts_val(self.obj.fit):
            # as in evaluate(): without a validation parameter, validation tasks train too
            networks, tasks = [*networks, *val[0]], [*tasks, *val[1]]
            val = None
        fitted = _call_with_optional(self.obj.fit, networks, tasks, context=context, val=val)
        if fitted is not None:
            self.obj = fitted
        return self

    def embed(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        return np.asarray(_call_with_optional(self.obj.embed, networks, context=context))

    def similarity(self, networks: Sequence[Network], context: Context) -> np.ndarray:
        fn = getattr(self.obj, "similarity", None)
        if callable(fn):
            return np.asarray(_call_with_optional(fn, networks, context=context))
        return cosine_matrix(self.embed(networks, context))


def as_method(obj: Any, name: str) -> Method:
    """`obj` itself when it is a Method, else a `MethodAdapter` around it."""
    return obj if isinstance(obj, Method) else MethodAdapter(obj, name)
