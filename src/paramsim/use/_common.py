"""Helpers shared by the use stage: resolving a similarity, cross similarities, atomic files."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from paramsim.atomic import atomic_write
from paramsim.data import Task
from paramsim.data.tasks import canonical_name
from paramsim.errors import ParamsimError
from paramsim.eval.report import jsonable
from paramsim.features.base import Context, Method, cosine_matrix
from paramsim.weights import Network


@dataclass
class Similarity:
    """A method ready to compare models, and what it was trained on (None: fixed method).

    `seen_tasks` are the task names (`paramsim.data.canonical_name` form) a learned metric
    trained or early-stopped on; results for those tasks would leak, so held-out evaluations
    skip them.
    """

    name: str
    method: Method
    learned: bool
    seen_tasks: frozenset[str] | None = None
    source: str = ""  # how it was obtained, for reports


def load_similarity(method: str | None = None, model: str | Path | None = None) -> Similarity:
    """A fixed method by name, an unfitted learned method by name, or a saved LPS model dir.

    A method that needs a missing third-party package raises `MethodUnavailable`.
    """
    from paramsim.features.adapter import as_method
    from paramsim.methods import make_method

    if (method is None) == (model is None):
        raise ParamsimError("give either --model DIR (a saved LPS model) or --method NAME")
    if model is not None:
        from paramsim.lps import LPS

        lps = LPS.load(model)
        names = [*lps.meta.get("train_tasks", []), *lps.meta.get("val_tasks", [])]
        seen = {canonical_name(str(n)) for n in names}
        wrapped = as_method(lps, "lps")
        wrapped.learned = False  # already fitted: never refit it
        return Similarity("lps", wrapped, True, frozenset(seen), f"saved model {model}")
    got = make_method(method)
    learned = bool(getattr(got, "learned", False))
    return Similarity(method, got, learned, None, "fixed" if not learned else "unfitted")


def fit_excluding(
    sim: Similarity,
    networks: Sequence[Network],
    tasks: Sequence[Task],
    exclude: set[str],
    seed: int = 0,
    zoo: str | Path | None = None,
) -> Similarity:
    """A fresh copy of a learned method fitted on every model whose task is not excluded."""
    keep = [i for i, t in enumerate(tasks) if t.name not in exclude]
    if not keep:
        raise ParamsimError("no training tasks left after excluding the held-out ones")
    fitted = copy.deepcopy(sim.method)
    fitted.fit([networks[i] for i in keep], [tasks[i] for i in keep], Context(seed=seed, zoo=zoo))
    seen = frozenset(canonical_name(tasks[i]) for i in keep)
    return Similarity(sim.name, fitted, True, seen, f"fitted on {len(seen)} tasks")


def embed_or_none(method: Method, nets: Sequence[Network], context: Context) -> np.ndarray | None:
    try:
        return np.asarray(method.embed(nets, context), dtype=np.float64)
    except NotImplementedError:
        return None


def cross_similarity(
    method: Method, queries: Sequence[Network], gallery: Sequence[Network], context: Context
) -> np.ndarray:
    """(len(queries), len(gallery)) similarity. Pairwise-only and set-dependent methods see
    the joint set (one `similarity` call), so a set-dependent method's queries and gallery
    are normalised against the same models; others embed each side alone."""
    eq = None if method.set_dependent else embed_or_none(method, queries, context)
    if eq is not None:
        eg = embed_or_none(method, gallery, context)
        if eg is not None:
            return cosine_matrix(eq, eg)
    both = list(queries) + list(gallery)
    S = np.asarray(method.similarity(both, context), dtype=np.float64)
    return S[: len(queries), len(queries) :]


def settings_key(settings: dict[str, Any]) -> str:
    """A short digest of settings; cached results are reused only when it matches."""
    text = json.dumps(jsonable(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")


def read_cached(path: Path, key: str) -> dict | None:
    """The JSON at `path` when its `settings_key` equals `key`, else None."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("settings_key") == key else None


def figure_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt
