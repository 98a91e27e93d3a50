"""Comparing two checkpoints: by fixed methods, or by a saved LPS model together with the zoo
tasks nearest to each."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from paramsim.errors import ParamsimError


def spec_from_text(text: str | None):
    """An ArchSpec from a JSON object or a file holding one (None passes through)."""
    if text is None:
        return None
    from paramsim.weights.arch import ArchSpec

    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ParamsimError(f"--spec {text!r} is neither a JSON object nor a file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ParamsimError(f"cannot read --spec file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamsimError(f"--spec is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsimError(f"--spec must be a JSON object, got {type(data).__name__}")
    try:
        return ArchSpec.from_json(data)
    except ParamsimError as exc:
        raise ParamsimError(f"--spec: {exc}") from exc
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise ParamsimError(f"--spec is not an architecture spec: {exc}") from exc


def similarities(a: str, b: str, methods: Sequence[str], spec=None) -> dict[str, float]:
    """Similarity of checkpoints `a` and `b` by each fixed, weights-only method (larger is
    more alike); `spec` (an ArchSpec) is needed for CNN state_dicts without metadata."""
    from paramsim.features import Context, get_method
    from paramsim.weights import load

    made = {name: get_method(name) for name in methods}
    for name, m in made.items():
        if not m.weights_only:
            raise ParamsimError(f"method {name} needs a dataset; compare runs weights-only methods")
    nets = [load(a, spec), load(b, spec)]
    out = {n: float(m.similarity(nets, Context())[0, 1]) + 0.0 for n, m in made.items()}
    for name, score in out.items():
        if not math.isfinite(score):  # finite weights so large that float32 overflows
            big = ", ".join(
                f"{p} {n.largest_weight:.3g}" for p, n in zip((a, b), nets, strict=True)
            )
            raise ParamsimError(
                f"the {name} similarity of the two checkpoints is not finite: their weights "
                f"(largest |w|: {big}) overflow float32 arithmetic; check or rescale them"
            )
    return out


def compare(a: str, b: str, method: str = "chain", spec=None) -> float:
    """Similarity of checkpoints `a` and `b` by one fixed method (+0.0: never -0.0)."""
    return similarities(a, b, [method], spec)[method]


def nearest_tasks(
    emb: np.ndarray, zoo_emb: np.ndarray, zoo_tasks: Sequence[str], k: int = 3
) -> list[list[tuple[str, float]]]:
    """Per query embedding, the k zoo tasks with the highest mean cosine to it."""
    sims = emb @ zoo_emb.T
    names = sorted(set(zoo_tasks))
    col = {t: i for i, t in enumerate(names)}
    which = np.asarray([col[t] for t in zoo_tasks])
    means = np.stack([sims[:, which == i].mean(axis=1) for i in range(len(names))], axis=1)
    out = []
    for row in means:
        top = np.argsort(-row, kind="stable")[:k]
        out.append([(names[i], float(row[i])) for i in top])
    return out


def compare_with_model(
    a: str, b: str, model_dir: str | Path, spec=None, zoo: str | Path | None = None
) -> tuple[float, list | None]:
    """LPS cosine of checkpoints `a` and `b`; with `zoo`, the zoo tasks nearest to each."""
    from paramsim.lps import LPS
    from paramsim.weights import load
    from paramsim.zoo import open_zoo

    lps = LPS.load(model_dir)
    nets = [load(a, spec), load(b, spec)]
    emb = lps.embed(nets)
    score = float(emb[0] @ emb[1])
    near = None
    if zoo is not None:
        z = open_zoo(zoo)
        near = nearest_tasks(emb, lps.embed(z.networks()), [r.task.name for r in z.records])
    return score, near
